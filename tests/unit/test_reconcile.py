"""The Reconciler against FakeKube (an in-memory fake of the API client, tests/support):
pruning, the replica hand-over to an autoscaler, de-duplicated events, skipped status writes.

Each test drives the public surface only: `Reconciler(kube, settings)`, `reconcile(body)`,
`reconcile_named(namespace, name)`, and looks at what the fake recorded. The app's body is read
back from the fake before each reconcile, so the status the last reconcile wrote is in it, as it
is in the body kopf hands over.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

from llmchain_operator import main
from llmchain_operator.kube import ApiError
from llmchain_operator.reconcile import Reconciler, RetryLater
from llmchain_operator.settings import Settings
from tests.support.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parents[2]
QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
NS = "apps"
NAME = "qa-chain"
MANAGER = Settings().field_manager
HANDOVER = MANAGER + "-handover"
HPA = {"minReplicas": 1, "maxReplicas": 6}
MEMORY = {"window": 3, "store": "managed"}
Spec = dict[str, Any]


def setup(
    *changes: Callable[[Spec], None], groups: set[str] | None = None
) -> tuple[FakeKube, Reconciler]:
    """A fake cluster holding example 01 (as `qa-chain` in `apps`, changed by `changes`)."""
    kube = FakeKube(field_manager=MANAGER)
    if groups is not None:
        kube.groups = groups
    app = copy.deepcopy(QA)
    app["metadata"].update(namespace=NS, uid="uid-qa-chain")
    for change in changes:
        change(app["spec"])
    kube.put(app)
    return kube, Reconciler(kube=kube, settings=Settings())  # type: ignore[arg-type]


def reconcile(kube: FakeKube, reconciler: Reconciler) -> None:
    """One reconcile of the app as the fake holds it now (status of the last one included)."""
    body = kube.object("LLMChainApp", NS, NAME)
    assert body is not None
    asyncio.run(reconciler.reconcile(body))


def edit(kube: FakeKube, *changes: Callable[[Spec], None]) -> None:
    """Change the app's spec, as `kubectl apply` would (its generation moves)."""
    app = kube.object("LLMChainApp", NS, NAME)
    assert app is not None
    for change in changes:
        change(app["spec"])
    kube.put(app)


def set_(path: str, value: Any) -> Callable[[Spec], None]:
    """A spec change: set the dotted `path` (`serving.replicas`) to `value`."""

    def change(spec: Spec) -> None:
        *parents, last = path.split(".")
        for key in parents:
            spec = spec.setdefault(key, {})
        spec[last] = copy.deepcopy(value)

    return change


def drop(path: str) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        *parents, last = path.split(".")
        for key in parents:
            spec = spec[key]
        del spec[last]

    return change


def conditions(kube: FakeKube) -> dict[str, dict[str, Any]]:
    app = kube.object("LLMChainApp", NS, NAME)
    assert app is not None
    return {c["type"]: c for c in app.get("status", {}).get("conditions", [])}


def replica_owners(kube: FakeKube) -> set[str]:
    deployment = kube.object("Deployment", NS, NAME)
    assert deployment is not None
    return {
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields", [])
        if "f:replicas" in entry["fieldsV1"].get("f:spec", {})
    }


