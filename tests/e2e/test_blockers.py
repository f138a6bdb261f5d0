"""What blocks an app, named in its conditions as the cluster reports it (#12 item 5b), on the
KWOK fake nodes: an unbound PVC (example 02 on a cluster with no StorageClass) and a pod the
scheduler cannot place (more GPUs than any node has). The operator runs as a local process
with its ServiceAccount (the chart's RBAC), resyncing every 5 s: pods are not watched, the
resync is what brings their state in. tests/e2e_real/test_blockers.py has the blockers that
need a kubelet (image pull back-off, crash-looping init container)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.support.apps import conditions, wait_reason
from tests.support.cluster import ROOT, Cluster
from tests.support.operator import OperatorProcess

QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
GPU_PATH = ROOT / "examples/02-gpu-autoscaled/app.yaml"


def warnings(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = cluster.get(
        "-n",
        namespace,
        "events",
        "--field-selector",
        f"involvedObject.kind=LLMChainApp,involvedObject.name={name},type=Warning",
    )["items"]
    return events


def test_an_unbound_pvc_is_named_in_model_ready_and_ready(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    """Example 02 as it is, on a cluster with no StorageClass: its model PVC stays Pending, and
    with it the build Job's pod and the server pods."""
    assert cluster.get("storageclass")["items"] == [], "this test needs no StorageClass"
    cluster.kubectl(
        "-n",
        app_namespace,
        "create",
        "secret",
        "generic",
        "support-keys",
        "--from-literal=key=not-a-real-key",
    )
    cluster.kubectl("-n", app_namespace, "apply", "-f", str(GPU_PATH))

    model = wait_reason(cluster, app_namespace, "support-chat", "ModelReady", "PVCPending")
    assert model["status"] == "False"
    assert model["message"].startswith(
        "The model build is blocked: PersistentVolumeClaim support-chat-model is Pending: it "
        "names no StorageClass, the cluster has no default one, and no PersistentVolume is "
        "bound to it"
    ), model["message"]
    # The build Job's pod, as the scheduler reports it.
    build_pod = cluster.get(
        "-n", app_namespace, "pods", "-l", "app.kubernetes.io/component=model-build"
    )["items"][0]["metadata"]["name"]
    assert f"Pod {build_pod} is unschedulable: 0/" in model["message"], model["message"]
    assert "unbound immediate PersistentVolumeClaims" in model["message"], model["message"]

    ready = conditions(cluster, app_namespace, "support-chat")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PVCPending")
    assert "PersistentVolumeClaim support-chat-model is Pending" in ready["message"]
    assert ready["message"].count("unbound immediate PersistentVolumeClaims") >= 1
    reasons = [e["reason"] for e in warnings(cluster, app_namespace, "support-chat")]
    assert "PVCPending" in reasons, reasons


def test_an_unschedulable_pod_is_named_with_the_schedulers_reason(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    """Example 01 asking for more GPUs than any node has: Ready names the pod and the
    scheduler's message; the model (built in the pods) is not reported as blocked by it."""
    app = json.loads(json.dumps(QA))
    app["spec"]["serving"]["gpus"] = 16
    cluster.kubectl("-n", app_namespace, "apply", "-f", "-", input=json.dumps(app))

    ready = wait_reason(cluster, app_namespace, "qa-chain", "Ready", "Unschedulable")
    assert ready["status"] == "False"
    pod = cluster.get("-n", app_namespace, "pods", "-l", "app.kubernetes.io/instance=qa-chain")[
        "items"
    ][0]
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert ready["message"] == (
        f"Pod {pod['metadata']['name']} is unschedulable: {scheduled['message']}"
    )
    model = conditions(cluster, app_namespace, "qa-chain")["ModelReady"]
    assert model["reason"] == "WaitingForPods", model
