"""What blocks an app, from pods and PVCs as the API server returns them (pure functions)."""

from __future__ import annotations

import datetime
from typing import Any

from llmchain_operator.blockers import (
    MODEL_BUILD_COMPONENT,
    MODEL_CONTAINERS,
    MODEL_PVC_COMPONENT,
    Blocker,
    crash_looping_init_containers,
    find_blockers,
    last_log_line,
    redact,
    summarize,
)
from llmchain_operator.builders import build_children
from llmchain_operator.settings import Settings
from tests.unit.test_builders import QA, app

SCHEDULER = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
    "available: 3 No preemption victims found for incoming pod."
)


def pod(
    name: str,
    component: str = "server",
    *,
    phase: str = "Pending",
    conditions: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/instance": "qa", "app.kubernetes.io/component": component},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "initContainerStatuses": init or [],
            "containerStatuses": containers or [],
        },
    }


def unscheduled(message: str = SCHEDULER) -> list[dict[str, Any]]:
    return [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]


def waiting(name: str, reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ready": False,
        "restartCount": 3,
        "state": {"waiting": {"reason": reason, "message": message}},
        **extra,
    }


def crashed(name: str, exit_code: int = 1, message: str = "") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Error"}
    if message:
        terminated["message"] = message
    return waiting(
        name,
        "CrashLoopBackOff",
        f"back-off 40s restarting failed container={name}",
        lastState={"terminated": terminated},
    )


def pvc(name: str, phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/component": MODEL_PVC_COMPONENT},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], **spec},
        "status": {"phase": phase},
    }


def test_a_claim_without_storage_class_or_volume_is_pending_for_good() -> None:
    [blocker] = find_blockers([], [pvc("qa-model")])
    assert blocker.reason == "PVCPending" and blocker.model
    assert summarize([blocker]) == (
        "PersistentVolumeClaim qa-model is Pending: it names no StorageClass, the cluster has no "
        "default one, and no PersistentVolume is bound to it"
    )


def test_a_pending_claim_names_its_class_and_provisioner() -> None:
    waiting_class = pvc("qa-model", storageClassName="fast")
    [blocker] = find_blockers([], [waiting_class])
    assert blocker.problem == "is Pending: StorageClass fast has not bound a volume to it"
    waiting_class["metadata"]["annotations"] = {
        "volume.kubernetes.io/storage-provisioner": "csi.example.org"
    }
    [blocker] = find_blockers([], [waiting_class])
    assert "waiting for provisioner csi.example.org (StorageClass fast)" in blocker.problem
    assert find_blockers([], [pvc("qa-model", phase="Bound", storageClassName="fast")]) == []


