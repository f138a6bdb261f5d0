"""One idempotent, level-triggered reconcile of an LLMChainApp.

Validate what the schema cannot (templates, referenced Secrets) → build the desired children
(pure) → adopt them (owner references) → server-side apply under one field manager → prune
children no longer wanted (both in children.py) → compute status from what the API server
returned, with what blocks the app, and post the events that are news.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmchain_operator import metrics
from llmchain_operator.api import KIND, LLMChainApp, tools_status
from llmchain_operator.blockers import (
    LOG_TAIL_BYTES,
    crash_looping_init_containers,
    find_blockers,
    redact,
    summarize,
)
from llmchain_operator.builders import build_children
from llmchain_operator.builders.common import (
    MANAGED_BY,
    app_name,
    app_namespace,
    model_digest,
    selector_labels,
)
from llmchain_operator.builders.model import build_job_name, builds_in_job, model_pvc_name
from llmchain_operator.builders.network import endpoint
from llmchain_operator.builders.retrieval import (
    configmaps_digest,
    corpus_identity,
    embedding_digest,
    index_digest,
    index_in_job,
    index_job_name,
)
from llmchain_operator.children import Children, Held, key_of
from llmchain_operator.children import RetryLater as RetryLater
from llmchain_operator.kinds import OPTIONAL_API_GROUPS
from llmchain_operator.kube import ApiError, Kube
from llmchain_operator.settings import Settings
from llmchain_operator.status import (
    Observed,
    autoscaler_status,
    compute_conditions,
    counts_for_status,
    index_failure,
    index_report,
    is_ready,
    job_state,
    merge_conditions,
    retrieval_status,
    skipped_message,
)
from llmchain_operator.validation import validate

Manifest = dict[str, Any]
BLOCKERS, INVALID, SKIPPED = "blockers", "InvalidSpec", "APINotInstalled"
"""Reports remembered per app (see Reconciler._reported), besides NameConflict, ChildRejected."""


class ChildrenRefused(RetryLater):
    """Children left unapplied (the API server rejected them, or another owner holds their
    names) while the others were applied and status names them; retried with a growing delay."""


BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
REFUSAL_MESSAGE_LIMIT = 1024
"""Each refused child's message is cut here (an event's message is cut there too; a dozen of
them stay under a condition message's 32768)."""


