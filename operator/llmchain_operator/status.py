"""Status of an LLMChainApp from what the cluster reports: pure functions, no I/O.

Conditions follow metav1.Condition: `lastTransitionTime` only moves when `status` changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmchain_operator.blockers import Blocker, summarize

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """What reconcile saw of the app's children after applying them."""

    generation: int
    deployment: Manifest | None
    build_job: Manifest | None
    builds_in_job: bool
    desired_replicas: int
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    """What the cluster reports as blocking the app's pods and PVCs (listed only while the app
    is not Ready; see blockers.py)."""
    conflicts: list[str] = field(default_factory=list)
    """Children not applied because another owner controls an object of that name."""
    rejected: list[str] = field(default_factory=list)
    """Children the API server refused (4xx), each with its message."""
    autoscaler: Manifest | None = None
    """status.autoscaler (autoscaler_status), when the app autoscales."""
    retrieval: Manifest | None = None
    """status.retrieval (retrieval_status), when the app has retrieval."""
    index_job: Manifest | None = None
    index_in_job: bool = False
    index_failure: str | None = None
    """What a pod's failed index build says (index_failure), when each pod builds it."""


def skipped_message(skipped: list[str]) -> str:
    return "Skipped (API not installed): " + ", ".join(skipped)


def condition(type_: str, status: bool | None, reason: str, message: str) -> Manifest:
    value = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message}


def job_state(job: Manifest | None) -> str:
    if job is None:
        return "missing"
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("status") == "True" and cond["type"] in ("Complete", "Failed"):
            return str(cond["type"]).lower()
    return "running"


def _deployment_counts(deployment: Manifest | None) -> dict[str, int]:
    status = (deployment or {}).get("status", {})
    return {
        "replicas": int(status.get("replicas", 0)),
        "ready": int(status.get("readyReplicas", 0)),
        "updated": int(status.get("updatedReplicas", 0)),
        "available": int(status.get("availableReplicas", 0)),
    }


def _deployment_caught_up(deployment: Manifest | None) -> bool:
    if deployment is None:
        return False
    observed = deployment.get("status", {}).get("observedGeneration", 0)
    return bool(observed >= deployment["metadata"].get("generation", 0))


def _blocked_model(observed: Observed) -> Manifest | None:
    """ModelReady naming what blocks the build Job's pod or the model init containers."""
    blockers = [b for b in observed.blockers if b.model]
    if not blockers:
        return None
    message = "The model build is blocked: " + summarize(blockers)
    return condition("ModelReady", False, blockers[0].reason, message)


def model_condition(observed: Observed) -> Manifest:
    if not observed.builds_in_job:
        ready = _deployment_counts(observed.deployment)["ready"] > 0
        if ready:
            return condition("ModelReady", True, "BuiltInPod", "Pods built or mounted the model.")
        blocked = _blocked_model(observed)
        if blocked is not None:
            return blocked
        return condition(
            "ModelReady",
            False,
            "WaitingForPods",
            "Each pod builds or mounts the model before it starts.",
        )
    state = job_state(observed.build_job)
    if state == "complete":
        return condition("ModelReady", True, "BuildSucceeded", "The model build Job completed.")
    if state == "failed":
        return condition(
            "ModelReady", False, "BuildFailed", "The model build Job failed; see its pod logs."
        )
    blocked = _blocked_model(observed)
    if blocked is not None:
        return blocked
    return condition("ModelReady", False, "Building", "The model build Job is running.")


def index_report(pods: list[Manifest], build_digest: str) -> Manifest | None:
    """What an index build reported in its termination message (documents, chunks, skipped)
    for `build_digest`: from the build Job's pod or a server pod's `index` init container."""
    for pod in pods:
        status = pod.get("status", {})
        for container in status.get("initContainerStatuses", []) + status.get(
            "containerStatuses", []
        ):
            terminated = container.get("state", {}).get("terminated") or {}
            if container.get("name") != "index" or terminated.get("exitCode") != 0:
                continue
            try:
                report = json.loads(terminated.get("message") or "")
            except ValueError:
                continue
            if isinstance(report, dict) and report.get("buildDigest") == build_digest:
                return report
    return None


