"""The local cluster (hack/cluster.sh) as the tests see it: a kubeconfig and a kubectl runner."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for as wait_for  # re-exported for callers

ROOT = Path(__file__).resolve().parents[2]
TOOLBIN = ROOT / ".toolchain" / "bin"
CLUSTER_SCRIPT = ROOT / "hack" / "cluster.sh"


class CommandError(AssertionError):
    """A command the test expected to succeed failed; carries its output."""


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    @property
    def env(self) -> dict[str, str]:
        path = f"{TOOLBIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def run(
        self, args: Sequence[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a toolchain command (kubectl, helm, ...) against this cluster."""
        result = subprocess.run(
            [str(TOOLBIN / args[0]), *args[1:]],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise CommandError(
                f"{' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["kubectl", *args], input=input, check=check)

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def start_cluster() -> tuple[Cluster, bool]:
    """Bring the cluster up, or reuse a running one; the flag says whether this call started it."""
    was_running = (
        subprocess.run([str(CLUSTER_SCRIPT), "status"], capture_output=True).returncode == 0
    )
    if not was_running:
        subprocess.run([str(CLUSTER_SCRIPT), "up"], check=True, timeout=900)
    path = subprocess.run(
        [str(CLUSTER_SCRIPT), "kubeconfig"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Cluster(Path(path)), not was_running


def stop_cluster() -> None:
    subprocess.run([str(CLUSTER_SCRIPT), "down"], check=True, timeout=300)


# Pods of a namespace created with these annotations go to the KWOK fake nodes only (the
# PodNodeSelector and PodTolerationRestriction admission plugins add the selector and the
# toleration to every pod): fake pods turn Ready without running, for tests of what the operator
# renders, GPU scheduling and scale. Other namespaces' pods run on the real node.
FAKE_NODES_TAINT = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
FAKE_NODES_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps([FAKE_NODES_TAINT]),
}


def create_namespace(
    cluster: Cluster, name: str, *, fake_nodes: bool, labels: dict[str, str] | None = None
) -> None:
    """Create namespace `name`; with fake_nodes, its pods are scheduled onto KWOK nodes only."""
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if fake_nodes:
        metadata["annotations"] = FAKE_NODES_ANNOTATIONS
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
