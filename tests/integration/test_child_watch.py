"""The operator's watch of its children against the real API server: filtered by label on the
server, metadata only, objects already there not reported, and resumed after a watch request
ends."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import kubernetes
import pytest

from llmchain_operator import kube as kube_module
from llmchain_operator.kube import Kube
from tests.support.cluster import Cluster

SELECTOR = "app.kubernetes.io/managed-by=llmchain-operator"


def config_map(namespace: str, name: str, managed: bool) -> str:
    labels = "{app.kubernetes.io/managed-by: llmchain-operator}" if managed else "{}"
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}, "
        f"labels: {labels}}}\ndata: {{secret-looking: value}}\n"
    )


async def watch_while(
    kube: Kube, namespace: str, action: Any, until: Any, timeout: float = 60
) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    task = asyncio.create_task(
        kube.watch("ConfigMap", namespace, SELECTOR, lambda t, o: seen.append((t, o)))
    )
    try:
        await asyncio.sleep(1.5)  # the watch has listed and is watching
        await asyncio.to_thread(action)
        deadline = time.monotonic() + timeout
        while not until(seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # anything else that would arrive
    finally:
        task.cancel()
    return seen


@pytest.fixture
def kube(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    return Kube(field_manager="test-watch")


def test_only_managed_children_arrive_with_their_metadata_only(
    cluster: Cluster, namespace: str, kube: Kube
) -> None:
    cluster.kubectl("apply", "-f", "-", input=config_map(namespace, "there-before", True))

    def act() -> None:
        cluster.kubectl("apply", "-f", "-", input=config_map(namespace, "unmanaged", False))
        cluster.kubectl("apply", "-f", "-", input=config_map(namespace, "managed", True))
        cluster.kubectl("-n", namespace, "delete", "configmap", "managed")

    seen = asyncio.run(
        watch_while(kube, namespace, act, lambda s: any(t == "DELETED" for t, _ in s))
    )
    assert [(t, o["metadata"]["name"]) for t, o in seen] == [
        ("ADDED", "managed"),
        ("DELETED", "managed"),
    ]
    for _, obj in seen:
        assert obj["kind"] == "PartialObjectMetadata"
        assert "data" not in obj
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmchain-operator"


def test_the_watch_resumes_when_the_server_ends_a_request(
    cluster: Cluster, namespace: str, kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_module, "WATCH_SECONDS", 1)  # each request ends after a second

    def act() -> None:
        for i in range(3):
            cluster.kubectl("apply", "-f", "-", input=config_map(namespace, f"cm-{i}", True))
            time.sleep(1.5)

    seen = asyncio.run(watch_while(kube, namespace, act, lambda s: len(s) >= 3))
    assert [(t, o["metadata"]["name"]) for t, o in seen] == [
        ("ADDED", "cm-0"),
        ("ADDED", "cm-1"),
        ("ADDED", "cm-2"),
    ]


def test_a_kind_whose_api_is_missing_is_retried_quietly(
    kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ScaledObject and friends may not be installed: the watch neither raises nor spins."""
    missing = "/apis/keda.sh/v1alpha1/namespaces/default/notinstalledkinds"
    monkeypatch.setattr(kube_module, "_path", lambda *_args, **_kw: missing)
    calls: list[str] = []
    original = kube._call

    def counting(method: str, path: str, **kwargs: Any) -> Any:
        calls.append(path)
        return original(method, path, **kwargs)

    monkeypatch.setattr(kube, "_call", counting)

    async def run() -> None:
        task = asyncio.create_task(kube.watch("ScaledObject", "default", SELECTOR, print))
        await asyncio.sleep(3)
        assert not task.done()
        task.cancel()

    asyncio.run(run())
    assert calls == [missing]  # one list, then a 30 s back-off
