"""One idempotent, level-triggered reconcile of an LLMChainApp.

Validate what the schema cannot (templates, referenced Secrets) → build the desired children
(pure) → adopt them (owner references) → server-side apply under one field manager → prune
children no longer wanted → compute status from what the API server returned.
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
from llmchain_operator.api import KIND, LLMChainApp
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
    model_digest,
    selector_labels,
)
from llmchain_operator.builders.model import build_job_name, builds_in_job, model_pvc_name
from llmchain_operator.builders.network import endpoint
from llmchain_operator.kinds import CHILDREN, OPTIONAL_API_GROUPS, kind_of
from llmchain_operator.kube import ApiError, Kube
from llmchain_operator.ownership import controlled_by, holder
from llmchain_operator.settings import Settings
from llmchain_operator.status import (
    Observed,
    compute_conditions,
    counts_for_status,
    is_ready,
    merge_conditions,
    skipped_message,
)
from llmchain_operator.validation import validate

Manifest = dict[str, Any]
HANDOVER_MANAGER_SUFFIX = "-handover"
BLOCKERS, INVALID = "blockers", "InvalidSpec"
"""Reports remembered per app (see Reconciler._reported), besides NameConflict, ChildRejected."""


class RetryLater(Exception):
    """The API server refused for a reason that may pass (conflict, throttling, 5xx): try
    again after `delay` seconds."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class ChildrenRefused(RetryLater):
    """Children left unapplied (the API server rejected them, or another owner holds their
    names) while the others were applied and status names them; retried with a growing delay."""


class _Held(Exception):
    """Another owner holds the object a child would be applied over (the message says who)."""


class _Replaced(Exception):
    """A child applied before is gone, or another object took its name, since."""


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


def _key(obj: Manifest) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


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


