"""Fixtures of the real-pod tier: the operator installed in the cluster from its image (Helm),
and the model file server examples/01 downloads from."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.model import EMBEDDING_ZIP_SHA256, GGUF_SHA256
from tests.support.realnode import image

OPERATOR_SCRIPT = ROOT / "hack" / "operator.sh"
MODEL_FILES = ROOT / "hack" / "model-files.yaml"


@pytest.fixture(scope="module")
def incluster_operator(cluster: Cluster) -> Iterator[str]:
    """A fresh `helm install` of the chart with the images built here (two replicas, one
    leading); uninstalled after the module. Yields the namespace."""
    subprocess.run([str(OPERATOR_SCRIPT), "uninstall"], check=True, timeout=300)
    subprocess.run([str(OPERATOR_SCRIPT), "install"], check=True, timeout=300)

    def leading() -> bool:
        pods = cluster.get(
            "-n", "llmchain-system", "pods", "-l", "app.kubernetes.io/instance=llmchain"
        )
        names = [
            p["metadata"]["name"]
            for p in pods["items"]
            if not p["metadata"].get("deletionTimestamp")
            and any(c.get("ready") for c in p["status"].get("containerStatuses", []))
        ]
        lease = cluster.kubectl(
            "-n",
            "llmchain-system",
            "get",
            "lease",
            "llmchain-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
            check=False,
        ).stdout
        return len(names) == 2 and any(lease.startswith(f"{n}-") for n in names)

    wait_for(leading, timeout=120, what="two operator pods, one holding the lease")
    yield "llmchain-system"
    subprocess.run([str(OPERATOR_SCRIPT), "uninstall"], check=True, timeout=300)


@pytest.fixture(scope="session")
def model_files(cluster: Cluster) -> str:
    """http://models.llmchain.local/: the GGUF and the embedding model's zip
    (all-MiniLM-L6-v2.zip), copied from the model image and checked by their sha256 by the file
    server's init container. Returns the GGUF's URL."""
    manifest = (
        MODEL_FILES.read_text()
        .replace("@MODEL_IMAGE@", image("model"))
        .replace("@SHA256@", GGUF_SHA256)
        .replace("@EMBEDDING_SHA256@", EMBEDDING_ZIP_SHA256)
    )
    cluster.kubectl("apply", "-f", "-", input=manifest)
    cluster.kubectl(
        "-n", "llmchain-hosts", "rollout", "status", "deployment/models", "--timeout=120s"
    )
    return "http://models.llmchain.local/SmolLM2-135M-Instruct.Q4_1.gguf"
