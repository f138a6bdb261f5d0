"""spec.retrieval: validation, the children it renders (per-pod builds, or one Job per index
digest into the model volume), and the reconciler's reading of ConfigMaps and build reports."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llmchain_operator.api import Chunking, Documents, LLMChainApp
from llmchain_operator.builders import build_children
from llmchain_operator.builders.retrieval import (
    configmaps_digest,
    embedding_digest,
    index_digest,
    index_job_name,
)
from llmchain_operator.reconcile import Reconciler
from llmchain_operator.settings import Settings
from llmchain_operator.status import index_report
from llmchain_operator.validation import validate
from tests.support.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "05-docs-qa"
DOCS_QA: dict[str, Any] = yaml.safe_load((EXAMPLE / "app.yaml").read_text())
NS, NAME, MANAGER = "apps", "docs-qa", "llmchain-operator"
DOCS = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "heronfeed-docs", "namespace": NS},
    "data": {"a.md": "Heronfeed listens on port 7400."},
}


def app(**changes: Any) -> LLMChainApp:
    body = copy.deepcopy(DOCS_QA)
    body["metadata"]["namespace"] = NS
    for path, value in changes.items():
        node = body["spec"]
        *parents, last = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return LLMChainApp.model_validate(body)


def children(model: LLMChainApp, digest: str | None = None) -> dict[tuple[str, str], Any]:
    built = build_children(model, Settings(), documents_digest=digest)
    return {(o["kind"], o["metadata"]["name"]): o for o in built.objects}


def pod_spec(objects: dict[tuple[str, str], Any]) -> dict[str, Any]:
    spec: dict[str, Any] = objects[("Deployment", NAME)]["spec"]["template"]["spec"]
    return spec


# --- validation -------------------------------------------------------------------------------


def test_documents_need_exactly_one_source_and_distinct_configmaps() -> None:
    with pytest.raises(ValidationError, match="exactly one of configMaps, pvc, url"):
        Documents.model_validate({})
    with pytest.raises(ValidationError, match="exactly one of configMaps, pvc, url"):
        Documents.model_validate({"configMaps": [{"name": "a"}], "pvc": {"claimName": "docs"}})
    with pytest.raises(ValidationError, match="must not name a ConfigMap twice"):
        Documents.model_validate({"configMaps": [{"name": "a"}, {"name": "a"}]})


def test_chunk_overlap_must_stay_under_half_the_size() -> None:
    with pytest.raises(ValidationError, match="overlap must be less than half of size"):
        Chunking.model_validate({"size": 64, "overlap": 32})
    assert Chunking.model_validate({"size": 64, "overlap": 31}).overlap == 31


def test_retrieval_steps_need_spec_retrieval_and_the_example_has_it() -> None:
    assert validate(DOCS_QA).problems == []
    body = copy.deepcopy(DOCS_QA)
    del body["spec"]["retrieval"]
    assert validate(body).problems == [
        "spec.chain.steps[0]: retrieval steps need spec.retrieval (the embedding model and the "
        "documents to index)"
    ]


# --- children ---------------------------------------------------------------------------------


def test_without_a_model_volume_each_pod_builds_the_encoder_and_the_index() -> None:
    objects = children(app(), "sha256:" + "1" * 64)
    assert not [k for k in objects if k[0] == "Job"]
    spec = pod_spec(objects)
    names = [c["name"] for c in spec["initContainers"]]
    assert names[-3:] == ["model", "embedding-model", "index"]
    embedding, index = spec["initContainers"][-2:]
    assert embedding["args"][embedding["args"].index("--source") + 1].endswith(
        "all-MiniLM-L6-v2.zip"
    )
    assert "--report" in index["args"] and "/dev/termination-log" in index["args"]
    assert {"name": "documents-0", "mountPath": "/documents/heronfeed-docs", "readOnly": True} in (
        index["volumeMounts"]
    )
    assert {"name": "documents-0", "configMap": {"name": "heronfeed-docs"}} in spec["volumes"]
    server = spec["containers"][0]
    args = server["args"]
    out = index["args"][index["args"].index("--out") + 1]
    assert args[args.index("--index") + 1] == out
    assert args[args.index("--embedding-model-name") + 1] == "docs-qa-embeddings"
    assert {"name": "retrieval", "mountPath": "/retrieval", "readOnly": True} in (
        server["volumeMounts"]
    )


def test_with_a_model_volume_one_job_per_index_digest_builds_into_it() -> None:
    model = app(model__volume={"size": "4Gi"})
    objects = children(model, "sha256:" + "1" * 64)
    job = objects[("Job", index_job_name(model, "sha256:" + "1" * 64))]
    template = job["spec"]["template"]["spec"]
    assert [c["name"] for c in template["initContainers"]] == ["embedding-model"]
    assert [c["name"] for c in template["containers"]] == ["index"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "docs-qa-model"}} in (
        template["volumes"]
    )
    out = template["containers"][0]["args"]
    assert out[out.index("--out") + 1].startswith("/models/index-")
    spec = pod_spec(objects)
    wait = spec["initContainers"][-1]
    assert wait["args"][:3] == ["llmchain", "index", "wait"]
    assert wait["args"][wait["args"].index("--dir") + 1] == out[out.index("--out") + 1]
    assert "retrieval" not in [v["name"] for v in spec["volumes"]]
    assert not [v for v in spec["volumes"] if v["name"].startswith("documents")]


def test_the_index_digest_follows_the_corpus_chunking_and_kind_not_the_chain() -> None:
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    base = index_digest(app(), one)
    assert index_digest(app(), two) != base  # a ConfigMap's data changed
    assert index_digest(app(retrieval__chunking={"size": 128, "overlap": 16}), one) != base
    assert index_digest(app(retrieval__indexKind="ivf"), one) != base
    steps = copy.deepcopy(DOCS_QA["spec"]["chain"]["steps"])
    steps[0]["k"] = 5
    assert index_digest(app(chain__steps=steps), one) == base
    # The encoder is not rebuilt for a new corpus or chunking.
    assert embedding_digest(app(retrieval__chunking={"size": 128, "overlap": 16})) == (
        embedding_digest(app())
    )
    fp32 = app(
        retrieval__embeddingModel={
            **DOCS_QA["spec"]["retrieval"]["embeddingModel"],
            "quantization": "none",
        }
    )
    assert embedding_digest(fp32) != embedding_digest(app())


def test_configmap_digest_covers_data_and_binary_data() -> None:
    base = configmaps_digest([DOCS])
    assert configmaps_digest([{**DOCS, "data": {"a.md": "changed"}}]) != base
    assert configmaps_digest([{**DOCS, "binaryData": {"b.bin": "AA=="}}]) != base
    assert configmaps_digest(
        [{**DOCS, "metadata": {**DOCS["metadata"], "labels": {"x": "y"}}}]
    ) == (base)


def test_other_sources_mount_what_they_need() -> None:
    image = app(
        retrieval__embeddingModel={"source": {"image": {"reference": "registry/minilm:1"}}},
        retrieval__documents={"pvc": {"claimName": "manuals", "path": "/en"}},
    )
    spec = pod_spec(children(image))
    copy_step = next(c for c in spec["initContainers"] if c["name"] == "embedding-source")
    assert copy_step["image"] == "registry/minilm:1"
    index = spec["initContainers"][-1]
    assert index["args"][index["args"].index("--documents") + 1] == "/documents/en"
    assert {
        "name": "documents",
        "persistentVolumeClaim": {"claimName": "manuals", "readOnly": True},
    } in (spec["volumes"])
    onnx = app(
        retrieval__embeddingModel={"source": {"onnx": {"claimName": "built", "path": "/minilm"}}},
        retrieval__documents={"url": {"url": "https://docs.example/a.tar.gz", "sha256": "a" * 64}},
    )
    spec = pod_spec(children(onnx))
    assert "embedding-model" not in [c["name"] for c in spec["initContainers"]]
    server = spec["containers"][0]
    assert server["args"][server["args"].index("--embedding-model") + 1] == (
        "/embedding-source/minilm"
    )
    index = spec["initContainers"][-1]
    assert index["args"][index["args"].index("--documents") + 1 :][:3] == [
        "https://docs.example/a.tar.gz",
        "--sha256",
        "a" * 64,
    ]


# --- status -----------------------------------------------------------------------------------


def terminated(name: str, report: dict[str, Any], exit_code: int = 0) -> dict[str, Any]:
    message = json.dumps(report)
    return {"name": name, "state": {"terminated": {"exitCode": exit_code, "message": message}}}


def test_the_index_report_is_read_from_the_build_for_this_digest_only() -> None:
    report = {"documents": 8, "chunks": 30, "skipped": 1, "buildDigest": "sha256:new"}
    pods = [
        {
            "status": {
                "initContainerStatuses": [
                    terminated("index", {**report, "buildDigest": "sha256:old"})
                ]
            }
        },
        {"status": {"initContainerStatuses": [terminated("index", report, exit_code=1)]}},
        {"status": {"initContainerStatuses": [terminated("model", report)]}},
    ]
    assert index_report(pods, "sha256:new") is None
    pods.append({"status": {"containerStatuses": [terminated("index", report)]}})
    assert index_report(pods, "sha256:new") == report


def setup() -> tuple[FakeKube, Reconciler]:
    kube = FakeKube(field_manager=MANAGER)
    body = copy.deepcopy(DOCS_QA)
    body["metadata"].update(namespace=NS, uid="uid-docs-qa")
    kube.put(body)
    return kube, Reconciler(kube=kube, settings=Settings())  # type: ignore[arg-type]


def reconcile(kube: FakeKube, reconciler: Reconciler) -> dict[str, Any]:
    body = kube.object("LLMChainApp", NS, NAME)
    assert body is not None
    asyncio.run(reconciler.reconcile(body))
    after = kube.object("LLMChainApp", NS, NAME)
    assert after is not None
    return after


def index_arg(kube: FakeKube) -> str:
    deployment = kube.object("Deployment", NS, NAME)
    assert deployment is not None
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--index") + 1]


def test_a_missing_configmap_is_named_and_its_creation_is_awaited() -> None:
    kube, reconciler = setup()
    status = reconcile(kube, reconciler)["status"]
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["message"] == (
        "spec.retrieval.documents.configMaps[0].name: ConfigMap heronfeed-docs not found"
    )
    assert kube.object("Deployment", NS, NAME) is None
    assert reconciler.documents_users[(NS, "heronfeed-docs")] == {NAME}


def test_a_changed_configmap_rolls_a_new_index_and_the_status_reports_the_build() -> None:
    kube, reconciler = setup()
    kube.put(copy.deepcopy(DOCS))
    status = reconcile(kube, reconciler)["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["IndexReady"]["reason"] == "WaitingForPods"
    retrieval = status["retrieval"]
    assert retrieval["corpusDigest"] == configmaps_digest([DOCS])
    assert "chunks" not in retrieval
    first = index_arg(kube)

    labels = {"app.kubernetes.io/instance": NAME, "app.kubernetes.io/managed-by": MANAGER}
    report = {"documents": 1, "chunks": 2, "skipped": 0, "buildDigest": retrieval["indexDigest"]}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "docs-qa-1", "namespace": NS, "labels": labels},
        "status": {"initContainerStatuses": [terminated("index", report)]},
    }
    kube.put(pod)
    kube.set_status(
        "Deployment",
        NS,
        NAME,
        {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    )
    status = reconcile(kube, reconciler)["status"]
    assert status["retrieval"]["documents"] == 1 and status["retrieval"]["chunks"] == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["IndexReady"]["status"] == "True"
    assert conditions["Ready"]["status"] == "True"

    changed = copy.deepcopy(DOCS)
    changed["data"]["a.md"] = "Heronfeed listens on port 7500."
    kube.put(changed)
    status = reconcile(kube, reconciler)["status"]
    assert status["retrieval"]["corpusDigest"] == configmaps_digest([changed])
    assert "chunks" not in status["retrieval"]  # the old build's counts are not the new index's
    assert index_arg(kube) != first


def test_the_operators_corpus_digest_is_the_one_the_build_computes_of_the_volume(
    tmp_path: Path,
) -> None:
    """A ConfigMap volume as the kubelet lays it out: keys are links into a timestamped folder
    through `..data`; the build reads the keys and must find the digest the operator passed."""
    from llmchain_server.retrieval.documents import read_corpus

    pages = {
        **DOCS,
        "data": {"a.md": "Heronfeed listens on port 7400.", "b.md": "Ünïcode too."},
        "binaryData": {"c.txt": "cGxhaW4gdGV4dA=="},
    }
    other = {**DOCS, "metadata": {"name": "more", "namespace": NS}, "data": {"a.md": "x"}}
    for configmap, files in ((pages, {"a.md", "b.md", "c.txt"}), (other, {"a.md"})):
        folder = tmp_path / configmap["metadata"]["name"]
        data = folder / "..2026_12_07_10_00_00.1"
        data.mkdir(parents=True)
        (folder / "..data").symlink_to(data.name)
        for key, value in configmap["data"].items():
            (data / key).write_text(value)
        for key, value in configmap.get("binaryData", {}).items():
            (data / key).write_bytes(base64.b64decode(value))
        for key in files:
            (folder / key).symlink_to(f"..data/{key}")
    assert read_corpus(tmp_path).digest == configmaps_digest([pages, other])
    assert read_corpus(tmp_path).digest != configmaps_digest([pages])


def test_an_app_with_tools_lets_its_pods_download_the_encoder_and_the_documents() -> None:
    tools = yaml.safe_load((ROOT / "examples" / "04-agent-tools" / "app.yaml").read_text())
    body = copy.deepcopy(DOCS_QA)
    body["metadata"]["namespace"] = NS
    body["spec"]["tools"] = tools["spec"]["tools"]
    body["spec"]["retrieval"]["embeddingModel"]["source"]["url"]["url"] = "https://hub.test/m.zip"
    body["spec"]["retrieval"]["documents"] = {
        "url": {"url": "http://docs.test:8443/d.tar.gz", "sha256": "a" * 64}
    }
    objects = children(LLMChainApp.model_validate(body))
    [policy] = [o for k, o in objects.items() if k[0] == "NetworkPolicy" and "egress" in str(o)]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {443, 8443, 80} <= ports  # the encoder, the documents, the model
    body["spec"]["model"]["volume"] = {"size": "4Gi"}  # Jobs download: the pods need none
    objects = children(LLMChainApp.model_validate(body))
    [policy] = [o for k, o in objects.items() if k[0] == "NetworkPolicy" and "egress" in str(o)]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert not {443, 8443} & ports


def test_a_pods_failed_index_build_is_index_ready_false_and_degraded() -> None:
    kube, reconciler = setup()
    kube.put(copy.deepcopy(DOCS))
    reconcile(kube, reconciler)
    deployment = kube.object("Deployment", NS, NAME)
    assert deployment is not None
    spec = deployment["spec"]["template"]["spec"]
    index = next(c for c in spec["initContainers"] if c["name"] == "index")
    assert index["terminationMessagePolicy"] == "FallbackToLogsOnError"
    labels = {"app.kubernetes.io/instance": NAME, "app.kubernetes.io/managed-by": MANAGER}
    failed = {
        "terminated": {"exitCode": 1, "message": "[index] build: …\nError: no usable document"}
    }
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "docs-qa-1", "namespace": NS, "labels": labels},
            "spec": spec,
            "status": {
                "initContainerStatuses": [
                    {"name": "index", "state": {"waiting": {}}, "lastState": failed}
                ]
            },
        }
    )
    status = reconcile(kube, reconciler)["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["IndexReady"]["reason"] == "BuildFailed"
    assert conditions["IndexReady"]["message"].endswith("docs-qa-1: Error: no usable document")
    assert conditions["Degraded"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
