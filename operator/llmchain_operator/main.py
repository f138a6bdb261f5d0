"""Every kopf registration of the operator, and nothing else: handlers are thin and delegate.

Run with `llmchain operator` (or `kopf run -m llmchain_operator.main`). What a run brings
(settings, the webhook server, background coroutines) arrives in kopf's memo, not in module
globals: `llmchain operator` passes it to `kopf.run(memo=...)`; a bare `kopf run` gets the
settings from the environment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import kopf

from llmchain_operator import metrics
from llmchain_operator.api import GROUP, PLURAL, VERSION
from llmchain_operator.builders.common import MANAGED_BY
from llmchain_operator.kinds import WATCHED
from llmchain_operator.kube import ApiError, Kube
from llmchain_operator.reconcile import ChildrenRefused, Reconciler, RetryLater
from llmchain_operator.settings import Settings
from llmchain_operator.validation import validate

RESYNC_CONCURRENCY = 8
Background = Callable[[], Coroutine[Any, Any, None]]


def run_memo(
    settings: Settings,
    webhook: kopf.WebhookServer | None = None,
    background: list[Background] | None = None,
    stop_flag: threading.Event | None = None,
    namespaces: list[str] | None = None,
) -> kopf.Memo:
    """What `llmchain operator` hands kopf: the settings, the admission webhook server (when
    asked for one), coroutines started with the operator (the leader-lease guard), the stop
    flag kopf.run was given and the namespaces it serves (none: the whole cluster)."""
    # `apps` is shared by the shallow copies kopf makes of this memo for each object.
    return kopf.Memo(
        settings=settings,
        webhook=webhook,
        background=list(background or []),
        stop_flag=stop_flag,
        namespaces=list(namespaces or []),
        apps=set(),
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    if "settings" not in memo:  # `kopf run -m llmchain_operator.main`
        memo.update(run_memo(Settings.from_env()))
    config: Settings = memo.settings
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    if memo.webhook is not None:
        settings.admission.server = memo.webhook
        settings.admission.managed = "llmchainapps.llmchain.io"
    memo.reconciler = Reconciler(
        Kube.from_environment(config.field_manager, config.discovery_seconds), config
    )
    memo.tasks = [
        asyncio.create_task(_resync_forever(memo.reconciler, config.resync_seconds)),
        *(asyncio.create_task(start()) for start in memo.background),
        *_watch_children(memo),
        *_watch_documents(memo),
    ]


async def validate_app(body: kopf.Body, **_: Any) -> None:
    """Admission: what the schema cannot check (templates) is rejected at apply time.

    failurePolicy is Ignore: without a reachable webhook an app is admitted, and the operator
    reports the same problems as Degraded instead.
    """
    problems = validate(body).problems
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


def enable_webhook() -> None:
    """Register the admission handler, for a run with a webhook server in its memo (kopf
    refuses admission handlers without a server)."""
    kopf.on.validate(
        GROUP,
        VERSION,
        PLURAL,
        id="llmchainapp",
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
    )(validate_app)


async def _reconcile(body: kopf.Body, memo: kopf.Memo) -> None:
    try:
        await memo.reconciler.reconcile(dict(body))
    except RetryLater as error:  # a growing delay when children were refused
        raise kopf.TemporaryError(str(error), delay=error.delay) from None
    except ApiError as error:
        if error.status in (403, 422):
            raise kopf.TemporaryError(str(error), delay=30) from None
        raise kopf.TemporaryError(str(error), delay=10) from None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_app(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(body, memo)


async def resync(reconciler: Reconciler, app: dict[str, Any]) -> None:
    """One app's resync. Refused children were logged (and posted) when they were new: meeting
    them again is no warning; the app's own handler retries them with its back-off."""
    log = logging.getLogger("llmchain.operator")
    try:
        await reconciler.reconcile(app)
    except ChildrenRefused as error:
        log.debug("Resync of %s: %s", app["metadata"]["name"], error)
    except (RetryLater, ApiError) as error:
        log.warning("Resync of %s failed: %s", app["metadata"]["name"], error)