CREATED = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_a_claim_with_a_class_is_named_only_once_pending_past_the_grace() -> None:
    """A new claim is Pending until its provisioner binds it (the apply that creates it always
    returns it Pending): only one Pending past the grace is a blocker."""
    claim = pvc("qa-model", storageClassName="fast")
    claim["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    for seconds in (0, 30, 60):
        now = CREATED + datetime.timedelta(seconds=seconds)
        assert find_blockers([], [claim], now=now) == [], seconds
    [blocker] = find_blockers([], [claim], now=CREATED + datetime.timedelta(seconds=61))
    assert blocker.problem == "is Pending: StorageClass fast has not bound a volume to it"
    # No StorageClass and no volume: nothing will bind it, so it is named at once.
    del claim["spec"]["storageClassName"]
    [blocker] = find_blockers([], [claim], now=CREATED)
    assert "names no StorageClass" in blocker.problem


def test_an_unschedulable_pod_carries_the_schedulers_message() -> None:
    [blocker] = find_blockers([pod("qa-1", conditions=unscheduled())])
    assert blocker.reason == "Unschedulable" and not blocker.model
    assert summarize([blocker]) == f"Pod qa-1 is unschedulable: {SCHEDULER}"


def test_the_build_jobs_pod_blocks_the_model() -> None:
    [blocker] = find_blockers(
        [pod("qa-model-abc-x", MODEL_BUILD_COMPONENT, conditions=unscheduled())]
    )
    assert blocker.model


PULL_ERROR = (
    'failed to pull and unpack image "localhost/llmchain/absent:0": failed to resolve '
    "reference: dial tcp 127.0.0.1:443: connect: connection refused"
)


def test_an_image_pull_back_off_names_the_image_and_the_kubelets_message() -> None:
    message = f'Back-off pulling image "localhost/llmchain/absent:0": ErrImagePull: {PULL_ERROR}'
    source = waiting(
        "model-source", "ImagePullBackOff", message, image="localhost/llmchain/absent:0"
    )
    [blocker] = find_blockers([pod("qa-1", init=[source])])
    assert blocker.reason == "ImagePullBackOff" and blocker.model
    assert summarize([blocker]) == (
        "Pod qa-1: init container model-source cannot pull image localhost/llmchain/absent:0: "
        + PULL_ERROR
    )
    # Between back-offs the kubelet says ErrImagePull with the bare error: the same message.
    source = waiting(
        "model-source", "ErrImagePull", PULL_ERROR, image="localhost/llmchain/absent:0"
    )
    assert find_blockers([pod("qa-1", init=[source])]) == [blocker]
    server = waiting("server", "InvalidImageName", "bad", image="server::x")
    [blocker] = find_blockers([pod("qa-2", containers=[server])])
    assert blocker.reason == "ImagePullBackOff" and not blocker.model
    assert blocker.problem == "container server cannot pull image server::x (InvalidImageName): bad"


def test_a_crash_looping_init_container_shows_its_last_log_line() -> None:
    pods = [pod("qa-1", init=[crashed("model")])]
    assert crash_looping_init_containers(pods) == [("qa-1", "model", True)]
    log = "fetching\nError: cannot download http://models.local/absent.gguf: HTTP 404 Not Found\n"
    [blocker] = find_blockers(pods, logs={("qa-1", "model"): log})
    assert blocker.reason == "CrashLoopBackOff" and blocker.model
    assert summarize([blocker]) == (
        "Pod qa-1: init container model is crash-looping (exit code 1): "
        "Error: cannot download http://models.local/absent.gguf: HTTP 404 Not Found"
    )


def test_an_init_container_reported_terminated_through_its_back_off_is_crash_looping() -> None:
    """Beside a sidecar init container (restartPolicy Always), the kubelet (v1.36 on the real
    node) reports a failed init container as `terminated` through its back-off, never as
    `waiting: CrashLoopBackOff`; it had been restarted 4 times when this was seen."""
    sidecar = {"name": "cache", "restartCount": 0, "state": {"running": {}}}
    failed = {"exitCode": 1, "reason": "Error"}
    model = {
        "name": "model",
        "restartCount": 4,
        "state": {"terminated": failed},
        "lastState": {"terminated": failed},
    }
    pods = [pod("qa-1", init=[sidecar, model])]
    assert crash_looping_init_containers(pods) == [("qa-1", "model", False)]
    log = "Error: cannot download http://models.local/absent.gguf: HTTP 404 Not Found\n"
    [blocker] = find_blockers(pods, logs={("qa-1", "model"): log})
    assert blocker.reason == "CrashLoopBackOff" and blocker.model
    assert blocker.problem == (
        "init container model is crash-looping (exit code 1): "
        "Error: cannot download http://models.local/absent.gguf: HTTP 404 Not Found"
    )
    # The kubelet's answer when that run's log is gone is no log line.
    gone = "unable to retrieve container logs for containerd://c024f7560abd"
    [blocker] = find_blockers(pods, logs={("qa-1", "model"): gone})
    assert blocker.problem == "init container model is crash-looping (exit code 1)"
    # Its first failure, before any restart, is not a loop yet; an exit code 0 is no failure.
    first = {**model, "restartCount": 0}
    done = {**model, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert find_blockers([pod("qa-1", init=[sidecar, first])]) == []
    assert find_blockers([pod("qa-1", init=[sidecar, done])]) == []


def test_a_termination_message_is_used_and_no_log_is_read() -> None:
    pods = [pod("qa-1", init=[crashed("model", 2, "checksum mismatch")])]
    assert crash_looping_init_containers(pods) == []
    [blocker] = find_blockers(pods)
    assert blocker.problem.endswith("(exit code 2): checksum mismatch")


def test_a_crash_looping_server_is_named_without_reading_its_log() -> None:
    pods = [pod("qa-1", phase="Running", containers=[crashed("server", 137)])]
    assert crash_looping_init_containers(pods) == []
    [blocker] = find_blockers(pods)
    assert blocker.problem == "container server is crash-looping (exit code 137)"
    assert not blocker.model


def test_a_missing_config_is_a_container_that_cannot_start() -> None:
    config = waiting("server", "CreateContainerConfigError", 'secret "keys" not found')
    [blocker] = find_blockers([pod("qa-1", containers=[config])])
    assert blocker.reason == "ContainerCannotStart"
    assert (
        blocker.problem
        == 'container server cannot start (CreateContainerConfigError): secret "keys" not found'
    )


def test_healthy_deleted_and_finished_pods_block_nothing() -> None:
    running = {"name": "server", "ready": True, "state": {"running": {}}}
    pods = [
        pod("qa-1", phase="Running", containers=[running]),
        pod("qa-2", conditions=unscheduled(), deleting=True),
        pod("qa-model-x", MODEL_BUILD_COMPONENT, phase="Failed", init=[crashed("model")]),
        pod("qa-3", containers=[waiting("server", "ContainerCreating")]),
    ]
    assert find_blockers(pods) == []
    assert crash_looping_init_containers(pods) == []


def test_causes_come_first_and_like_pods_are_grouped() -> None:
    pods = [pod(f"qa-{i}", conditions=unscheduled()) for i in range(5)]
    blockers = find_blockers(pods, [pvc("qa-model")])
    assert [b.reason for b in blockers] == ["PVCPending"] + ["Unschedulable"] * 5
    message = summarize(blockers)
    assert message.endswith(f"; Pods qa-0, qa-1, qa-2 and 2 more are unschedulable: {SCHEDULER}")


def test_a_long_list_is_counted_not_spelled_out() -> None:
    blockers = [
        Blocker("Unschedulable", f"Pod p{i}", f"is unschedulable: reason {i}") for i in range(9)
    ]
    message = summarize(blockers)
    assert message.count("unschedulable") == 5 and message.endswith("; and 4 more")


def test_a_cluster_message_is_cut() -> None:
    [blocker] = find_blockers([pod("qa-1", conditions=unscheduled("x" * 5000))])
    assert len(blocker.problem) < 400


def test_log_lines_are_redacted_and_bounded() -> None:
    assert redact("GET https://user:hunter2@host/m.gguf?sig=abc&token=xyz failed") == (
        "GET https://[redacted]@host/m.gguf?[redacted] failed"
    )
    assert redact("password=hunter2 api_key: abc123 TOKEN=zz") == (
        "password=[redacted] api_key: [redacted] TOKEN=[redacted]"
    )
    assert redact("Authorization: Bearer eyJhbGciOi.x") == "Authorization: Bearer [redacted]"
    assert redact("a basic check failed") == "a basic check failed"
    assert redact("key AKIAIOSFODNN7EXAMPLEaB1cD2eF3gH") == "key [redacted]"
    digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    kept = f"checksum mismatch: expected sha256 {digest}, got {digest}"
    assert redact(kept) == kept
    assert redact("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert last_log_line("first\n\x1b[31mError: x" + "y" * 500 + "\n\n").startswith("Error: xyy")
    assert len(last_log_line("y" * 5000)) <= 200
    assert last_log_line("\n \n") == ""


def test_the_names_are_the_ones_the_builders_give() -> None:
    """MODEL_* against what the builders make: a build Job (URL source on a volume) and pods that
    build the model themselves from an image source."""
    in_job = build_children(app(QA, model__volume={"size": "2Gi"}), Settings()).objects
    job = next(o for o in in_job if o["kind"] == "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == MODEL_BUILD_COMPONENT
    claim = next(o for o in in_job if o["kind"] == "PersistentVolumeClaim")
    assert claim["metadata"]["labels"]["app.kubernetes.io/component"] == MODEL_PVC_COMPONENT
    image_source = {"image": {"reference": "registry.local/m:1", "path": "/m.gguf"}}
    in_pod = build_children(app(QA, model__source=image_source), Settings()).objects
    deployment = next(o for o in in_pod if o["kind"] == "Deployment")
    init = {c["name"] for c in deployment["spec"]["template"]["spec"]["initContainers"]}
    assert init - {"cache"} == MODEL_CONTAINERS
