"""examples/05-docs-qa as real pods on the real node, applied with kustomize as a user would: each
pod builds the embedding model (from the zip the in-cluster file server serves) and the index of
the ConfigMap's pages in its init containers; the chain answers with its sources; an edit of the
ConfigMap re-indexes and rolls the pods with no change to the app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster
from tests.support.realnode import (
    PortForward,
    all_statuses,
    host_path_volume,
    image,
    pods_of,
    restricted_namespace,
)
from tests.support.waiting import wait_for

EXAMPLE = ROOT / "examples" / "05-docs-qa"
PAGES = sorted(p.name for p in (EXAMPLE / "docs").iterdir())


@pytest.fixture(scope="module")
def docs_qa(cluster: Cluster, incluster_operator: str, model_files: str) -> Iterator[str]:
    """The example, unchanged, in a restricted namespace; Ready. Yields the namespace."""
    namespace = "real-docs-qa"
    restricted_namespace(cluster, namespace)
    cluster.kubectl("-n", namespace, "apply", "-k", str(EXAMPLE))
    wait_condition(cluster, namespace, "docs-qa", "Ready", "True", timeout=420)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def ask(forward: PortForward, question: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{forward.url}/v1/chains/docs-qa/invoke",
        json={"input": {"question": question}},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_each_pod_built_the_encoder_and_the_index_and_the_status_counts_them(
    cluster: Cluster, docs_qa: str
) -> None:
    (pod,) = pods_of(cluster, docs_qa, "docs-qa")
    init = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    for name in ("model", "embedding-model", "index"):
        assert init[name]["state"]["terminated"]["exitCode"] == 0, init[name]
    log = cluster.kubectl("-n", docs_qa, "logs", pod["metadata"]["name"], "-c", "index").stdout
    assert f"{len(PAGES)} documents" in log, log
    status = cluster.get("-n", docs_qa, "lca", "docs-qa")["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["IndexReady"]["status"] == "True"
    retrieval = status["retrieval"]
    assert retrieval["documents"] == len(PAGES)
    assert retrieval["chunks"] > len(PAGES)
    assert retrieval["skipped"] == 0


def test_the_chain_answers_with_its_sources_and_embeddings_are_served(
    cluster: Cluster, docs_qa: str
) -> None:
    with PortForward(cluster, docs_qa, "service/docs-qa", 80) as forward:
        answer = ask(forward, "On which port are the Prometheus metrics served?")
        sources = [s["source"] for s in answer["metadata"]["sources"]]
        assert "heronfeed-docs/monitoring.md" in sources, answer
        client = openai.OpenAI(base_url=f"{forward.url}/v1", api_key="unused", max_retries=0)
        models = {m.id for m in client.models.list().data}
        assert "docs-qa-embeddings" in models, models
        vectors = client.embeddings.create(
            model="docs-qa-embeddings", input=["event router", "consumer lag"]
        )
        assert [len(v.embedding) for v in vectors.data] == [384, 384]


def test_an_edited_configmap_is_indexed_by_new_pods(cluster: Cluster, docs_qa: str) -> None:
    before = cluster.get("-n", docs_qa, "lca", "docs-qa")
    old_pods = {p["metadata"]["name"] for p in pods_of(cluster, docs_qa, "docs-qa")}
    page = "# Mascot\n\nHeronfeed's mascot is a grey heron called Wilhelmina.\n"
    patch = {"data": {"mascot.md": page}}
    cluster.kubectl(
        "-n",
        docs_qa,
        "patch",
        "configmap",
        "heronfeed-docs",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )

    def reindexed() -> bool:
        status = cluster.get("-n", docs_qa, "lca", "docs-qa")["status"]
        ready = {c["type"]: c["status"] for c in status["conditions"]}.get("Ready") == "True"
        return ready and status["retrieval"].get("documents") == len(PAGES) + 1

    wait_for(reindexed, timeout=420, what="the new page indexed by new pods")
    after = cluster.get("-n", docs_qa, "lca", "docs-qa")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert (
        after["status"]["retrieval"]["indexDigest"] != before["status"]["retrieval"]["indexDigest"]
    )
    serving = [
        p for p in pods_of(cluster, docs_qa, "docs-qa") if "deletionTimestamp" not in p["metadata"]
    ]
    assert not {p["metadata"]["name"] for p in serving} & old_pods  # the old ones are going
    with PortForward(cluster, docs_qa, "service/docs-qa", 80) as forward:
        answer = ask(forward, "What is the name of Heronfeed's mascot?")
    sources = [s["source"] for s in answer["metadata"]["sources"]]
    assert "heronfeed-docs/mascot.md" in sources, answer


def test_with_a_model_volume_one_job_builds_the_index_for_every_replica(
    cluster: Cluster, docs_qa: str
) -> None:
    """spec.model.volume: one Job per index digest builds the embedding model (here copied out of
    the model image) and the index into the volume; both replicas wait for it, build nothing."""
    app = yaml.safe_load((EXAMPLE / "app.yaml").read_text())
    app["metadata"]["name"] = "docs-on-volume"
    app["spec"]["model"]["volume"] = {"size": "1Gi", "accessMode": "ReadWriteOnce"}
    app["spec"]["retrieval"]["embeddingModel"]["source"] = {
        "image": {"reference": image("model"), "path": "/embedding/all-MiniLM-L6-v2.zip"}
    }
    app["spec"]["serving"] = {
        "replicas": 2,
        "resources": {"requests": {"cpu": "100m", "memory": "768Mi"}, "limits": {"memory": "2Gi"}},
    }
    pv = host_path_volume(cluster, docs_qa, "docs-on-volume-model")
    try:
        cluster.kubectl("-n", docs_qa, "apply", "-f", "-", input=yaml.safe_dump(app))
        wait_condition(cluster, docs_qa, "docs-on-volume", "Ready", "True", timeout=420)
        selector = "app.kubernetes.io/instance=docs-on-volume,app.kubernetes.io/component="
        (job,) = cluster.get("-n", docs_qa, "jobs", "-l", selector + "index-build")["items"]
        assert job["status"].get("succeeded") == 1
        (builder,) = pods_of(cluster, docs_qa, "docs-on-volume", "index-build")
        steps = {s["name"]: s for s in all_statuses(builder)}
        assert set(steps) == {"embedding-source", "embedding-model", "index"}
        assert all(s["state"]["terminated"]["exitCode"] == 0 for s in steps.values()), steps
        pods = cluster.get("-n", docs_qa, "pods", "-l", selector + "server")["items"]
        assert len(pods) == 2
        for pod in pods:
            index = next(c for c in pod["spec"]["initContainers"] if c["name"] == "index")
            assert index["args"][:3] == ["llmchain", "index", "wait"]
            assert "embedding-model" not in [c["name"] for c in pod["spec"]["initContainers"]]
        status = cluster.get("-n", docs_qa, "lca", "docs-on-volume")["status"]
        assert {c["type"]: c for c in status["conditions"]}["IndexReady"]["reason"] == (
            "BuildSucceeded"
        )
        pages = cluster.get("-n", docs_qa, "configmap", "heronfeed-docs")["data"]
        assert status["retrieval"]["documents"] == len(pages)
        with PortForward(cluster, docs_qa, "service/docs-on-volume", 80) as forward:
            reply = httpx.post(
                f"{forward.url}/v1/chains/docs-on-volume/invoke",
                json={"input": {"question": "How often should the CA be rotated?"}},
                timeout=120,
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["metadata"]["sources"], reply.text
    finally:
        cluster.kubectl(
            "-n", docs_qa, "delete", "lca", "docs-on-volume", "--wait=true", check=False
        )
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