def a_child(kind: str, name: str, owner_uid: str | None) -> dict[str, Any]:
    """An object labelled like the app's children, owned by `owner_uid` (or by nothing)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": {
            "app.kubernetes.io/instance": NAME,
            "app.kubernetes.io/managed-by": MANAGER,
        },
    }
    if owner_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "llmchain.io/v1alpha1", "kind": "LLMChainApp", "uid": owner_uid}
        ]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {}}


# --- pruning ----------------------------------------------------------------------------------


def test_switching_autoscaling_off_deletes_the_autoscaler_and_nothing_else() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    assert kube.names("HorizontalPodAutoscaler") == {NAME}
    assert kube.calls_to("delete") == []

    edit(kube, drop("autoscaling"))
    reconcile(kube, reconciler)
    assert kube.calls_to("delete") == [("delete", "HorizontalPodAutoscaler", NS, NAME)]
    assert kube.names("HorizontalPodAutoscaler") == set()


def test_removing_memory_deletes_the_memory_store_and_nothing_else() -> None:
    kube, reconciler = setup(set_("chain.memory", MEMORY))
    reconcile(kube, reconciler)
    memory = f"{NAME}-memory"
    assert memory in kube.names("Deployment") and memory in kube.names("Service")
    kube.calls.clear()

    edit(kube, drop("chain.memory"))
    reconcile(kube, reconciler)
    assert sorted(kube.calls_to("delete")) == [
        ("delete", "Deployment", NS, memory),
        ("delete", "NetworkPolicy", NS, memory),  # the policy that let only the servers in
        ("delete", "Service", NS, memory),
    ]
    assert kube.names("Deployment") == {NAME}


def test_prune_never_deletes_what_another_app_or_nobody_owns() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    kube.put(a_child("ConfigMap", "same-labels-other-owner", owner_uid="uid-of-another-app"))
    kube.put(a_child("ConfigMap", "same-labels-no-owner", owner_uid=None))
    reconcile(kube, reconciler)
    edit(kube, drop("autoscaling"))  # so the second reconcile prunes too
    kube.put(a_child("ConfigMap", "an-owned-leftover", owner_uid="uid-qa-chain"))  # the control
    reconcile(kube, reconciler)

    assert sorted(kube.calls_to("delete")) == [
        ("delete", "ConfigMap", NS, "an-owned-leftover"),
        ("delete", "HorizontalPodAutoscaler", NS, NAME),
    ]
    assert {"same-labels-other-owner", "same-labels-no-owner"} <= kube.names("ConfigMap")


def test_prune_is_skipped_while_the_desired_children_stay_the_same() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    assert kube.calls_to("list"), "the first reconcile looks for leftovers"
    kube.calls.clear()

    reconcile(kube, reconciler)  # a resync
    edit(kube, set_("chain.steps", [{"name": "answer", "prompt": "Q: {{ question }}\nA:"}]))
    reconcile(kube, reconciler)  # a change that leaves the same set of children
    # (the not-Ready app's pods are listed for what blocks them, not for pruning)
    assert [c for c in kube.calls_to("list") if c[1] != "Pod"] == []
    assert kube.calls_to("delete") == []
    assert kube.calls_to("apply"), "the changed prompt was applied"


def test_prune_does_not_list_kinds_whose_api_is_not_installed() -> None:
    kube, reconciler = setup(groups=set())
    reconcile(kube, reconciler)
    listed = {call[1] for call in kube.calls_to("list")}
    assert {"Deployment", "ConfigMap", "HorizontalPodAutoscaler"} <= listed
    assert listed.isdisjoint({"ServiceMonitor", "PrometheusRule", "ScaledObject"})


# --- the replica hand-over to an autoscaler ----------------------------------------------------


def test_switching_autoscaling_on_hands_the_replica_count_over_before_dropping_it() -> None:
    kube, reconciler = setup(set_("serving.replicas", 3))
    reconcile(kube, reconciler)
    assert replica_owners(kube) == {MANAGER}
    kube.calls.clear()
    kube.applied.clear()

    edit(kube, set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    deployment_calls = [c for c in kube.calls if c[1:4] == ("Deployment", NS, NAME)]
    assert deployment_calls == [
        ("get", "Deployment", NS, NAME),
        ("apply", "Deployment", NS, NAME, HANDOVER),
        ("apply", "Deployment", NS, NAME, MANAGER),
    ]
    handover, main = [body for _, body in kube.applied if body["kind"] == "Deployment"]
    assert handover["spec"] == {"replicas": 3}
    assert "replicas" not in main["spec"]
    deployment = kube.object("Deployment", NS, NAME)
    assert deployment is not None and deployment["spec"]["replicas"] == 3  # kept, not reset
    assert replica_owners(kube) == {HANDOVER}


def test_the_hand_over_happens_once_per_switch_on() -> None:
    kube, reconciler = setup(set_("serving.replicas", 3))
    reconcile(kube, reconciler)
    edit(kube, set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    kube.calls.clear()

    reconcile(kube, reconciler)  # a resync: no second look at the Deployment
    assert ("get", "Deployment", NS, NAME) not in kube.calls
    assert [c for c in kube.calls_to("apply") if c[4] == HANDOVER] == []

    edit(kube, drop("autoscaling"))
    reconcile(kube, reconciler)
    assert replica_owners(kube) == {MANAGER, HANDOVER}  # replicas applied again
    kube.calls.clear()
    edit(kube, set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    assert ("get", "Deployment", NS, NAME) in kube.calls
    assert ("apply", "Deployment", NS, NAME, HANDOVER) in kube.calls
    assert replica_owners(kube) == {HANDOVER}


def test_an_app_autoscaled_from_the_start_needs_no_hand_over() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    assert [c for c in kube.calls_to("apply") if c[4] == HANDOVER] == []
    assert replica_owners(kube) == set()


# --- events, posted once per piece of news ----------------------------------------------------


def test_a_missing_optional_api_is_reported_once_until_it_is_news_again() -> None:
    keda = {**HPA, "engine": "keda", "prometheusAddress": "http://prometheus:9090"}
    kube, reconciler = setup(set_("autoscaling", keda), groups=set())
    reconcile(kube, reconciler)
    reconcile(kube, reconciler)
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "APINotInstalled")]
    message = kube.events[0]["message"]
    assert "ScaledObject qa-chain" in message and "ServiceMonitor qa-chain" in message
    assert conditions(kube)["OptionalAPIs"]["message"] == message

    kube.groups = {"monitoring.coreos.com", "keda.sh"}  # installed: nothing to report
    reconcile(kube, reconciler)
    assert len(kube.events) == 1
    assert {"ScaledObject", "ServiceMonitor"} <= {c[1] for c in kube.calls_to("apply")}

    kube.groups = set()  # removed again: news again
    reconcile(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["APINotInstalled", "APINotInstalled"]


def test_a_missing_optional_api_is_reported_once_from_a_stale_body() -> None:
    keda = {**HPA, "engine": "keda", "prometheusAddress": "http://prometheus:9090"}
    kube, reconciler = setup(set_("autoscaling", keda), groups=set())
    stale = kube.object("LLMChainApp", NS, NAME)
    for _ in range(2):
        asyncio.run(reconciler.reconcile(copy.deepcopy(stale)))
    assert [e["reason"] for e in kube.events] == ["APINotInstalled"]


def test_an_invalid_spec_is_reported_once_per_distinct_problem() -> None:
    kube, reconciler = setup(
        set_("chain.steps", [{"name": "answer", "prompt": "Q: {{ questoin }}\nA:"}])
    )
    reconcile(kube, reconciler)
    reconcile(kube, reconciler)
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "InvalidSpec")]
    assert "undeclared variable 'questoin'" in kube.events[0]["message"]
    degraded = conditions(kube)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert kube.calls_to("apply") == []

    edit(
        kube,
        set_("chain.steps", QA["spec"]["chain"]["steps"]),
        set_("serving.apiKeySecretRef", {"name": "qa-keys", "key": "key"}),
    )
    reconcile(kube, reconciler)
    reconcile(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["InvalidSpec", "InvalidSpec"]
    assert kube.events[1]["message"] == "spec.serving.apiKeySecretRef: Secret qa-keys not found"


def test_an_invalid_spec_leaves_the_running_children_alone() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    kube.calls.clear()

    edit(kube, set_("serving.apiKeySecretRef", {"name": "qa-keys", "key": "key"}))
    reconcile(kube, reconciler)
    assert [c[0] for c in kube.calls if c[0] in ("apply", "delete", "list")] == []
    assert kube.names("HorizontalPodAutoscaler") == {NAME}
    assert conditions(kube)["Ready"]["reason"] == "InvalidSpec"


# --- status writes ----------------------------------------------------------------------------


def test_status_is_not_written_again_when_nothing_changed() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == [("patch_status", "LLMChainApp", NS, NAME)]
    kube.calls.clear()

    reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == []


def test_the_autoscaler_status_follows_the_hpa_and_goes_when_autoscaling_is_turned_off() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    app = kube.object("LLMChainApp", NS, NAME)
    assert app is not None and app["status"]["autoscaler"]["reason"] == "NoStatus"
    kube.set_status(
        "HorizontalPodAutoscaler",
        NS,
        NAME,
        {
            "currentReplicas": 1,
            "desiredReplicas": 2,
            "conditions": [
                {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}
            ],
        },
    )
    reconcile(kube, reconciler)
    autoscaler = kube.object("LLMChainApp", NS, NAME)["status"]["autoscaler"]  # type: ignore[index]
    assert autoscaler["active"] is True and autoscaler["desiredReplicas"] == 2
    assert autoscaler["reason"] == "ValidMetricFound" and "message" not in autoscaler
    kube.calls.clear()
    reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == []  # None fields do not make every resync write

    edit(kube, set_("autoscaling", None))
    reconcile(kube, reconciler)
    assert "autoscaler" not in kube.object("LLMChainApp", NS, NAME)["status"]  # type: ignore[index]


def test_status_is_written_when_the_deployment_reports_progress() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    kube.set_status(
        "Deployment",
        NS,
        NAME,
        {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    )
    kube.calls.clear()

    reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == [("patch_status", "LLMChainApp", NS, NAME)]
    app = kube.object("LLMChainApp", NS, NAME)
    assert app is not None and app["status"]["readyReplicas"] == 1
    assert conditions(kube)["Ready"]["status"] == "True"
    kube.calls.clear()
    reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == []


# --- what blocks a not-Ready app -----------------------------------------------------------------


def a_pod(name: str, status: dict[str, Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/instance": NAME, "app.kubernetes.io/managed-by": MANAGER}
    meta = {"name": name, "namespace": NS, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def ready_deployment(kube: FakeKube) -> None:
    kube.set_status(
        "Deployment",
        NS,
        NAME,
        {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    )


UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        }
    ],
}


def test_a_ready_app_lists_no_pods() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    ready_deployment(kube)
    kube.calls.clear()
    reconcile(kube, reconciler)
    assert conditions(kube)["Ready"]["status"] == "True"
    assert [c for c in kube.calls if "Pod" in c] == []


def test_an_unschedulable_pod_is_named_in_ready_with_one_event() -> None:
    kube, reconciler = setup()
    kube.put(a_pod("qa-chain-1", UNSCHEDULABLE))
    reconcile(kube, reconciler)
    ready = conditions(kube)["Ready"]
    assert ready["reason"] == "Unschedulable"
    assert ready["message"] == (
        "Pod qa-chain-1 is unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    )
    assert [(e["reason"], e["message"]) for e in kube.events] == [
        ("Unschedulable", ready["message"])
    ]
    reconcile(kube, reconciler)  # a resync: the same blocker is no news
    assert len(kube.events) == 1
    asyncio.run(kube.delete("Pod", NS, "qa-chain-1"))
    ready_deployment(kube)
    reconcile(kube, reconciler)
    assert conditions(kube)["Ready"]["reason"] == "Available"


def test_a_crash_looping_init_container_is_named_with_its_last_log_line() -> None:
    kube, reconciler = setup()
    model = {
        "name": "model",
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }
    kube.put(a_pod("qa-chain-1", {"phase": "Pending", "initContainerStatuses": [model]}))
    kube.logs[(NS, "qa-chain-1", "model")] = (
        "x" * 2000 + "\nfetching\nError: cannot download https://h/m.gguf?token=s3cr3t: HTTP 403\n"
    )
    reconcile(kube, reconciler)
    assert kube.calls_to("previous_log") == [("previous_log", NS, "qa-chain-1", "model")]
    for type_ in ("Ready", "ModelReady"):
        assert conditions(kube)[type_]["reason"] == "CrashLoopBackOff"
    assert conditions(kube)["ModelReady"]["message"] == (
        "The model build is blocked: Pod qa-chain-1: init container model is crash-looping "
        "(exit code 1): Error: cannot download https://h/m.gguf?[redacted]: HTTP 403"
    )


def test_a_log_that_cannot_be_read_leaves_the_blocker_without_its_line() -> None:
    kube, reconciler = setup()
    model = {
        "name": "model",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3}},
    }
    kube.put(a_pod("qa-chain-1", {"phase": "Pending", "initContainerStatuses": [model]}))
    kube.failures[("previous_log", NS)] = ApiError(403, "Forbidden", "pods/log is forbidden")
    reconcile(kube, reconciler)
    assert conditions(kube)["Ready"]["message"] == (
        "Pod qa-chain-1: init container model is crash-looping (exit code 3)"
    )


def test_pods_that_cannot_be_listed_leave_the_status_written_and_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 (RBAC of an older release) or a 5xx on the pod list: status is written without
    blockers, and the warning is not repeated on every reconcile."""
    kube, reconciler = setup()
    kube.put(a_pod("qa-chain-1", UNSCHEDULABLE))
    kube.list_refusals["Pod"] = ApiError(403, "Forbidden", 'pods is forbidden: cannot list "pods"')
    with caplog.at_level("WARNING", logger="llmchain.operator"):
        for _ in range(3):
            reconcile(kube, reconciler)
    assert (conditions(kube)["Ready"]["status"], conditions(kube)["Ready"]["reason"]) == (
        "False",
        "NotAvailable",
    )
    assert len([r for r in caplog.records if "pods is forbidden" in r.getMessage()]) == 1
    del kube.list_refusals["Pod"]  # RBAC fixed: the blocker shows
    reconcile(kube, reconciler)
    assert conditions(kube)["Ready"]["reason"] == "Unschedulable"


