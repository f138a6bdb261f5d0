"""The local cluster is a real one: scheduler, controllers, garbage collector, server-side apply."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap

from tests.support.cluster import CLUSTER_SCRIPT, ROOT, Cluster, wait_for

GPU_TOLERATION = "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]"


def gpu_pod(name: str, gpus: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}}}
        spec:
          {GPU_TOLERATION}
          containers:
          - name: main
            image: registry.invalid/server:1
            resources: {{limits: {{nvidia.com/gpu: {gpus}}}}}
        """)


def test_nodes_are_ready_and_two_advertise_gpus(cluster: Cluster) -> None:
    nodes = cluster.get("nodes")["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    }
    gpu_nodes = {
        n["metadata"]["name"]
        for n in nodes
        if int(n["status"]["allocatable"].get("nvidia.com/gpu", "0")) > 0
    }
    assert len(gpu_nodes) >= 2
    assert gpu_nodes <= ready


def test_deployment_rolls_out_to_ready_pods_on_kwok_nodes(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=3",
    )
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=90s")
    pods = cluster.get("-n", namespace, "pods", "-l", "app=web")["items"]
    assert len(pods) == 3
    kwok_nodes = {n["metadata"]["name"] for n in cluster.get("nodes", "-l", "type=kwok")["items"]}
    for pod in pods:
        assert pod["spec"]["nodeName"] in kwok_nodes
        assert pod["status"]["phase"] == "Running"
        assert pod["status"].get("podIP")


def test_gpu_pod_schedules_onto_a_gpu_node(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=gpu_pod("one-gpu", 1))
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", "pod/one-gpu", "--timeout=60s"
    )
    node_name = cluster.get("-n", namespace, "pod", "one-gpu")["spec"]["nodeName"]
    node = cluster.get("node", node_name)
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    cluster: Cluster, namespace: str
) -> None:
    most = max(
        int(n["status"]["allocatable"].get("nvidia.com/gpu", "0"))
        for n in cluster.get("nodes")["items"]
    )
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=gpu_pod("too-many", most + 1))

    def unschedulable() -> dict[str, str] | None:
        pod = cluster.get("-n", namespace, "pod", "too-many")
        for cond in pod["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return dict(cond)
        return None

    cond = wait_for(unschedulable, timeout=60, what="PodScheduled=False on pod too-many")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]
    pod = cluster.get("-n", namespace, "pod", "too-many")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_deleting_an_owner_garbage_collects_its_dependents(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner", "--from-literal=a=1")
    owner_uid = cluster.get("-n", namespace, "configmap", "owner")["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
        "data": {"b": "2"},
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner", "--wait=true")

    def dependent_gone() -> bool:
        result = cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for(dependent_gone, timeout=60, what="the garbage collector to delete 'dependent'")


def test_deleting_a_deployment_removes_its_replicasets_and_pods(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "deployment", "gc", "--image=registry.invalid/x:1")
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/gc", "--timeout=90s")
    assert cluster.get("-n", namespace, "replicasets", "-l", "app=gc")["items"]
    cluster.kubectl("-n", namespace, "delete", "deployment", "gc", "--cascade=background")
    wait_for(
        lambda: not cluster.get("-n", namespace, "replicasets,pods", "-l", "app=gc")["items"],
        timeout=90,
        what="ReplicaSets and Pods of deployment gc to be collected",
    )


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: {mode}}}
"""


def test_server_side_apply_tracks_the_field_manager_and_reports_conflicts(
    cluster: Cluster, namespace: str
) -> None:
    apply = ["-n", namespace, "apply", "--server-side", "-f", "-"]
    cluster.kubectl(*apply, "--field-manager=first", input=CONFIGMAP.format(mode="fast"))
    cm = cluster.get("-n", namespace, "configmap", "settings", "--show-managed-fields")
    managers = {m["manager"]: m for m in cm["metadata"]["managedFields"]}
    assert managers["first"]["operation"] == "Apply"
    assert "f:mode" in json.dumps(managers["first"]["fieldsV1"])

    conflict = cluster.kubectl(
        *apply, "--field-manager=second", input=CONFIGMAP.format(mode="slow"), check=False
    )
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower()
    assert '"first"' in conflict.stderr and ".data.mode" in conflict.stderr
    assert cluster.get("-n", namespace, "configmap", "settings")["data"]["mode"] == "fast"

    cluster.kubectl(
        *apply, "--field-manager=second", "--force-conflicts", input=CONFIGMAP.format(mode="slow")
    )
    cm = cluster.get("-n", namespace, "configmap", "settings", "--show-managed-fields")
    assert cm["data"]["mode"] == "slow"
    owners = [
        m["manager"]
        for m in cm["metadata"]["managedFields"]
        if "f:mode" in json.dumps(m.get("fieldsV1", {}))
    ]
    assert owners == ["second"]


def test_rbac_is_enforced_for_a_service_account(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    who = f"--as=system:serviceaccount:{namespace}:reader"
    assert (
        cluster.kubectl(
            "-n", namespace, "auth", "can-i", "list", "pods", who, check=False
        ).stdout.strip()
        == "no"
    )
    cluster.kubectl(
        "-n", namespace, "create", "role", "pod-reader", "--verb=list", "--resource=pods"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
    )
    assert cluster.kubectl("-n", namespace, "get", "pods", who).returncode == 0
    denied = cluster.kubectl("-n", namespace, "get", "secrets", who, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_cluster_script_is_idempotent_and_lists_its_processes(cluster: Cluster) -> None:
    again = subprocess.run(
        [str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "already running" in again.stdout
    listed = subprocess.run(
        [str(CLUSTER_SCRIPT), "processes"], capture_output=True, text=True, check=True
    ).stdout
    for component in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok-controller",
    ):
        assert re.search(rf"^{component}\s+\d+\s+running for", listed, re.M), listed


def test_make_kubeconfig_prints_only_the_path(cluster: Cluster) -> None:
    # As a user's shell runs it: not nested in another make (which adds "Entering directory").
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(
        ["make", "kubeconfig"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out == f"{cluster.kubeconfig}\n"