async def _resync_forever(reconciler: Reconciler, period: float) -> None:
    """Level-triggered safety net: every app is reconciled each `period`, so drift in kinds
    the operator does not watch (ScaledObject, ServiceMonitor, PrometheusRule) and optional APIs
    installed later are caught too. (Not a kopf timer: those add finalizers.) Child watches handle
    the rest within seconds, so the period can be long."""
    log = logging.getLogger("llmchain.operator")
    slots = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def limited(app: dict[str, Any]) -> None:
        async with slots:
            await resync(reconciler, app)

    while True:
        await asyncio.sleep(period)
        try:
            apps = await reconciler.kube.list("LLMChainApp", None)
        except ApiError as error:
            log.warning("Could not list apps to resync: %s", error)
            continue
        await asyncio.gather(
            *(limited(app) for app in apps if not app["metadata"].get("deletionTimestamp"))
        )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.tasks:
        task.cancel()
    # kopf watches the stop flag from a thread of asyncio's default executor; when a signal
    # stops the operator instead, that thread would wait forever and asyncio's shutdown would
    # join it forever: the leader would never return to release its lease.
    if memo.stop_flag is not None:
        memo.stop_flag.set()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def count_apps(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    apps: set[str] = memo.apps
    meta = event["object"]["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    if event["type"] == "DELETED":
        apps.discard(key)
        memo.reconciler.forget(event["object"])
    else:
        apps.add(key)
    metrics.MANAGED_APPS.set(len(apps))


def _owner(body: dict[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences", []):
        if ref.get("kind") == "LLMChainApp" and ref.get("controller"):
            return str(ref["name"])
    return None


async def child_changed(
    body: dict[str, Any], reconciler: Reconciler, echo: Callable[[], bool] | None = None
) -> None:
    owner = _owner(body)
    if owner is not None:
        log = logging.getLogger("llmchain.operator")
        try:
            await reconciler.reconcile_named(body["metadata"]["namespace"], owner, echo)
        except ChildrenRefused as error:  # logged and posted when new (see resync)
            log.debug("Reconciled %s after a change of its child: %s", owner, error)
        except (RetryLater, ApiError) as error:
            log.warning("Could not reconcile %s after a change of its child: %s", owner, error)


def _watch_children(memo: kopf.Memo) -> list[asyncio.Task[None]]:
    """Children whose changes (drift, deletion, status) trigger a reconcile of their owner.

    Not kopf handlers: kopf would watch every Deployment, ConfigMap, Service ... of the cluster
    and filter by label in the process, keeping state for each object it saw. These watches
    are filtered by the API server (label `app.kubernetes.io/managed-by`) and carry metadata
    only; bursts for one app coalesce in Reconciler.reconcile_named, and the echoes of the
    operator's own writes (an event at the version its apply returned) reconcile nothing."""
    reconciler: Reconciler = memo.reconciler
    pending: set[asyncio.Task[None]] = set()  # referenced until done

    def watcher(kind: str) -> Callable[[str, dict[str, Any]], None]:
        def changed(event_type: str, obj: dict[str, Any]) -> None:
            echo = None
            if event_type == "DELETED":
                reconciler.children.deleted(kind, obj)
            else:
                echo = functools.partial(reconciler.children.echo, kind, obj)
            task = asyncio.create_task(child_changed(obj, reconciler, echo))
            pending.add(task)
            task.add_done_callback(pending.discard)

        return changed

    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    return [
        asyncio.create_task(
            reconciler.kube.watch(kind.kind, namespace, selector, watcher(kind.kind))
        )
        for kind in WATCHED
        for namespace in memo.namespaces or [None]
    ]


def _watch_documents(memo: kopf.Memo) -> list[asyncio.Task[None]]:
    """ConfigMaps that apps index (spec.retrieval.documents.configMaps): a change of one, or its
    creation after the app named it, reconciles those apps, which rebuild the index when the
    data changed. Every ConfigMap's metadata crosses the wire; only the indexed ones cost more
    than a dictionary look-up."""
    reconciler: Reconciler = memo.reconciler
    pending: set[asyncio.Task[None]] = set()
    log = logging.getLogger("llmchain.operator")

    async def reconcile(namespace: str, name: str) -> None:
        try:
            await reconciler.reconcile_named(namespace, name)
        except ChildrenRefused as error:
            log.debug("Reconciled %s after a change of its documents: %s", name, error)
        except (RetryLater, ApiError) as error:
            log.warning("Could not reconcile %s after a change of its documents: %s", name, error)

    def changed(_event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        users = reconciler.documents_users.get((meta.get("namespace"), meta.get("name")), ())
        for app in sorted(users):
            task = asyncio.create_task(reconcile(meta["namespace"], app))
            pending.add(task)
            task.add_done_callback(pending.discard)

    return [
        asyncio.create_task(reconciler.kube.watch("ConfigMap", namespace, "", changed))
        for namespace in memo.namespaces or [None]
    ]