def backoff_delay(refused_for: float) -> float:
    """Seconds before retrying an app whose children have been refused for `refused_for`
    seconds: as long again (from 5 s, at most 5 min), so retries come about 5, 10, 20, 40 ... s
    after the first refusal, however many other events reconcile the app meanwhile."""
    return min(BACKOFF_MAX_SECONDS, max(BACKOFF_FIRST_SECONDS, refused_for))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_reference(body: Manifest) -> Manifest:
    return {
        "apiVersion": body["apiVersion"],
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def adopt(objects: Iterable[Manifest], body: Manifest) -> list[Manifest]:
    ref = owner_reference(body)
    return [{**o, "metadata": {**o["metadata"], "ownerReferences": [ref]}} for o in objects]


RECONCILE_CONCURRENCY = 32
"""Reconciles in progress at once. The API calls go through a handful of executor threads, so
more would only wait there, each holding its app's rendered children. 1000 apps created at once
(bench/operator_scale.py, 2 cores), before the echoes of the operator's own writes were skipped:
unlimited, 343 MiB peak and 1.23x the time of a raw server-side apply; 16, 141 MiB and 1.53x; 32,
166 MiB and 1.54x; after, 32: 191 MiB and 1.10x (one run each, noisy)."""


def _never() -> bool:
    return False


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("llmchain.operator"))
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(RECONCILE_CONCURRENCY)
    )
    _waiting: dict[str, list[Callable[[], bool]]] = field(default_factory=dict)
    """Per app waiting for its lock in reconcile_named: the echo checks of the changes that
    asked for it."""
    _reported: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    """Per app uid, per report (NameConflict, ChildRejected, blockers, InvalidSpec,
    APINotInstalled): what this operator last reported. An event is posted only when it is news
    to both this and the status in the body, which kopf read before waiting for the app's lock:
    a child event's reconcile may have written a newer one meanwhile."""
    _unlisted: set[str] = field(default_factory=set)
    """App uids whose pods could not be listed (warned once until a list succeeds)."""
    _refused_since: dict[str, float] = field(default_factory=dict)
    """Per app uid: when its reconciles began to leave children refused (for the back-off)."""
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )
    """Now, to compare with the API server's timestamps (a new PVC's grace)."""
    documents_users: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(namespace, ConfigMap name) -> the apps indexing that ConfigMap, so that a change of
    its data reconciles them (see main._watch_documents)."""
    children: Children = field(init=False)

    def __post_init__(self) -> None:
        self.children = Children(self.kube, self.log)

    async def reconcile(self, body: Manifest) -> None:
        """Serialised per app; safe to call from any handler, any number of times."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        async with self._locks.setdefault(key, asyncio.Lock()):
            await self._timed(body)

    def forget(self, body: Manifest) -> None:
        """Drop what is remembered about a deleted app (its lock, last desired set, hand-over)."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self.children.forget(meta.get("uid", ""), meta.get("namespace", ""))
        self._refused_since.pop(meta.get("uid", ""), None)
        self._unlisted.discard(meta.get("uid", ""))
        self._reported.pop(meta.get("uid", ""), None)
        self._forget_documents(meta["namespace"], meta["name"])

    def _forget_documents(self, namespace: str, name: str) -> None:
        for key in [k for k in self.documents_users if k[0] == namespace]:
            self.documents_users[key].discard(name)
            if not self.documents_users[key]:
                del self.documents_users[key]

    async def _timed(self, body: Manifest) -> None:
        async with self._slots:  # taken inside the app's lock, always in that order
            started = time.perf_counter()
            result = "error"
            try:
                result = await self._reconcile(body)
            except BaseException:
                meta = body["metadata"]
                self.children.distrust(meta.get("uid", ""), meta.get("namespace", ""))
                raise
            finally:
                metrics.record_reconcile(result, time.perf_counter() - started)

    async def reconcile_named(
        self, namespace: str, name: str, echo: Callable[[], bool] | None = None
    ) -> None:
        """Reconcile the current state of an app, by name (from a child's event).

        Bursts coalesce: while one such reconcile waits for the app's lock, more requests for
        the same app join it, since it reads the app afresh once it runs. `echo` says whether
        the change was just this operator's own write (Children.echo): asked once the lock is
        held, so after a write still in flight when its event came has returned. When every
        change that joined is an echo, nothing is reconciled.
        """
        key = f"{namespace}/{name}"
        check = echo or _never
        pending = self._waiting.get(key)
        if pending is not None:
            pending.append(check)
            return
        pending = self._waiting[key] = [check]
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                del self._waiting[key]
                if all(c() for c in pending):
                    metrics.ECHOES.inc()
                    return
                body = await self.kube.get(KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                await self._timed(body)
        finally:
            if self._waiting.get(key) is pending:
                del self._waiting[key]

    async def _reconcile(self, body: Manifest) -> str:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        validated = validate(body)
        app, problems = validated.app, list(validated.problems)
        documents_digest = None
        if app is not None:
            problems += await self._missing_secrets(app)
            documents_digest, missing = await self._documents(app)
            problems += missing
        if app is None or problems:
            await self._report_invalid(body, problems)
            return "invalid"
        self._reported.get(meta["uid"], {}).pop(INVALID, None)
        groups = await self.kube.available_groups()
        children = build_children(
            app, self.settings, [g for g in OPTIONAL_API_GROUPS if g in groups], documents_digest
        )
        objects = adopt(children.objects, body)
        self.children.want(meta["uid"], {key_of(o) for o in objects})
        returned: dict[tuple[str, str], Manifest] = {}
        conflicts: list[str] = []
        rejected: list[str] = []
        for obj in objects:  # one refused child does not stop the others
            what = f"{obj['kind']} {obj['metadata']['name']}"
            try:
                if obj["kind"] == "Deployment" and obj["metadata"]["name"] == name:
                    await self.children.hand_replicas_over_once(
                        obj, meta["uid"], app.spec.autoscaling is not None
                    )
                returned[key_of(obj)] = await self.children.apply(obj, body)
            except Held as held:
                conflicts.append(f"{what} {held}")
            except ApiError as error:
                if not 400 <= error.status < 500:
                    raise
                # Redacted: the message can echo the pod's args (`--source <url?signature>`).
                rejected.append(f"{what}: {redact(error.message)}"[:REFUSAL_MESSAGE_LIMIT])
        await self.children.prune(body, {key_of(o) for o in objects})
        skipped = [f"{o['kind']} {o['metadata']['name']}" for o in children.skipped]
        if not skipped:
            self._reported.get(meta["uid"], {}).pop(SKIPPED, None)
        elif self._is_news(body, SKIPPED, message := skipped_message(skipped), "OptionalAPIs"):
            await self.kube.event(body, "Warning", SKIPPED, message)
        job = returned.get(("Job", build_job_name(app))) if builds_in_job(app) else None
        deployment = returned.get(("Deployment", name))
        wanted = (
            app.spec.autoscaling.min_replicas if app.spec.autoscaling else app.spec.serving.replicas
        )
        observed = Observed(
            generation=int(meta.get("generation", 0)),
            deployment=deployment,
            build_job=job,
            builds_in_job=builds_in_job(app),
            desired_replicas=wanted,
            skipped=skipped,
            conflicts=conflicts,
            rejected=rejected,
        )
        if app.spec.autoscaling is not None:
            autoscaler = await self._autoscaler(app, returned)
            observed = dataclasses.replace(observed, autoscaler=autoscaler)
        if app.spec.retrieval is not None:
            observed = await self._with_index(body, app, observed, returned, documents_digest)
        await self._report_refusals(body, observed)
        observed = await self._with_blockers(body, app, observed, returned)
        await self._write_status(body, app, observed)
        if conflicts or rejected:
            since = self._refused_since.setdefault(meta["uid"], self.clock())
            raise ChildrenRefused(
                "Children refused: " + "; ".join(conflicts + rejected),
                backoff_delay(self.clock() - since),
            )
        self._refused_since.pop(meta["uid"], None)
        self.log.info("Reconciled %s %s/%s", KIND, namespace, name)
        return "success"

    async def _autoscaler(
        self, app: LLMChainApp, returned: dict[tuple[str, str], Manifest]
    ) -> Manifest:
        """status.autoscaler: our HPA as the apply returned it (engine hpa), or the ScaledObject
        and the HPA KEDA made for it (one GET; its name is in the ScaledObject's status)."""
        assert app.spec.autoscaling is not None
        name, namespace = app_name(app), app_namespace(app)
        engine = app.spec.autoscaling.engine
        if engine == "hpa":
            return autoscaler_status(engine, returned.get(("HorizontalPodAutoscaler", name)))
        scaled = returned.get(("ScaledObject", name))
        hpa = None
        hpa_name = (scaled or {}).get("status", {}).get("hpaName")
        if hpa_name:
            try:
                hpa = await self.kube.get("HorizontalPodAutoscaler", namespace, str(hpa_name))
            except ApiError as error:  # a 5xx or no RBAC: the status says less, nothing fails
                self.log.warning("Could not read HPA %s/%s: %s", namespace, hpa_name, error)
        return autoscaler_status(engine, hpa, scaled)

    async def _report_refusals(self, body: Manifest, observed: Observed) -> None:
        """An event for each refused child whose refusal is news (the last Degraded condition
        does not name it), so a retry or a resync does not post it again."""
        old = body.get("status", {}).get("conditions", [])
        degraded: Manifest = next((c for c in old if c["type"] == "Degraded"), {})
        previous = str(degraded.get("message", "")) if degraded.get("status") == "True" else ""
        meta = body["metadata"]
        reported = self._reported.setdefault(meta["uid"], {})
        for reason, messages in (
            ("NameConflict", observed.conflicts),
            ("ChildRejected", observed.rejected),
        ):
            before, reported[reason] = reported.get(reason, ()), tuple(messages)
            for message in messages:
                if message not in previous and message not in before:
                    await self.kube.event(body, "Warning", reason, message)
                    self.log.warning(
                        "Not applied for %s %s/%s: %s",
                        KIND,
                        meta["namespace"],
                        meta["name"],
                        message,
                    )

    async def _with_blockers(
        self,
        body: Manifest,
        app: LLMChainApp,
        observed: Observed,
        returned: dict[tuple[str, str], Manifest],
    ) -> Observed:
        """While the app is not Ready: what the cluster reports as blocking it, from its pods
        (one list) and its model PVC (as the apply returned it), plus the last log line of each
        crash-looping init container (one bounded GET each). A Ready app costs nothing more.

        Pods are not watched (a watch of pods streams every pod event of the cluster): a
        blocker shows at the next event of a watched child or at the resync."""
        meta = body["metadata"]
        if is_ready(observed):
            self._reported.get(meta["uid"], {}).pop(BLOCKERS, None)
            return observed
        namespace, name = meta["namespace"], meta["name"]
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}"
        try:
            pods = await self.kube.list("Pod", namespace, selector)
        except ApiError as error:  # no RBAC to list pods (an older release's role), a 5xx
            if meta["uid"] not in self._unlisted:
                self._unlisted.add(meta["uid"])
                self.log.warning("Could not list the pods of %s/%s: %s", namespace, name, error)
            return observed
        self._unlisted.discard(meta["uid"])
        logs = {}
        for pod, container, previous in crash_looping_init_containers(pods):
            try:
                logs[(pod, container)] = await self.kube.previous_log(
                    namespace, pod, container, LOG_TAIL_BYTES, previous=previous
                )
            except ApiError as error:  # gone meanwhile, or no RBAC for pods/log: no log line
                self.log.warning(
                    "Could not read the log of %s/%s %s: %s", namespace, pod, container, error
                )
        pvc = returned.get(("PersistentVolumeClaim", model_pvc_name(app)))
        blockers = find_blockers(pods, [pvc] if pvc else [], logs, self.wall_clock())
        if not blockers:
            self._reported.get(meta["uid"], {}).pop(BLOCKERS, None)
        elif self._is_news(body, BLOCKERS, message := summarize(blockers), "Ready"):
            await self.kube.event(body, "Warning", blockers[0].reason, message)
            self.log.warning("Blocked %s %s/%s: %s", KIND, namespace, name, message)
        return dataclasses.replace(observed, blockers=blockers)

    def _is_news(self, body: Manifest, report: str, message: str, condition: str) -> bool:
        """True when `message` is neither what this operator last reported for `report` nor the
        message of `condition` in the body's status; remembers it as the last."""
        reported = self._reported.setdefault(body["metadata"]["uid"], {})
        before, reported[report] = reported.get(report, ()), (message,)
        old = body.get("status", {}).get("conditions", [])
        shown: Manifest = next((c for c in old if c["type"] == condition), {})
        return message not in before and shown.get("message") != message

    async def _missing_secrets(self, app: LLMChainApp) -> list[str]:
        refs = []
        if app.spec.serving.api_key_secret_ref is not None:
            refs.append(("spec.serving.apiKeySecretRef", app.spec.serving.api_key_secret_ref))
        memory = app.spec.chain.memory
        if memory is not None and memory.redis_url_secret_ref is not None:
            refs.append(("spec.chain.memory.redisUrlSecretRef", memory.redis_url_secret_ref))
        problems = []
        for where, ref in refs:
            secret = await self.kube.get("Secret", str(app.metadata["namespace"]), ref.name)
            if secret is None:
                problems.append(f"{where}: Secret {ref.name} not found")
            elif ref.key not in (secret.get("data") or {}):
                problems.append(f"{where}: Secret {ref.name} has no key {ref.key}")
        return problems

    async def _documents(self, app: LLMChainApp) -> tuple[str | None, list[str]]:
        """The content digest of the ConfigMaps the app indexes (None when it indexes none), and
        the problems: ConfigMaps not found. Remembers which apps use which ConfigMaps."""
        namespace, name = app_namespace(app), app_name(app)
        self._forget_documents(namespace, name)  # the spec may have dropped some
        retrieval = app.spec.retrieval
        if retrieval is None or retrieval.documents.config_maps is None:
            return None, []
        found, problems = [], []
        for i, ref in enumerate(retrieval.documents.config_maps):
            self.documents_users.setdefault((namespace, ref.name), set()).add(name)
            configmap = await self.kube.get("ConfigMap", namespace, ref.name)
            if configmap is None:
                problems.append(
                    f"spec.retrieval.documents.configMaps[{i}].name: ConfigMap {ref.name} not found"
                )
            else:
                found.append(configmap)
        return (None if problems else configmaps_digest(found)), problems

    async def _with_index(
        self,
        body: Manifest,
        app: LLMChainApp,
        observed: Observed,
        returned: dict[tuple[str, str], Manifest],
        documents_digest: str | None,
    ) -> Observed:
        """status.retrieval and the index Job: the digests, and the counts the build reported in
        its termination message (read from its pod once, then kept in the status)."""
        digest = index_digest(app, documents_digest)
        digests = {
            "indexDigest": digest,
            "embeddingModelDigest": embedding_digest(app),
            "corpusDigest": corpus_identity(app, documents_digest),
        }
        job = returned.get(("Job", index_job_name(app, documents_digest)))
        failure = None
        old = body.get("status", {}).get("retrieval") or {}
        report = old if old.get("indexDigest") == digest and old.get("chunks") is not None else None
        built = job_state(job) == "complete"
        if report is None and (built or not index_in_job(app)):
            meta = body["metadata"]
            selector = (
                f"job-name={job['metadata']['name']}"
                if index_in_job(app) and job is not None
                else f"app.kubernetes.io/instance={meta['name']},"
                f"app.kubernetes.io/managed-by={MANAGED_BY}"
            )
            try:
                pods = await self.kube.list("Pod", meta["namespace"], selector)
            except ApiError as error:  # no RBAC to list pods, a 5xx: the counts come later
                self.log.warning("Could not list pods of %s: %s", meta["name"], error)
                pods = []
            report = index_report(pods, digest)
            if report is None and not index_in_job(app):
                failure = index_failure(pods, digest)
        return dataclasses.replace(
            observed,
            retrieval=retrieval_status(digests, report),
            index_job=job,
            index_in_job=index_in_job(app),
            index_failure=failure,
        )

    async def _report_invalid(self, body: Manifest, problems: list[str]) -> None:
        """Degraded with the problems named; the running children are left as they are."""
        meta = body["metadata"]
        observed = Observed(
            generation=int(meta.get("generation", 0)),
            deployment=None,
            build_job=None,
            builds_in_job=False,
            desired_replicas=0,
            problems=problems,
        )
        old = body.get("status", {}).get("conditions", [])
        message = "; ".join(problems)
        if self._is_news(body, INVALID, message, "Degraded"):
            await self.kube.event(body, "Warning", INVALID, message)
            self.log.warning(
                "Rejected %s %s/%s: %s", KIND, meta["namespace"], meta["name"], message
            )
        conditions = merge_conditions(
            old, compute_conditions(observed), _now(), observed.generation
        )
        # Which optional APIs are missing is not known for an invalid spec: the last report stays
        # (dropping it would make the same report look new once the spec is valid again).
        kept = [c for c in conditions if c["type"] != "OptionalAPIs"]
        kept += [c for c in old if c["type"] == "OptionalAPIs"]
        status = {**body.get("status", {}), "observedGeneration": observed.generation}
        status["conditions"] = kept
        if _status_digest(body.get("status", {})) != _status_digest(status):
            await self.kube.patch_status(
                KIND,
                meta["namespace"],
                meta["name"],
                {"observedGeneration": observed.generation, "conditions": kept},
            )

    async def _write_status(self, body: Manifest, app: LLMChainApp, observed: Observed) -> None:
        meta = body["metadata"]
        old = body.get("status", {}).get("conditions", [])
        conditions = merge_conditions(
            old, compute_conditions(observed), _now(), observed.generation
        )
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(app, "server").items())
        status = {
            "observedGeneration": observed.generation,
            "conditions": conditions,
            **counts_for_status(observed.deployment),
            # None removes a field the merge patch would otherwise leave as it was.
            "autoscaler": observed.autoscaler,
            "selector": selector,
            "endpoint": endpoint(app, self.settings),
            "modelDigest": model_digest(app),
            # None removes the list when the last tool goes (a merge patch keeps what it omits).
            "tools": tools_status(app.spec),
            "retrieval": observed.retrieval,
        }
        if _status_digest(body.get("status", {})) != _status_digest(status):
            await self.kube.patch_status(KIND, meta["namespace"], meta["name"], status)


def _without_none(value: Any) -> Any:
    """What a merge patch leaves stored: keys set to None are absent."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _status_digest(status: Manifest) -> str:
    """Status without timestamps, to skip writes that would change nothing."""
    stripped = {
        **_without_none(status),
        "conditions": [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions", [])
        ],
    }
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()
