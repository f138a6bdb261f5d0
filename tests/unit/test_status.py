"""Status conditions from what the cluster reports (pure functions)."""

from __future__ import annotations

from typing import Any

from llmchain_operator.blockers import Blocker
from llmchain_operator.status import (
    Observed,
    autoscaler_status,
    compute_conditions,
    counts_for_status,
    is_ready,
    merge_conditions,
)


def deployment(ready: int, replicas: int, generation: int = 1, seen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": seen,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
        },
    }


def job(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    return {"status": {"conditions": conditions}}


def by_type(observed: Observed) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in compute_conditions(observed)}


def test_ready_when_rolled_out_and_the_model_is_built() -> None:
    conds = by_type(Observed(1, deployment(2, 2), job("Complete"), True, 2))
    assert conds["Ready"]["status"] == "True"
    assert conds["ModelReady"]["reason"] == "BuildSucceeded"
    assert conds["Progressing"]["status"] == "False"
    assert conds["Degraded"]["status"] == "False"


def test_not_ready_while_the_build_job_runs() -> None:
    conds = by_type(Observed(1, deployment(0, 1), job(None), True, 1))
    assert conds["ModelReady"]["reason"] == "Building"
    assert conds["Ready"]["status"] == "False"


def test_a_failed_build_is_degraded() -> None:
    conds = by_type(Observed(1, deployment(0, 1), job("Failed"), True, 1))
    assert conds["Degraded"]["reason"] == "BuildFailed"
    assert conds["Ready"]["status"] == "False"


def test_a_deployment_behind_its_generation_is_progressing() -> None:
    conds = by_type(Observed(2, deployment(1, 1, generation=3, seen=2), None, False, 1))
    assert conds["Progressing"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"


def test_problems_make_it_degraded_and_not_ready() -> None:
    conds = by_type(Observed(1, None, None, False, 0, problems=["spec.x: bad"]))
    assert conds["Degraded"] == {
        "type": "Degraded",
        "status": "True",
        "reason": "InvalidSpec",
        "message": "spec.x: bad",
    }
    assert conds["Ready"]["status"] == "False"


def test_skipped_apis_are_named() -> None:
    conds = by_type(
        Observed(
            1, deployment(1, 1), None, False, 1, skipped=["ServiceMonitor a", "ScaledObject a"]
        )
    )
    assert conds["OptionalAPIs"]["status"] == "False"
    assert "ServiceMonitor a, ScaledObject a" in conds["OptionalAPIs"]["message"]


def test_transition_time_moves_only_when_the_status_changes() -> None:
    old = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Available",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
        {
            "type": "Degraded",
            "status": "True",
            "reason": "X",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
    ]
    new = [
        {"type": "Ready", "status": "True", "reason": "Available", "message": "2 ready"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""},
    ]
    merged = {c["type"]: c for c in merge_conditions(old, new, "2026-02-02T00:00:00Z", 7)}
    assert merged["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert merged["Degraded"]["lastTransitionTime"] == "2026-02-02T00:00:00Z"
    assert merged["Ready"]["observedGeneration"] == 7


PVC_PENDING = Blocker(
    "PVCPending", "PersistentVolumeClaim qa-model", "is Pending: it names no StorageClass", True
)
BUILD_UNSCHEDULABLE = Blocker(
    "Unschedulable", "Pod qa-model-1-x", "is unschedulable: 0/1 nodes are available", True
)
SERVER_UNSCHEDULABLE = Blocker(
    "Unschedulable", "Pod qa-1", "is unschedulable: 1 Insufficient nvidia.com/gpu", False
)


def test_a_blocked_build_is_named_in_model_ready_and_ready() -> None:
    blockers = [PVC_PENDING, BUILD_UNSCHEDULABLE, SERVER_UNSCHEDULABLE]
    conds = by_type(Observed(1, deployment(0, 1), job(None), True, 1, blockers=blockers))
    assert conds["ModelReady"] == {
        "type": "ModelReady",
        "status": "False",
        "reason": "PVCPending",
        "message": "The model build is blocked: PersistentVolumeClaim qa-model is Pending: it "
        "names no StorageClass; Pod qa-model-1-x is unschedulable: 0/1 nodes are available",
    }
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "PVCPending"
    assert conds["Ready"]["message"].endswith(
        "; Pod qa-1 is unschedulable: 1 Insufficient nvidia.com/gpu"
    )


def test_a_blocked_server_pod_is_named_in_ready_only() -> None:
    conds = by_type(
        Observed(1, deployment(0, 1), job("Complete"), True, 1, blockers=[SERVER_UNSCHEDULABLE])
    )
    assert conds["ModelReady"]["reason"] == "BuildSucceeded"
    assert conds["Ready"]["reason"] == "Unschedulable"
    assert conds["Ready"]["message"] == "Pod qa-1 is unschedulable: 1 Insufficient nvidia.com/gpu"


def test_a_blocked_model_init_container_is_named_in_model_ready() -> None:
    pull = Blocker(
        "ImagePullBackOff", "Pod qa-1", "init container model-source cannot pull m:1", True
    )
    conds = by_type(Observed(1, deployment(0, 1), None, False, 1, blockers=[pull]))
    assert conds["ModelReady"]["reason"] == "ImagePullBackOff"
    assert conds["ModelReady"]["message"] == (
        "The model build is blocked: Pod qa-1: init container model-source cannot pull m:1"
    )
    assert conds["Ready"]["reason"] == "ImagePullBackOff"


def test_a_failed_build_stays_failed_whatever_blocks_its_pods() -> None:
    conds = by_type(
        Observed(1, deployment(0, 1), job("Failed"), True, 1, blockers=[BUILD_UNSCHEDULABLE])
    )
    assert conds["ModelReady"]["reason"] == "BuildFailed"


def test_a_ready_app_ignores_blockers() -> None:
    ready = Observed(1, deployment(2, 2), job("Complete"), True, 2)
    assert is_ready(ready)
    assert not is_ready(Observed(1, deployment(0, 2), job("Complete"), True, 2))
    conds = by_type(Observed(1, deployment(2, 2), job("Complete"), True, 2, blockers=[PVC_PENDING]))
    assert conds["Ready"]["reason"] == "Available"


def test_refused_children_make_it_degraded_and_not_ready_naming_each() -> None:
    conflict = "Service hc-memory is controlled by LLMChainApp hc, not by this app"
    rejected = "Deployment hc-memory: Deployment.apps is invalid: spec.x: Invalid value"
    conds = by_type(Observed(1, None, None, False, 1, conflicts=[conflict], rejected=[rejected]))
    message = f"{conflict}; {rejected}"
    for type_, status, reason in (
        ("Degraded", "True", "NameConflict"),  # a conflict is named first
        ("Ready", "False", "NameConflict"),
        ("Progressing", "False", "Blocked"),  # the server Deployment was not applied
    ):
        assert (conds[type_]["status"], conds[type_]["reason"], conds[type_]["message"]) == (
            status,
            reason,
            message,
        )


def test_a_rejected_child_beside_a_rolled_out_deployment_leaves_progressing_alone() -> None:
    rejected = "NetworkPolicy qa: NetworkPolicy.networking.k8s.io is invalid"
    conds = by_type(Observed(1, deployment(1, 1), None, False, 1, rejected=[rejected]))
    assert (conds["Degraded"]["reason"], conds["Ready"]["status"]) == ("ChildRejected", "False")
    assert conds["Progressing"]["reason"] == "RolledOut"


KEDA_HPA = {
    "metadata": {"name": "keda-hpa-chat"},
    "status": {
        "currentReplicas": 1,
        "desiredReplicas": 3,
        "lastScaleTime": "2026-12-02T04:00:00Z",
        "conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}],
    },
}
SCALED_OBJECT = {
    "metadata": {"name": "chat"},
    "status": {
        "hpaName": "keda-hpa-chat",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "ScaledObjectReady"},
            {"type": "Active", "status": "False", "reason": "ScalerNotActive", "message": "idle"},
        ],
    },
}