def owns_replicas(deployment: Manifest, manager: str) -> bool:
    for entry in deployment["metadata"].get("managedFields", []):
        fields = entry.get("fieldsV1", {}).get("f:spec", {})
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and "f:replicas" in fields
        ):
            return True
    return False


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("llmchain.operator"))
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _applied: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    _waiting: set[str] = field(default_factory=set)
    _handed_over: set[str] = field(default_factory=set)
    _owned: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    """Per app uid: the children it applied, each with its uid. A child is checked for another
    owner (a GET) only before this app first applies it; after that each apply names the
    child's uid, which the API server checks, so an object deleted and created again by
    someone else since is never applied over."""
    _reported: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    """Per app uid, per report (NameConflict, ChildRejected, blockers, InvalidSpec): what this
    operator last reported. An event is posted only when it is news to both this and the
    status in the body, which kopf read before waiting for the app's lock: a child event's
    reconcile may have written a newer one meanwhile."""
    _unlisted: set[str] = field(default_factory=set)
    """App uids whose pods could not be listed (warned once until a list succeeds)."""
    _refused_since: dict[str, float] = field(default_factory=dict)
    """Per app uid: when its reconciles began to leave children refused (for the back-off)."""
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )
    """Now, to compare with the API server's timestamps (a new PVC's grace)."""

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
        self._applied.pop(meta.get("uid", ""), None)
        self._handed_over.discard(meta.get("uid", ""))
        self._owned.pop(meta.get("uid", ""), None)
        self._refused_since.pop(meta.get("uid", ""), None)
        self._unlisted.discard(meta.get("uid", ""))
        self._reported.pop(meta.get("uid", ""), None)

    async def _timed(self, body: Manifest) -> None:
        started = time.perf_counter()
        result = "error"
        try:
            result = await self._reconcile(body)
        finally:
            metrics.record_reconcile(result, time.perf_counter() - started)

    async def reconcile_named(self, namespace: str, name: str) -> None:
        """Reconcile the current state of an app, by name (from a child's event).

        Bursts coalesce: while one such reconcile waits for the app's lock, more requests for
        the same app are dropped, since the waiting one reads the app afresh once it runs.
        """
        key = f"{namespace}/{name}"
        if key in self._waiting:
            return
        self._waiting.add(key)
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                self._waiting.discard(key)
                body = await self.kube.get(KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                await self._timed(body)
        finally:
            self._waiting.discard(key)

    async def _reconcile(self, body: Manifest) -> str:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        validated = validate(body)
        app, problems = validated.app, list(validated.problems)
        if app is not None:
            problems += await self._missing_secrets(app)
        if app is None or problems:
            await self._report_invalid(body, problems)
            return "invalid"
        self._reported.get(meta["uid"], {}).pop(INVALID, None)
        groups = await self.kube.available_groups()
        children = build_children(
            app, self.settings, [g for g in OPTIONAL_API_GROUPS if g in groups]
        )
        objects = adopt(children.objects, body)
        owned = self._owned.setdefault(meta["uid"], {})
        for gone in set(owned) - {_key(o) for o in objects}:
            del owned[gone]  # checked again should it be wanted again
        returned: dict[tuple[str, str], Manifest] = {}
        conflicts: list[str] = []
        rejected: list[str] = []
        for obj in objects:  # one refused child does not stop the others
            what = f"{obj['kind']} {obj['metadata']['name']}"
            try:
                if obj["kind"] == "Deployment" and obj["metadata"]["name"] == name:
                    await self._hand_replicas_over_once(
                        obj, meta["uid"], app.spec.autoscaling is not None
                    )
                returned[_key(obj)] = await self._apply_child(obj, body, owned)
            except _Held as held:
                conflicts.append(f"{what} {held}")
            except ApiError as error:
                if not 400 <= error.status < 500:
                    raise
                # Redacted: the message can echo the pod's args (`--source <url?signature>`).
                rejected.append(f"{what}: {redact(error.message)}"[:REFUSAL_MESSAGE_LIMIT])
        await self._prune(body, {_key(o) for o in objects})
        skipped = [f"{o['kind']} {o['metadata']['name']}" for o in children.skipped]
        if skipped and self._skips_are_news(body, skipped):
            await self.kube.event(
                body,
                "Warning",
                "APINotInstalled",
                skipped_message(skipped),
            )
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

    async def _check_holder(self, obj: Manifest, body: Manifest) -> None:
        """Raise _Held when an object of the child's name exists that this app may not apply
        over (one GET)."""
        meta = obj["metadata"]
        current = await self.kube.get(obj["kind"], meta["namespace"], meta["name"])
        who = None if current is None else holder(current, body)
        if who is not None:
            raise _Held(who)

    async def _apply_child(
        self, obj: Manifest, body: Manifest, owned: dict[tuple[str, str], str]
    ) -> Manifest:
        """Apply a child, never over an object another owner holds (_Held). One this app
        applied before is applied with its uid; when that object is gone or was replaced since,
        the name is checked afresh."""
        key = _key(obj)
        if obj["kind"] == "Job":
            return await self._job_once(obj, body, owned)
        if key in owned:
            try:
                return await self._apply(obj, uid=owned[key])
            except _Replaced:
                del owned[key]
        await self._check_holder(obj, body)
        result = await self._apply(obj)
        owned[key] = str(result["metadata"]["uid"])
        return result

    async def _job_once(
        self, obj: Manifest, body: Manifest, owned: dict[tuple[str, str], str]
    ) -> Manifest:
        """A build Job is created once, then only read. Its pod template is immutable, so
        applying a changed one (an operator upgrade's new image or flag, new resources) would be
        refused for as long as the Job lives; the Job of another model digest has another name,
        so a new model still gets a new build. One GET, as an apply would cost."""
        meta = obj["metadata"]
        current = await self.kube.get("Job", meta["namespace"], meta["name"])
        if current is not None:
            who = holder(current, body)
            if who is not None:
                raise _Held(who)
            if controlled_by(current, body["metadata"]["uid"]):
                owned[_key(obj)] = str(current["metadata"]["uid"])
                return current
        result = await self._apply(obj)  # created, or an orphan of this app's name adopted
        owned[_key(obj)] = str(result["metadata"]["uid"])
        return result

    def _skips_are_news(self, body: Manifest, skipped: list[str]) -> bool:
        """True when this skip list is news (so the event is posted once, not every resync)."""
        conditions = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
        previous = str(conditions.get("OptionalAPIs", {}).get("message", ""))
        return previous != skipped_message(skipped)

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
        for pod, container in crash_looping_init_containers(pods):
            try:
                logs[(pod, container)] = await self.kube.previous_log(
                    namespace, pod, container, LOG_TAIL_BYTES
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

    async def _hand_replicas_over_once(
        self, deployment: Manifest, uid: str, autoscaled: bool
    ) -> None:
        """Hand `replicas` over when autoscaling is on; checked once per app and switch-on, not
        on every reconcile (the check costs a GET)."""
        if not autoscaled:
            self._handed_over.discard(uid)
        elif uid not in self._handed_over:
            await self._hand_replicas_over(deployment)
            self._handed_over.add(uid)

    async def _hand_replicas_over(self, deployment: Manifest) -> None:
        """Switching autoscaling on: keep the replica count when we stop applying `replicas`.

        A field that its only manager stops applying is removed and falls back to its default
        (1). So first a second manager applies the current count, co-owning the field; then the
        main apply drops it, and the autoscaler's updates take it over from there.
        """
        meta = deployment["metadata"]
        current = await self.kube.get("Deployment", meta["namespace"], meta["name"])
        app_uid = meta["ownerReferences"][0]["uid"]
        if (
            current is None
            or not controlled_by(current, app_uid)
            or not owns_replicas(current, self.kube.field_manager)
        ):
            return
        replicas = current["spec"].get("replicas", 1)
        await self._apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": replicas},
            },
            self.kube.field_manager + HANDOVER_MANAGER_SUFFIX,
        )
        self.log.info(
            "Handed replicas (%s) of Deployment %s/%s over to the autoscaler",
            replicas,
            meta["namespace"],
            meta["name"],
        )

    async def _apply(
        self, obj: Manifest, field_manager: str | None = None, uid: str | None = None
    ) -> Manifest:
        """Apply; refusals that may pass (conflict, throttling, 5xx, an optional API gone)
        become RetryLater. With `uid`, only over the object of that uid (the API server checks
        it): _Replaced when there is none (409) or the object there has another uid (422)."""
        if uid is not None:
            obj = {**obj, "metadata": {**obj["metadata"], "uid": uid}}
        try:
            return await self.kube.apply(obj, field_manager=field_manager)
        except ApiError as error:
            if uid is not None and (
                error.status == 409 or (error.status == 422 and "metadata.uid" in error.message)
            ):
                raise _Replaced from None
            if error.status == 404 and kind_of(obj["kind"]).optional:
                self.kube.forget_groups()  # its CRD went away since the last discovery
                raise RetryLater(f"{obj['kind']} is no longer served") from None
            if error.status in (409, 429) or error.status >= 500:
                raise RetryLater(str(error)) from None
            raise

    async def _prune(self, body: Manifest, desired: set[tuple[str, str]]) -> None:
        """Delete children this app owns that are no longer desired (autoscaler switched off,
        memory removed, a build Job of an older model digest, ...)."""
        meta = body["metadata"]
        uid = meta["uid"]
        if self._applied.get(uid) == desired:
            return
        groups = await self.kube.available_groups()
        selector = (
            f"app.kubernetes.io/instance={meta['name']},app.kubernetes.io/managed-by={MANAGED_BY}"
        )
        for row in CHILDREN:
            if row.optional and row.group not in groups:
                continue
            kind = row.kind
            for obj in await self.kube.list(kind, meta["namespace"], selector):
                owners = obj["metadata"].get("ownerReferences", [])
                if any(o.get("uid") == uid for o in owners) and _key(obj) not in desired:
                    await self.kube.delete(kind, meta["namespace"], obj["metadata"]["name"])
                    self.log.info(
                        "Deleted %s %s/%s (no longer wanted)",
                        kind,
                        meta["namespace"],
                        obj["metadata"]["name"],
                    )
        self._applied[uid] = desired

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
            "selector": selector,
            "endpoint": endpoint(app, self.settings),
            "modelDigest": model_digest(app),
        }
        if _status_digest(body.get("status", {})) != _status_digest(status):
            await self.kube.patch_status(KIND, meta["namespace"], meta["name"], status)


def _status_digest(status: Manifest) -> str:
    """Status without timestamps, to skip writes that would change nothing."""
    stripped = {
        **status,
        "conditions": [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions", [])
        ],
    }
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()