# --- reconcile by name (from a child's event), and API errors ---------------------------------


def test_reconcile_named_reads_the_app_afresh_and_skips_a_deleted_one() -> None:
    kube, reconciler = setup()
    asyncio.run(reconciler.reconcile_named(NS, NAME))
    assert kube.calls[0] == ("get", "LLMChainApp", NS, NAME)
    assert NAME in kube.names("Deployment")

    kube.calls.clear()
    asyncio.run(reconciler.reconcile_named(NS, "gone"))
    assert kube.calls == [("get", "LLMChainApp", NS, "gone")]

    app = kube.object("LLMChainApp", NS, NAME)
    assert app is not None
    app["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    kube.put(app)
    kube.calls.clear()
    asyncio.run(reconciler.reconcile_named(NS, NAME))
    assert kube.calls == [("get", "LLMChainApp", NS, NAME)]


def child_event(kube: FakeKube, kind: str, name: str) -> dict[str, Any]:
    """A child as its watch event carries it (metadata only), at its current version."""
    obj = kube.object(kind, NS, name)
    assert obj is not None
    return {"metadata": copy.deepcopy(obj["metadata"])}


def test_the_echo_of_the_operators_own_write_reconciles_nothing() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    event = child_event(kube, "Deployment", NAME)
    kube.calls.clear()
    echo = lambda: reconciler.children.echo("Deployment", event)  # noqa: E731
    skipped = REGISTRY.get_sample_value("llmchain_operator_child_echoes_total") or 0.0
    asyncio.run(main.child_changed(event, reconciler, echo))
    assert kube.calls == []  # the event reports this operator's own apply
    assert REGISTRY.get_sample_value("llmchain_operator_child_echoes_total") == skipped + 1

    kube.set_status("Deployment", NS, NAME, {"readyReplicas": 1})  # its controller's write
    event = child_event(kube, "Deployment", NAME)
    asyncio.run(main.child_changed(event, reconciler, echo))
    assert kube.calls[0] == ("get", "LLMChainApp", NS, NAME)
    assert len(kube.calls_to("apply")) > 0

    reconciler.children.deleted("Deployment", event)  # gone: no version is an echo any more
    assert not reconciler.children.echo("Deployment", event)


def test_after_a_failed_reconcile_no_event_passes_as_an_echo() -> None:
    """A reconcile that wrote children and then failed is retried by the next child event,
    even one at the version its own write returned."""
    kube, reconciler = setup()
    kube.failures[("patch_status", "LLMChainApp")] = ApiError(500, "InternalError", "etcd down")
    body = kube.object("LLMChainApp", NS, NAME)
    assert body is not None
    with pytest.raises(ApiError):  # (the fake fails that call once)
        asyncio.run(reconciler.reconcile(body))
    event = child_event(kube, "Deployment", NAME)
    kube.calls.clear()
    echo = lambda: reconciler.children.echo("Deployment", event)  # noqa: E731
    asyncio.run(main.child_changed(event, reconciler, echo))
    assert kube.calls[0] == ("get", "LLMChainApp", NS, NAME)
    assert kube.calls_to("patch_status")  # the status the failed reconcile lost is written


def test_a_real_change_joining_a_waiting_echo_is_reconciled() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    event = child_event(kube, "Service", NAME)
    kube.calls.clear()

    async def burst(echoes: list[bool]) -> None:
        lock = reconciler._locks.setdefault(f"{NS}/{NAME}", asyncio.Lock())
        async with lock:  # a reconcile in progress: the events wait, then coalesce
            waiting = [
                asyncio.create_task(main.child_changed(event, reconciler, lambda e=e: e))
                for e in echoes
            ]
            await asyncio.sleep(0)
        await asyncio.gather(*waiting)

    async def both() -> None:
        reconciler._locks.clear()  # bound to the earlier event loop
        await burst([True, True, True])
        assert kube.calls == []
        await burst([True, False, True])
        assert kube.calls.count(("get", "LLMChainApp", NS, NAME)) == 1  # one reconcile for all

    asyncio.run(both())


@pytest.mark.parametrize("status", [409, 429, 503])
def test_a_passing_api_refusal_asks_for_a_retry(status: int) -> None:
    kube, reconciler = setup()
    kube.failures[("apply", "Deployment")] = ApiError(status, "Refused", "try again")
    with pytest.raises(RetryLater):
        reconcile(kube, reconciler)
    assert kube.calls_to("patch_status") == []


def test_an_optional_kind_no_longer_served_forgets_the_discovered_groups() -> None:
    kube, reconciler = setup()
    kube.failures[("apply", "ServiceMonitor")] = ApiError(404, "Not Found", "no such kind")
    with pytest.raises(RetryLater, match="ServiceMonitor is no longer served"):
        reconcile(kube, reconciler)
    assert ("forget_groups",) in kube.calls


def test_an_invalid_spec_writes_its_status_once() -> None:
    kube, reconciler = setup(set_("serving.apiKeySecretRef", {"name": "qa-keys", "key": "key"}))
    for _ in range(3):
        reconcile(kube, reconciler)
    assert len(kube.calls_to("patch_status")) == 1


def test_a_brief_invalid_spell_does_not_make_a_missing_api_news_again() -> None:
    keda = {**HPA, "engine": "keda", "prometheusAddress": "http://prometheus:9090"}
    kube, reconciler = setup(set_("autoscaling", keda), groups=set())
    reconcile(kube, reconciler)
    edit(kube, set_("serving.apiKeySecretRef", {"name": "qa-keys", "key": "key"}))
    reconcile(kube, reconciler)
    assert "OptionalAPIs" in conditions(kube)  # the last report stays while the spec is invalid
    edit(kube, drop("serving.apiKeySecretRef"))
    reconcile(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["APINotInstalled", "InvalidSpec"]


@pytest.mark.parametrize("status", [409, 503])
def test_a_passing_refusal_of_the_hand_over_asks_for_a_retry(status: int) -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    edit(kube, set_("autoscaling", HPA))
    kube.failures[("apply", "Deployment")] = ApiError(status, "Refused", "try again")
    with pytest.raises(RetryLater):  # the hand-over's apply is the Deployment's first
        reconcile(kube, reconciler)
    reconcile(kube, reconciler)  # the hand-over is tried again, and succeeds
    assert HANDOVER in replica_owners(kube)


def test_a_deleted_app_is_forgotten() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    reconcile(kube, reconciler)
    body = kube.object("LLMChainApp", NS, NAME)
    assert body is not None and reconciler.children._applied and reconciler._locks
    assert (
        reconciler.children._handed_over
    )  # checked once for this switch-on (nothing to hand over)
    reconciler.forget(body)
    assert (
        not reconciler.children._applied
        and not reconciler._locks
        and not reconciler.children._handed_over
    )


# --- children the API server rejects (#12 item 1) ----------------------------------------------

REJECTED = ApiError(
    422,
    "Unprocessable Entity",
    'Deployment.apps "qa-chain" is invalid: spec.template.spec.containers[0].resources.requests: '
    'Invalid value: "2": must be less than or equal to cpu limit of 1',
)


def refused(kube: FakeKube, reconciler: Reconciler) -> RetryLater:
    """One reconcile that must end in a retry; the retry's exception."""
    with pytest.raises(RetryLater) as caught:
        reconcile(kube, reconciler)
    return caught.value


@pytest.mark.parametrize("status", [400, 403, 422])
def test_a_rejected_child_degrades_the_app_and_the_others_are_still_applied(status: int) -> None:
    kube, reconciler = setup()
    kube.refusals[("Deployment", NAME)] = ApiError(status, "Refused", REJECTED.message)
    refused(kube, reconciler)

    degraded, ready = conditions(kube)["Degraded"], conditions(kube)["Ready"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ChildRejected")
    assert degraded["message"] == f"Deployment qa-chain: {REJECTED.message}"
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "ChildRejected",
        degraded["message"],
    )
    assert [(e["type"], e["reason"], e["message"]) for e in kube.events] == [
        ("Warning", "ChildRejected", degraded["message"])
    ]
    # The loop went on past the refused Deployment: what comes after it was applied.
    assert NAME not in kube.names("Deployment")
    assert {NAME} <= kube.names("Service") & kube.names("NetworkPolicy")
    assert {"qa-chain-chain", "qa-chain-dashboard"} <= kube.names("ConfigMap")


def test_a_refusal_message_is_redacted_in_status_events_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API server's refusal can echo the pod's args (`--source <url?signature>`)."""
    kube, reconciler = setup()
    echoed = (
        'Deployment.apps "qa-chain" is invalid: spec.template.spec.initContainers[0].args: '
        'Invalid value: ["--source", "https://user:pw@host/x?sig=abc", "token=s3cr3tv4lue"]'
    )
    kube.refusals[("Deployment", NAME)] = ApiError(422, "Unprocessable Entity", echoed)
    with caplog.at_level("DEBUG", logger="llmchain.operator"):
        error = refused(kube, reconciler)
    degraded = conditions(kube)["Degraded"]
    shown = [degraded["message"], conditions(kube)["Ready"]["message"], str(error)]
    shown += [e["message"] for e in kube.events] + [r.getMessage() for r in caplog.records]
    assert len(shown) == 5 and all("initContainers[0].args" in text for text in shown)
    for secret in ("user:pw", "sig=abc", "s3cr3tv4lue"):
        assert not [text for text in shown if secret in text], secret
    assert "https://[redacted]@host/x?[redacted]" in degraded["message"]


def test_a_rejection_is_posted_once_per_distinct_message() -> None:
    kube, reconciler = setup()
    kube.refusals[("Deployment", NAME)] = REJECTED
    refused(kube, reconciler)
    refused(kube, reconciler)  # the retry: the same refusal is no news
    assert [e["reason"] for e in kube.events] == ["ChildRejected"]

    other = 'Service "qa-chain" is invalid: spec.ports[0].port: Invalid value: 0'
    kube.refusals[("Service", NAME)] = ApiError(422, "Unprocessable Entity", other)
    refused(kube, reconciler)
    assert [e["message"] for e in kube.events] == [
        f"Deployment qa-chain: {REJECTED.message}",
        f"Service qa-chain: {other}",
    ]
    assert conditions(kube)["Degraded"]["message"] == (
        f"Deployment qa-chain: {REJECTED.message}; Service qa-chain: {other}"
    )


def test_a_rejected_child_is_retried_with_a_growing_delay_that_success_resets() -> None:
    kube, reconciler = setup()
    now = [1000.0]
    reconciler.clock = lambda: now[0]
    kube.refusals[("Deployment", NAME)] = REJECTED
    assert refused(kube, reconciler).delay == 5
    now[0] += 1
    assert refused(kube, reconciler).delay == 5  # a child's event meanwhile: no faster growth
    now[0] += 4
    delays = []
    for _ in range(8):  # each retry when the last delay is over
        delays.append(refused(kube, reconciler).delay)
        now[0] += delays[-1]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]

    del kube.refusals[("Deployment", NAME)]  # the spec was fixed
    reconcile(kube, reconciler)
    assert NAME in kube.names("Deployment")
    assert (conditions(kube)["Degraded"]["status"], conditions(kube)["Ready"]["reason"]) == (
        "False",
        "NotAvailable",
    )
    kube.refusals[("Deployment", NAME)] = REJECTED
    now[0] += 3600
    assert refused(kube, reconciler).delay == 5


def test_a_refused_app_is_logged_once_not_on_every_resync_or_child_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal is logged (and posted) once when it is new; the resync and a child's event
    that meet it again log nothing above debug, while kopf's handler keeps its back-off."""
    kube, reconciler = setup()
    kube.refusals[("Deployment", NAME)] = REJECTED
    memo = kopf.Memo(reconciler=reconciler)
    body = kube.object("LLMChainApp", NS, NAME)
    assert body is not None
    with caplog.at_level("DEBUG", logger="llmchain.operator"):
        with pytest.raises(kopf.TemporaryError) as caught:
            asyncio.run(main.reconcile_app(body=body, memo=memo))
        assert caught.value.delay == 5
        first = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(first) == 1 and REJECTED.message in first[0].getMessage()
        caplog.clear()
        child = a_child("Service", NAME, "uid-qa-chain")
        child["metadata"]["ownerReferences"][0].update(name=NAME, controller=True)
        asyncio.run(main.child_changed(child, reconciler))
        asyncio.run(main.resync(reconciler, kube.object("LLMChainApp", NS, NAME) or {}))
    assert [r.levelname for r in caplog.records if r.levelname != "DEBUG"] == []
    assert len([r for r in caplog.records if REJECTED.message in r.getMessage()]) == 2
    assert len(kube.calls_to("apply")) > 0 and len(kube.events) == 1


# --- children another owner controls (#12 item 2) ---------------------------------------------


def another_apps(kind: str, name: str, owner: str = "hc", uid: str = "") -> dict[str, Any]:
    """An object that app `owner` (of `uid`) controls, as this operator would have applied it."""
    api_version = {"Deployment": "apps/v1"}.get(kind, "v1")
    meta = {
        "name": name,
        "namespace": NS,
        "labels": {"app.kubernetes.io/instance": owner, "app.kubernetes.io/managed-by": MANAGER},
        "ownerReferences": [
            {
                "apiVersion": "llmchain.io/v1alpha1",
                "kind": "LLMChainApp",
                "name": owner,
                "uid": uid or f"uid-{owner}",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    spec = {"replicas": 3} if kind == "Deployment" else {"selector": {"app": owner}}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec}


def test_an_object_another_app_controls_is_never_applied_over() -> None:
    kube, reconciler = setup()
    theirs = kube.put(another_apps("Service", NAME))
    refused(kube, reconciler)

    assert ("apply", "Service", NS, NAME, MANAGER) not in kube.calls
    assert kube.object("Service", NS, NAME) == theirs
    degraded, ready = conditions(kube)["Degraded"], conditions(kube)["Ready"]
    message = "Service qa-chain is controlled by LLMChainApp hc, not by this app"
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "NameConflict",
        message,
    )
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert [(e["type"], e["reason"], e["message"]) for e in kube.events] == [
        ("Warning", "NameConflict", message)
    ]
    assert NAME in kube.names("Deployment")  # the other children are applied

    refused(kube, reconciler)  # the retry: no news, still not applied over
    assert len(kube.events) == 1
    assert kube.object("Service", NS, NAME) == theirs


def test_an_object_nobody_owns_and_not_labelled_as_this_apps_is_a_conflict() -> None:
    kube, reconciler = setup()
    mine = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "qa-chain-chain"}}
    mine["metadata"]["namespace"] = NS
    kept = kube.put({**mine, "data": {"chain.yaml": "someone else's"}})
    refused(kube, reconciler)
    assert kube.object("ConfigMap", NS, "qa-chain-chain") == kept
    assert conditions(kube)["Degraded"]["message"] == (
        "ConfigMap qa-chain-chain exists and is not this app's: it has no owner"
    )


def test_an_orphan_labelled_as_this_apps_child_is_adopted() -> None:
    kube, reconciler = setup()  # as after `kubectl delete lca --cascade=orphan` and a re-create
    kube.put(a_child("ConfigMap", "qa-chain-chain", owner_uid=None))
    reconcile(kube, reconciler)
    adopted = kube.object("ConfigMap", NS, "qa-chain-chain")
    assert adopted is not None and adopted["metadata"]["ownerReferences"][0]["uid"] == (
        "uid-qa-chain"
    )
    assert conditions(kube)["Degraded"]["status"] == "False"


def test_ownership_is_checked_once_then_each_apply_carries_the_childs_uid() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    checked = {(c[1], c[3]) for c in kube.calls_to("get")}
    assert {("Deployment", NAME), ("Service", NAME), ("ConfigMap", "qa-chain-chain")} <= checked
    kube.calls.clear()
    kube.applied.clear()

    reconcile(kube, reconciler)  # a resync: no GET per child
    assert kube.calls_to("get") == []
    assert kube.applied
    for _, body in kube.applied:
        current = kube.object(body["kind"], NS, body["metadata"]["name"])
        assert current is not None and body["metadata"]["uid"] == current["metadata"]["uid"]


def test_a_child_deleted_and_created_again_by_another_app_is_not_taken_over() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    kube.remove("Service", NS, NAME)
    theirs = kube.put(another_apps("Service", NAME))
    refused(kube, reconciler)
    assert kube.object("Service", NS, NAME) == theirs
    assert conditions(kube)["Degraded"]["reason"] == "NameConflict"


def test_a_deleted_child_is_created_again() -> None:
    kube, reconciler = setup()
    reconcile(kube, reconciler)
    kube.remove("Service", NS, NAME)
    reconcile(kube, reconciler)
    service = kube.object("Service", NS, NAME)
    assert service is not None
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-qa-chain"
    assert conditions(kube)["Degraded"]["status"] == "False"


def test_the_replica_hand_over_never_touches_another_apps_deployment() -> None:
    kube, reconciler = setup(set_("autoscaling", HPA))
    asyncio.run(kube.apply(another_apps("Deployment", NAME)))  # applied by the same manager
    kube.calls.clear()
    refused(kube, reconciler)
    assert [c for c in kube.calls_to("apply") if c[1] == "Deployment"] == []
    deployment = kube.object("Deployment", NS, NAME)
    assert deployment is not None and deployment["spec"] == {"replicas": 3}
    assert conditions(kube)["Degraded"]["reason"] == "NameConflict"


def test_a_deleted_app_forgets_its_children_and_its_back_off() -> None:
    kube, reconciler = setup()
    kube.refusals[("Deployment", NAME)] = REJECTED
    refused(kube, reconciler)
    body = kube.object("LLMChainApp", NS, NAME)
    assert (
        body is not None
        and reconciler.children._owned["uid-qa-chain"]
        and reconciler._refused_since
    )
    reconciler.forget(body)
    assert not reconciler.children._owned and not reconciler._refused_since


def test_a_child_of_a_deleted_app_of_the_same_name_is_taken_over() -> None:
    """`kubectl delete lca qa-chain` then `kubectl apply` again, before the garbage collector
    deleted the old children: two apps cannot share a name, so their owner is gone."""
    kube, reconciler = setup()
    kube.put(another_apps("Service", NAME, owner=NAME, uid="uid-of-the-deleted-qa-chain"))
    reconcile(kube, reconciler)
    service = kube.object("Service", NS, NAME)
    assert service is not None
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-qa-chain"
    assert conditions(kube)["Degraded"]["status"] == "False"


def test_a_refused_child_and_a_blocked_pod_are_both_named_each_event_once() -> None:
    kube, reconciler = setup()
    kube.put(a_pod("qa-chain-1", UNSCHEDULABLE))
    kube.refusals[("NetworkPolicy", NAME)] = ApiError(422, "Invalid", "spec.ingress: Invalid")
    for _ in range(3):  # the first reconcile, a retry, a resync
        refused(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["ChildRejected", "Unschedulable"]
    degraded, ready = conditions(kube)["Degraded"], conditions(kube)["Ready"]
    assert degraded["message"] == "NetworkPolicy qa-chain: spec.ingress: Invalid"
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")


def test_reconciles_of_the_same_stale_body_post_each_event_once() -> None:
    """kopf's handler reads the body before it waits for the app's lock, so a child event's
    reconcile may have written the status meanwhile: what was posted is remembered too."""
    kube, reconciler = setup()
    kube.put(a_pod("qa-chain-1", UNSCHEDULABLE))
    kube.refusals[("NetworkPolicy", NAME)] = ApiError(422, "Invalid", "spec.ingress: Invalid")
    stale = kube.object("LLMChainApp", NS, NAME)
    for _ in range(2):
        with pytest.raises(RetryLater):
            asyncio.run(reconciler.reconcile(copy.deepcopy(stale)))
    assert [e["reason"] for e in kube.events] == ["ChildRejected", "Unschedulable"]

    # Gone and back: news again.
    del kube.refusals[("NetworkPolicy", NAME)]
    asyncio.run(kube.delete("Pod", NS, "qa-chain-1"))
    ready_deployment(kube)
    reconcile(kube, reconciler)
    assert conditions(kube)["Ready"]["status"] == "True"
    kube.refusals[("NetworkPolicy", NAME)] = ApiError(422, "Invalid", "spec.ingress: Invalid")
    kube.put(a_pod("qa-chain-1", UNSCHEDULABLE))
    kube.set_status("Deployment", NS, NAME, {"observedGeneration": 1, "replicas": 1})
    refused(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["ChildRejected", "Unschedulable"] * 2

    edit(kube, set_("chain.steps", [{"name": "answer", "prompt": "Q: {{ questoin }}\nA:"}]))
    stale = kube.object("LLMChainApp", NS, NAME)
    for _ in range(2):
        asyncio.run(reconciler.reconcile(copy.deepcopy(stale)))
    assert [e["reason"] for e in kube.events][4:] == ["InvalidSpec"]


# --- the model build Job ----------------------------------------------------------------------

VOLUME = {"size": "2Gi", "accessMode": "ReadWriteMany"}


def test_a_build_job_is_created_once_and_then_only_read() -> None:
    """A Job's pod template is immutable: re-applying it with a new image (an operator upgrade)
    would be refused by the API server for as long as the Job lives."""
    kube, reconciler = setup(set_("model.volume", VOLUME))
    reconcile(kube, reconciler)
    jobs = [body for _, body in kube.applied if body["kind"] == "Job"]
    assert len(jobs) == 1
    name = jobs[0]["metadata"]["name"]
    kube.applied.clear()

    upgraded = Reconciler(kube=kube, settings=Settings(server_image="example/server:2"))  # type: ignore[arg-type]
    reconcile(kube, upgraded)
    reconcile(kube, reconciler)
    assert [body for _, body in kube.applied if body["kind"] == "Job"] == []
    job = kube.object("Job", NS, name)
    assert job is not None
    images = [c["image"] for c in job["spec"]["template"]["spec"]["containers"]]
    assert "example/server:2" not in images
    assert conditions(kube)["Degraded"]["status"] == "False"


def test_a_new_model_pvc_is_not_a_blocker_until_pending_past_the_grace() -> None:
    """The apply that creates the model PVC returns it Pending (its StorageClass, set here as
    the API server defaults it, has not provisioned it yet): no PVCPending for a healthy app."""
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    now = [created]
    kube, reconciler = setup(set_("model.volume", {**VOLUME, "storageClassName": "standard"}))
    kube.clock = reconciler.wall_clock = lambda: now[0]
    reconcile(kube, reconciler)
    assert kube.events == []
    assert conditions(kube)["ModelReady"]["reason"] == "Building"
    now[0] += datetime.timedelta(seconds=30)
    reconcile(kube, reconciler)
    assert kube.events == []
    now[0] += datetime.timedelta(seconds=31)  # still Pending a minute on: the class is stuck
    reconcile(kube, reconciler)
    assert [e["reason"] for e in kube.events] == ["PVCPending"]
    assert conditions(kube)["ModelReady"]["reason"] == "PVCPending"


def test_a_build_job_deleted_is_created_again_and_another_apps_is_never_taken() -> None:
    kube, reconciler = setup(set_("model.volume", VOLUME))
    reconcile(kube, reconciler)
    (name,) = [body["metadata"]["name"] for _, body in kube.applied if body["kind"] == "Job"]
    kube.remove("Job", NS, name)
    reconcile(kube, reconciler)
    assert kube.object("Job", NS, name) is not None

    kube.remove("Job", NS, name)
    theirs = kube.put(another_apps("Job", name))
    refused(kube, reconciler)
    assert kube.object("Job", NS, name) == theirs
    assert conditions(kube)["Degraded"]["reason"] == "NameConflict"