def test_keda_activity_comes_from_the_scaled_object_and_counts_from_its_hpa() -> None:
    status = {
        k: v for k, v in autoscaler_status("keda", KEDA_HPA, SCALED_OBJECT).items() if v is not None
    }
    assert status == {
        "engine": "keda",
        "active": False,
        "hpa": "keda-hpa-chat",
        "currentReplicas": 1,
        "desiredReplicas": 3,
        "lastScaleTime": "2026-12-02T04:00:00Z",
        "reason": "ScalerNotActive",
        "message": "idle",
    }


def test_an_hpas_activity_is_its_scaling_active_condition() -> None:
    hpa = {**KEDA_HPA, "metadata": {"name": "chat"}}
    status = autoscaler_status("hpa", hpa)
    assert status["active"] is True and status["reason"] == "ValidMetricFound"
    assert status["hpa"] == "chat" and status["desiredReplicas"] == 3


def test_a_missing_autoscaler_is_reported_inactive_with_why() -> None:
    keda = autoscaler_status("keda", None, None)
    assert keda["active"] is False and keda["reason"] == "NotCreated"
    assert "keda.sh" in keda["message"]
    assert autoscaler_status("hpa", None)["reason"] == "NotCreated"
    # KEDA not running: the ScaledObject exists and nobody reports on it.
    silent = autoscaler_status("keda", None, {"metadata": {"name": "chat"}, "status": None})
    assert silent["reason"] == "NoStatus" and "KEDA" in silent["message"]


def test_every_autoscaler_field_is_present_so_a_merge_patch_clears_stale_ones() -> None:
    missing = autoscaler_status("keda", None, None)
    found = autoscaler_status("keda", KEDA_HPA, SCALED_OBJECT)
    assert set(missing) == set(found)
    assert missing["currentReplicas"] is None and found["reason"] == "ScalerNotActive"
    odd = {"metadata": {"name": "x"}, "status": {"conditions": ["junk", {"type": "Active"}]}}
    assert autoscaler_status("keda", {"metadata": {}, "status": None}, odd)["active"] is False


def test_status_counts_include_the_replicas_the_deployment_is_asked_for() -> None:
    deployment = {"spec": {"replicas": 3}, "status": {"replicas": 2, "readyReplicas": 1}}
    assert counts_for_status(deployment) == {
        "replicas": 2,
        "readyReplicas": 1,
        "desiredReplicas": 3,
    }
    assert counts_for_status(None) == {"replicas": 0, "readyReplicas": 0, "desiredReplicas": None}
