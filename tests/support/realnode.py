"""The local cluster's real node (hack/node.sh) and the images built for it (hack/images.sh), as
the tests see them: addresses, image references, pods that really run, and what exists on the
host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cluster import ROOT, TOOLBIN, Cluster, create_namespace, wait_for

NODE_SCRIPT = ROOT / "hack" / "node.sh"
NODE_NAME = "real-node-0"

# What the `restricted` Pod Security level asks of every container.
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def node_env(cluster_dir: Path | None = None) -> dict[str, str]:
    """NAME=VALUE lines of `hack/node.sh env`: the node's names and addresses."""
    out = subprocess.run(
        [str(NODE_SCRIPT), "env"], check=True, capture_output=True, text=True, env=_env(cluster_dir)
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def leftovers(cluster_dir: Path | None = None) -> str:
    """What of the node exists on the host (processes, netns, veth, route, cgroups, mounts)."""
    return subprocess.run(
        [str(NODE_SCRIPT), "leftovers"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(cluster_dir),
    ).stdout.strip()


def _env(cluster_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if cluster_dir is not None:
        env["LLMCHAIN_CLUSTER_DIR"] = str(cluster_dir)
    return env


def image(name: str) -> str:
    """The reference of an image hack/images.sh built (server, operator, redis, model, ...)."""
    refs = dict(
        line.split("=", 1)
        for line in (ROOT / ".images" / "refs.env").read_text().splitlines()
        if "=" in line
    )
    return refs[name]


def pod_manifest(
    name: str,
    command: list[str],
    *,
    image_name: str = "server",
    restart: str = "Never",
    extra: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pod that passes the restricted Pod Security level, running `command`."""
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "securityContext": RESTRICTED_POD,
        "terminationGracePeriodSeconds": 2,
        "containers": [
            {
                "name": "main",
                "image": image(image_name),
                "imagePullPolicy": "Never",
                "command": command,
                "securityContext": RESTRICTED_CONTAINER,
                **(container or {}),
            }
        ],
        **(extra or {}),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def run_pod(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], timeout: float = 120
) -> tuple[dict[str, Any], str]:
    """Create a pod that runs to completion; return it (succeeded) and its logs."""
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(manifest))
    name = manifest["metadata"]["name"]

    def finished() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get("-n", namespace, "pod", name)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout=timeout, what=f"pod {namespace}/{name} to finish")
    logs = cluster.kubectl("-n", namespace, "logs", name).stdout
    assert pod["status"]["phase"] == "Succeeded", f"{name} failed: {logs}"
    return pod, logs


def start_pod(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], timeout: float = 120
) -> dict[str, Any]:
    """Create a long-running pod and wait until it is Ready; return it."""
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(manifest))
    name = manifest["metadata"]["name"]
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", f"--timeout={timeout}s"
    )
    pod: dict[str, Any] = cluster.get("-n", namespace, "pod", name)
    return pod


class PortForward:
    """`kubectl port-forward TARGET :PORT` for the duration of a `with` block; `.url` is the
    local address."""

    def __init__(self, cluster: Cluster, namespace: str, target: str, port: int) -> None:
        self.args = [
            str(TOOLBIN / "kubectl"),
            "-n",
            namespace,
            "port-forward",
            "--address",
            "127.0.0.1",
            target,
            f":{port}",
        ]
        self.env = cluster.env
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> PortForward:
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # Forwarding from 127.0.0.1:PORT -> PORT
        if "127.0.0.1:" not in line:
            self.process.kill()
            raise AssertionError(f"port-forward failed: {line}{self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{line.split('127.0.0.1:')[1].split()[0]}"
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def sigkill_container(pod: dict[str, Any], container: str) -> int:
    """SIGKILL a container's main process from the host (a real crash, no graceful stop): its
    host PID comes from the node's containerd. Returns the PID."""
    status = next(
        s
        for s in [
            *pod["status"].get("initContainerStatuses", []),
            *pod["status"].get("containerStatuses", []),
        ]
        if s["name"] == container
    )
    container_id = status["containerID"].removeprefix("containerd://")
    tasks = subprocess.run(
        [str(NODE_SCRIPT), "ctr", "tasks", "ls"], check=True, capture_output=True, text=True
    ).stdout
    pid = next(int(line.split()[1]) for line in tasks.splitlines() if line.startswith(container_id))
    os.kill(pid, signal.SIGKILL)
    return pid


def host_path_volume(cluster: Cluster, namespace: str, claim: str, size: str = "2Gi") -> str:
    """A PersistentVolume on the real node's disk (under the node's state folder, which
    `cluster-down` removes), bound in advance to `claim`: the local cluster has no dynamic
    provisioner. Owned by uid 10001, the pods' user (hostPath ignores fsGroup). Returns its
    name."""
    folder = Path(node_env()["STATE"]) / "volumes" / f"{namespace}-{claim}"
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, 10001, 10001)
    name = f"pv-{namespace}-{claim}"[:63]
    manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"llmchain.io/test": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(folder), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return name


def restricted_namespace(cluster: Cluster, namespace: str) -> None:
    """`namespace` anew (a previous run's deleted first) for real pods, under the restricted
    Pod Security level, labelled as the tests' own."""
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true")
    create_namespace(
        cluster,
        namespace,
        fake_nodes=False,
        labels={"pod-security.kubernetes.io/enforce": "restricted", "llmchain.io/test": "true"},
    )


def pods_of(
    cluster: Cluster, namespace: str, app: str, component: str = "server"
) -> list[dict[str, Any]]:
    """The app's pods of one component: server (default), memory, model or index-build (the
    build Jobs')."""
    selector = f"app.kubernetes.io/instance={app},app.kubernetes.io/component={component}"
    pods: list[dict[str, Any]] = cluster.get("-n", namespace, "pods", "-l", selector)["items"]
    return pods


def all_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The statuses of a pod's init containers, then of its containers."""
    status = pod["status"]
    return [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
