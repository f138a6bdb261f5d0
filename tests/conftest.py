"""Fixtures shared by every tier: the local cluster, a fresh namespace per test, redis-server.

Markers follow the directory (tests/unit → unit, ...), so `pytest -m unit` selects a tier too.
The cluster fixture reuses a running cluster (`make cluster-up`) and leaves it running;
a cluster it started itself is stopped at the end unless LLMCHAIN_KEEP_CLUSTER=1.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ROOT, Cluster, create_namespace, start_cluster, stop_cluster
from tests.support.model import EMBEDDING_ZIP_SHA256, GGUF_SHA256, embedding_zip, gguf_path
from tests.support.operator import OperatorProcess, install_operator_identity
from tests.support.redis import RedisServer

TIERS = ("unit", "integration", "e2e", "e2e_real")
# Short periods so tests see resyncs, lease expiry and API discovery within seconds.
OPERATOR_ENV = {
    "LLMCHAIN_RESYNC_SECONDS": "5",
    "LLMCHAIN_LEASE_SECONDS": "6",
    "LLMCHAIN_DISCOVERY_SECONDS": "5",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


def _builds(
    factory: pytest.TempPathFactory, name: str, source: Path, sha256: str
) -> Callable[[str], Path]:
    """Model folders built from `source`, one per quantization, each on first use."""
    from llmchain_server.model import build_model

    root = factory.mktemp(name)
    built: dict[str, Path] = {}

    def get(quantization: str) -> Path:
        if quantization not in built:
            out = root / quantization
            build_model(str(source), out, quantization, sha256=sha256)
            built[quantization] = out
        return built[quantization]

    return get


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Model folders built from the test GGUF, one per quantization, built on first use."""
    return _builds(tmp_path_factory, "models", gguf_path(), GGUF_SHA256)


@pytest.fixture(scope="session")
def embedding_dirs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Embedding model folders built from all-MiniLM-L6-v2's zip, one per quantization."""
    return _builds(tmp_path_factory, "embedding-models", embedding_zip(), EMBEDDING_ZIP_SHA256)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    handle, started = start_cluster()
    # A demo operator (`make demo`, local or in the cluster) would hold the leader lease and act
    # instead of the tests' own.
    subprocess.run([str(ROOT / "hack" / "operator.sh"), "stop"], check=True, timeout=60)
    subprocess.run([str(ROOT / "hack" / "operator.sh"), "uninstall"], check=True, timeout=180)
    yield handle
    if started and os.environ.get("LLMCHAIN_KEEP_CLUSTER") != "1":
        stop_cluster()


@pytest.fixture
def real_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose pods run on the real node under the `restricted` Pod Security
    level, deleted (without waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"r-{stem}-{secrets.token_hex(3)}"
    labels = {"llmchain.io/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}
    create_namespace(cluster, name, fake_nodes=False, labels=labels)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, its pods on the KWOK fake nodes, deleted (without
    waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{secrets.token_hex(3)}"
    create_namespace(cluster, name, fake_nodes=True, labels={"llmchain.io/test": "true"})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(workdir=tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One `llmchain operator` process per test module, running as its ServiceAccount; stopped
    (releasing the leader lease) before the next module, which may run the operator in the
    cluster instead."""
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        install_operator_identity(cluster, workdir), workdir, env=OPERATOR_ENV
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def app_namespace(cluster: Cluster, namespace: str) -> str:
    """A namespace where the API server enforces the restricted Pod Security Standard."""
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return namespace