def index_failure(pods: list[Manifest], build_digest: str) -> str | None:
    """A pod whose `index` init container, building `build_digest`, failed: '<pod>: <reason>'."""
    for pod in pods:
        spec = next(
            (c for c in pod.get("spec", {}).get("initContainers", []) if c["name"] == "index"), None
        )
        if spec is None or build_digest not in spec.get("args", []):
            continue
        for container in pod.get("status", {}).get("initContainerStatuses", []):
            if container.get("name") != "index":
                continue
            for state in (container.get("state", {}), container.get("lastState", {})):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode", 0) != 0:
                    message = (terminated.get("message") or "").strip().splitlines()
                    reason = message[-1] if message else f"exit code {terminated['exitCode']}"
                    return f"{pod['metadata']['name']}: {reason}"[:1024]
    return None


def retrieval_status(digests: Manifest, report: Manifest | None) -> Manifest:
    """status.retrieval: the digests, plus the counts once a build reported them (None until
    then: a merge patch removes the counts of the index before)."""
    counts = {k: (report or {}).get(k) for k in ("documents", "chunks", "skipped")}
    return {**digests, **{k: v if isinstance(v, int) else None for k, v in counts.items()}}


def index_condition(observed: Observed) -> Manifest:
    if not observed.index_in_job:
        # The current digest's build reported, or every pod is of the current template and
        # ready (each built this index first); ready pods of the template before do not count.
        reported = (observed.retrieval or {}).get("chunks") is not None
        if reported or (_rolled_out(observed) and _deployment_counts(observed.deployment)["ready"]):
            return condition("IndexReady", True, "BuiltInPod", "Pods built the index.")
        if observed.index_failure is not None:
            return condition(
                "IndexReady",
                False,
                "BuildFailed",
                f"A pod's index build failed: {observed.index_failure}",
            )
        return condition(
            "IndexReady", False, "WaitingForPods", "Each pod builds the index before it starts."
        )
    state = job_state(observed.index_job)
    if state == "complete":
        return condition("IndexReady", True, "BuildSucceeded", "The index build Job completed.")
    if state == "failed":
        return condition(
            "IndexReady",
            False,
            "BuildFailed",
            "The index build Job failed; see its pod logs (kubectl logs job/<name>).",
        )
    return condition("IndexReady", False, "Building", "The index build Job is running.")


def _rolled_out(observed: Observed) -> bool:
    """Every pod runs the current template and enough of them are ready."""
    counts = _deployment_counts(observed.deployment)
    wanted = max(observed.desired_replicas, 1)
    return (
        _deployment_caught_up(observed.deployment)
        and counts["updated"] >= counts["replicas"]
        and (counts["ready"] >= min(wanted, max(counts["replicas"], 1)))
    )


def compute_conditions(observed: Observed) -> list[Manifest]:
    """Ready, ModelReady, IndexReady (with retrieval), Progressing, Degraded, OptionalAPIs."""
    model = model_condition(observed)
    index = index_condition(observed) if observed.retrieval is not None else None
    builds = [model, *([index] if index else [])]
    counts = _deployment_counts(observed.deployment)
    wanted = max(observed.desired_replicas, 1)
    rolled_out = _rolled_out(observed)
    conditions = list(builds)
    if observed.problems:
        message = "; ".join(observed.problems)
        conditions.append(condition("Degraded", True, "InvalidSpec", message))
        conditions.append(condition("Progressing", False, "Blocked", message))
        conditions.append(condition("Ready", False, "InvalidSpec", message))
    else:
        failed = next((c for c in builds if c["reason"] == "BuildFailed"), None)
        conditions.append(
            condition(
                "Degraded",
                failed is not None,
                "BuildFailed" if failed else "AsExpected",
                failed["message"] if failed else "No problem found.",
            )
        )
        conditions.append(
            condition(
                "Progressing",
                not rolled_out,
                "RollingOut" if not rolled_out else "RolledOut",
                f"{counts['ready']}/{wanted} replicas ready, {counts['updated']} updated.",
            )
        )
        built = all(c["status"] == "True" for c in builds)
        ready = rolled_out and built and counts["ready"] > 0
        waiting = next((c for c in builds if c["status"] != "True"), None)
        conditions.append(
            condition(
                "Ready",
                ready,
                "Available" if ready else "NotAvailable",
                f"{counts['ready']} of {wanted} replicas ready."
                if waiting is None
                else waiting["message"],
            )
        )
        if not ready and observed.blockers:  # what the cluster reports, instead
            blockers = observed.blockers
            conditions[-1] = condition("Ready", False, blockers[0].reason, summarize(blockers))
    if not observed.problems and (observed.conflicts or observed.rejected):
        conditions = _refused(conditions, observed)
    if observed.skipped:
        conditions.append(
            condition(
                "OptionalAPIs",
                False,
                "APINotInstalled",
                skipped_message(observed.skipped),
            )
        )
    else:
        conditions.append(
            condition(
                "OptionalAPIs", True, "Available", "Every optional API the spec uses is installed."
            )
        )
    return conditions


def _refused(conditions: list[Manifest], observed: Observed) -> list[Manifest]:
    """Degraded and not Ready, naming each child another owner holds or the API server
    refused; Progressing is blocked too when the server Deployment is one of them. A blocker
    the pods report keeps Ready's message (it is already not Ready, and says what else to fix)."""
    message = "; ".join([*observed.conflicts, *observed.rejected])
    reason = "NameConflict" if observed.conflicts else "ChildRejected"
    replaced = {"Degraded": condition("Degraded", True, reason, message)}
    if not observed.blockers:
        replaced["Ready"] = condition("Ready", False, reason, message)
    if observed.deployment is None:
        replaced["Progressing"] = condition("Progressing", False, "Blocked", message)
    return [replaced.get(c["type"], c) for c in conditions]


def is_ready(observed: Observed) -> bool:
    """Whether these observations make the app Ready (reconcile looks for blockers only when
    not, so a healthy app costs no extra request)."""
    ready = next(c for c in compute_conditions(observed) if c["type"] == "Ready")
    return bool(ready["status"] == "True")


def merge_conditions(
    old: list[Manifest], new: list[Manifest], now: str, generation: int
) -> list[Manifest]:
    """New conditions with lastTransitionTime kept from `old` when the status did not change."""
    previous = {c["type"]: c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        changed = before is None or before.get("status") != cond["status"]
        stamp = now if changed or before is None else before.get("lastTransitionTime", now)
        merged.append({**cond, "lastTransitionTime": stamp, "observedGeneration": generation})
    return merged


def counts_for_status(deployment: Manifest | None) -> dict[str, int | None]:
    status = (deployment or {}).get("status", {})
    counts: dict[str, int | None] = {
        "replicas": int(status.get("replicas", 0)),
        "readyReplicas": int(status.get("readyReplicas", 0)),
    }
    desired = (deployment or {}).get("spec", {}).get("replicas")
    counts["desiredReplicas"] = int(desired) if desired is not None else None
    return counts


def _condition_of(obj: Manifest | None, type_: str) -> Manifest | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == type_), None)


AUTOSCALER_FIELDS = (
    "hpa",
    "active",
    "reason",
    "message",
    "currentReplicas",
    "desiredReplicas",
    "lastScaleTime",
)


def autoscaler_status(
    engine: str, hpa: Manifest | None, scaled_object: Manifest | None = None
) -> Manifest:
    """status.autoscaler from the HPA that scales the Deployment and, for engine keda, the
    ScaledObject that owns that HPA. Active: the HPA's ScalingActive condition (hpa) or the
    ScaledObject's Active condition (keda: the trigger's metric is above its activation).
    Every field is present, None when unknown (a merge patch removes what it no longer has)."""
    status: Manifest = {"engine": engine, **dict.fromkeys(AUTOSCALER_FIELDS), "active": False}
    if hpa is not None:
        status["hpa"] = str(hpa.get("metadata", {}).get("name", ""))[:253] or None
        observed = hpa.get("status") or {}
        for field_ in ("currentReplicas", "desiredReplicas"):
            if isinstance(observed.get(field_), int):
                status[field_] = observed[field_]
        if isinstance(observed.get("lastScaleTime"), str):
            status["lastScaleTime"] = observed["lastScaleTime"]
    source = scaled_object if engine == "keda" else hpa
    condition_ = _condition_of(source, "Active" if engine == "keda" else "ScalingActive")
    if condition_ is not None:
        status["active"] = condition_.get("status") == "True"
        status["reason"] = str(condition_.get("reason") or "")[:1024] or None
        status["message"] = str(condition_.get("message") or "")[:4096] or None
    elif source is None:
        status["reason"] = "NotCreated"
        status["message"] = (
            "The ScaledObject does not exist (is the keda.sh API installed?)."
            if engine == "keda"
            else "The HorizontalPodAutoscaler does not exist yet."
        )
    else:
        status["reason"] = "NoStatus"
        status["message"] = (
            "KEDA has not reported on the ScaledObject yet (is KEDA running?)."
            if engine == "keda"
            else "The HPA controller has not reported on the HorizontalPodAutoscaler yet."
        )
    return status
