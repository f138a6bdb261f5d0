"""The generated CRD on a real API server: it installs, defaults, validates and explains."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_operator.crd import build_crd
from tests.support.cluster import ROOT, Cluster

EXAMPLES = sorted((ROOT / "examples").glob("*/app.yaml"))
BASE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "01-qa-chain" / "app.yaml").read_text())
RETRIEVAL: dict[str, Any] = yaml.safe_load(
    (ROOT / "examples" / "05-docs-qa" / "app.yaml").read_text()
)["spec"]["retrieval"]


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/llmchainapps.llmchain.io", "--timeout=60s"
    )
    return cluster


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_is_accepted(crd: Cluster, namespace: str, path: Path) -> None:
    crd.kubectl("-n", namespace, "apply", "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    stored = crd.get("-n", namespace, "lca", name)
    assert stored["spec"]["serving"]["maxBatchSize"] >= 1  # defaulted or given


def test_the_api_server_applies_nested_defaults(crd: Cluster, namespace: str) -> None:
    crd.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(BASE))
    spec = crd.get("-n", namespace, "lca", "qa-chain")["spec"]
    assert spec["serving"]["replicas"] == 1
    assert spec["serving"]["terminationGracePeriodSeconds"] == 60
    assert spec["model"]["quantization"] == "int8"
    assert spec["cache"]["ttlSeconds"] == 3600
    # No image default in the schema: the operator's (LLMCHAIN_CACHE_IMAGE) applies.
    assert "image" not in spec["cache"]
    assert spec["monitoring"]["alerts"]["p99LatencySeconds"] == 5
    # Steps are one of three kinds: only what every kind has is defaulted by the API server (a
    # kind's own defaults, such as an llm step's output, come from the server's models).
    assert spec["chain"]["steps"][0]["type"] == "llm"
    assert "output" not in spec["chain"]["steps"][0]
    assert "autoscaling" not in spec


def test_printer_columns_and_short_name(crd: Cluster, namespace: str) -> None:
    crd.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(BASE))
    table = crd.kubectl("-n", namespace, "get", "lca").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "QUANTIZATION", "ENDPOINT", "AGE"]
    assert table[1].split()[:2] == ["qa-chain", "int8"]


def test_kubectl_scale_sets_serving_replicas(crd: Cluster, namespace: str) -> None:
    crd.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(BASE))
    crd.kubectl("-n", namespace, "scale", "lca/qa-chain", "--replicas=3")
    assert crd.get("-n", namespace, "lca", "qa-chain")["spec"]["serving"]["replicas"] == 3


def field_paths(schema: dict[str, Any], prefix: str) -> list[str]:
    paths = []
    for name, sub in schema.get("properties", {}).items():
        paths.append(f"{prefix}.{name}")
        inner = sub.get("items", sub)
        paths.extend(field_paths(inner, f"{prefix}.{name}"))
    return paths


def test_kubectl_explain_describes_every_spec_field(crd: Cluster) -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    paths = field_paths(spec, "llmchainapp.spec")
    assert len(paths) > 80
    for path in paths:
        out = crd.kubectl("explain", path).stdout
        assert "DESCRIPTION:" in out, path
        assert "<empty>" not in out.split("DESCRIPTION:")[1].split("FIELDS:")[0], path


Mutation = Callable[[dict[str, Any]], None]


def set_path(path: str, value: Any) -> Mutation:
    def mutate(app: dict[str, Any]) -> None:
        node = app["spec"]
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(app: dict[str, Any]) -> None:
        for m in mutations:
            m(app)

    return mutate


TOOL: dict[str, Any] = {
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    "http": {"url": "http://tools/items/{{ id }}", "allowedHosts": ["tools"]},
}

# (case, mutation, text the API server's message must contain: the field and the reason)
INVALID: list[tuple[str, Mutation, list[str]]] = [
    (
        "replicas-wrong-type",
        set_path("serving.replicas", "three"),
        ["spec.serving.replicas", "integer"],
    ),
    ("replicas-negative", set_path("serving.replicas", -1), ["spec.serving.replicas"]),
    (
        "unknown-quantization",
        set_path("model.quantization", "int3"),
        ["spec.model.quantization", "int3"],
    ),
    (
        "unknown-provider",
        set_path("model.executionProvider", "rocm"),
        ["spec.model.executionProvider", "rocm"],
    ),
    (
        "inverted-replica-bounds",
        set_path("autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        ["spec.autoscaling.minReplicas", "must not exceed maxReplicas"],
    ),
    (
        "tensorrt-without-gpu",
        set_path("model.executionProvider", "tensorrt"),
        ["spec.model.executionProvider", "need serving.gpus >= 1"],
    ),
    (
        "two-model-sources",
        set_path("model.source.pvc", {"claimName": "models"}),
        ["spec.model.source", "exactly one of url, pvc, onnx, image"],
    ),
    ("no-model-source", set_path("model.source", {}), ["spec.model.source", "exactly one"]),
    ("bad-sha256", set_path("model.source.url.sha256", "abc"), ["spec.model.source.url.sha256"]),
    (
        "oversized-prompt",
        set_path("chain.steps.0.prompt", "x" * 40000),
        ["spec.chain.steps[0].prompt", "32768"],
    ),
    (
        "duplicate-step-names",
        lambda app: app["spec"]["chain"]["steps"].append(dict(app["spec"]["chain"]["steps"][0])),
        ["spec.chain.steps", "step names must be unique"],
    ),
    (
        "step-named-like-an-input",
        set_path("chain.steps.0.name", "question"),
        ["spec.chain.steps", "name of an input"],
    ),
    (
        "output-names-no-step",
        set_path("chain.output", "nothing"),
        ["spec.chain.output", "output must name a step"],
    ),
    ("bad-input-name", set_path("chain.inputs", ["Question!"]), ["spec.chain.inputs[0]"]),
    ("no-steps", set_path("chain.steps", []), ["spec.chain.steps"]),
    (
        "temperature-too-high",
        set_path("chain.steps.0.generation.temperature", 3),
        ["spec.chain.steps[0].generation.temperature"],
    ),
    (
        "top-p-zero",
        set_path("chain.steps.0.generation.topP", 0),
        ["spec.chain.steps[0].generation.topP"],
    ),
    (
        "external-memory-without-secret",
        set_path("chain.memory", {"store": "external"}),
        ["spec.chain.memory.redisUrlSecretRef", "required with store: external"],
    ),
    (
        "keda-without-prometheus",
        set_path("autoscaling", {"engine": "keda"}),
        ["spec.autoscaling.prometheusAddress"],
    ),
    (
        "json-schema-on-text-output",
        set_path("chain.steps.0.output", {"type": "text", "jsonSchema": {"type": "object"}}),
        ["spec.chain.steps[0].output.jsonSchema", "needs type: json"],
    ),
    ("bad-quantity", set_path("cache.maxMemory", "lots"), ["spec.cache.maxMemory"]),
    (
        "unbounded-cache",
        set_path("cache.maxMemory", "0"),
        ["spec.cache.maxMemory", "at least 1Mi"],
    ),
    (
        "duplicate-input",
        set_path("chain.inputs", ["question", "question"]),
        ["spec.chain.inputs[1]", "Duplicate value"],
    ),
    (
        "zero-scrape-interval",
        set_path("monitoring.scrapeInterval", "0s"),
        ["spec.monitoring.scrapeInterval"],
    ),
    (
        "alert-for-not-a-duration",
        set_path("monitoring.alerts.forDuration", "10 minutes"),
        ["spec.monitoring.alerts.forDuration"],
    ),
    ("too-many-gpus", set_path("serving.gpus", 64), ["spec.serving.gpus"]),
    # What the API server would reject in the Deployment (#12 item 1), rejected at admission:
    (
        "cpu-requests-above-limits",
        set_path("serving.resources", {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
        ["spec.serving.resources.requests.cpu", "requests.cpu must not exceed limits.cpu"],
    ),
    (
        "memory-requests-above-limits",
        set_path("serving.resources", {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}}),
        ["spec.serving.resources.requests.memory", "must not exceed limits.memory"],
    ),
    (
        "node-selector-key-with-a-space",
        set_path("serving.nodeSelector", {"a b": "x"}),
        ["spec.serving.nodeSelector", "keys must be label keys"],
    ),
    (
        "node-selector-value-with-a-space",
        set_path("serving.nodeSelector", {"a": "x y"}),
        ["spec.serving.nodeSelector.a", "should match"],
    ),
    (
        "exists-toleration-with-a-value",
        set_path("serving.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
        ["spec.serving.tolerations[0].value", "must be empty when operator is Exists"],
    ),
    (
        "equal-toleration-without-a-key",  # Equal is the default operator
        set_path("serving.tolerations", [{"effect": "NoSchedule"}]),
        ["spec.serving.tolerations[0].operator", "must be Exists when key is empty"],
    ),
    ("unknown-field", set_path("serving.replicaz", 2), ['unknown field "spec.serving.replicaz"']),
    # Tools and tool-calling steps.
    (
        "tool-step-naming-no-tool",
        set_path("chain.steps", [{"name": "s", "type": "tool", "tool": "missing"}]),
        ["spec.chain.steps", "a tool step's tool must be one of spec.tools"],
    ),
    (
        "agent-tools-not-defined",
        both(
            set_path("tools", [TOOL]),
            set_path(
                "chain.steps", [{"name": "s", "type": "agent", "prompt": "p", "tools": ["x"]}]
            ),
        ),
        ["spec.chain.steps", "an agent step's tools must be among spec.tools"],
    ),
    (
        "retrieval-step-without-spec-retrieval",
        set_path("chain.steps", [{"name": "s", "type": "retrieval", "query": "{{ question }}"}]),
        ["spec.chain.steps", "retrieval steps need spec.retrieval"],
    ),
    (
        "documents-from-two-sources",
        set_path(
            "retrieval",
            {
                **RETRIEVAL,
                "documents": {"configMaps": [{"name": "d"}], "pvc": {"claimName": "docs"}},
            },
        ),
        ["spec.retrieval.documents", "exactly one of configMaps, pvc, url must be set"],
    ),
    (
        "documents-configmap-twice",
        set_path(
            "retrieval", {**RETRIEVAL, "documents": {"configMaps": [{"name": "d"}, {"name": "d"}]}}
        ),
        ["spec.retrieval.documents.configMaps", "must not name a ConfigMap twice"],
    ),
    (
        "chunk-overlap-too-large",
        set_path("retrieval", {**RETRIEVAL, "chunking": {"size": 64, "overlap": 32}}),
        ["spec.retrieval.chunking.overlap", "overlap must be less than half of size"],
    ),
    (
        "embedding-model-int4",
        set_path(
            "retrieval",
            {
                **RETRIEVAL,
                "embeddingModel": {**RETRIEVAL["embeddingModel"], "quantization": "int4"},
            },
        ),
        ["spec.retrieval.embeddingModel.quantization"],
    ),
    (
        "embedding-model-two-sources",
        set_path(
            "retrieval",
            {
                **RETRIEVAL,
                "embeddingModel": {
                    "source": {
                        **RETRIEVAL["embeddingModel"]["source"],
                        "pvc": {"claimName": "models"},
                    }
                },
            },
        ),
        ["spec.retrieval.embeddingModel.source", "exactly one of url, pvc, onnx, image"],
    ),
    (
        "field-of-another-step-kind",
        both(
            set_path("tools", [TOOL]),
            set_path(
                "chain.steps",
                [{"name": "s", "type": "tool", "tool": "lookup", "prompt": "p"}],
            ),
        ),
        ["spec.chain.steps[0].prompt", "prompt is a field of llm and agent steps only"],
    ),
    (
        "agent-without-tools",
        set_path("chain.steps", [{"name": "s", "type": "agent", "prompt": "p"}]),
        ["spec.chain.steps[0]", "agent steps need prompt, tools"],
    ),
    (
        "tool-names-repeated",
        set_path("tools", [TOOL, TOOL]),
        ["spec.tools", "tool names must be unique"],
    ),
    (
        "tool-host-not-a-host",
        set_path("tools", [{**TOOL, "http": {**TOOL["http"], "allowedHosts": ["http://x/"]}}]),
        ["spec.tools[0].http.allowedHosts[0]"],
    ),
    (
        "tool-url-not-http",
        set_path("tools", [{**TOOL, "http": {**TOOL["http"], "url": "file:///etc/passwd"}}]),
        ["spec.tools[0].http.url"],
    ),
    (
        "tool-timeout-too-long",
        set_path("tools", [{**TOOL, "http": {**TOOL["http"], "timeoutSeconds": 3600}}]),
        ["spec.tools[0].http.timeoutSeconds"],
    ),
    (
        "tool-secret-header-without-a-key",
        set_path(
            "tools",
            [
                {
                    **TOOL,
                    "headersFromSecrets": [
                        {"header": "Authorization", "secretKeyRef": {"name": "k"}}
                    ],
                }
            ],
        ),
        ["spec.tools[0].headersFromSecrets[0].secretKeyRef.key"],
    ),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_app_is_rejected_naming_the_field(
    crd: Cluster, namespace: str, case: str, mutate: Mutation, expected: list[str]
) -> None:
    app = copy.deepcopy(BASE)
    mutate(app)
    result = crd.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(app), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    for text in expected:
        assert text in result.stderr, f"{case}: {text!r} not in {result.stderr!r}"
    assert "NotFound" in crd.kubectl("-n", namespace, "get", "lca", "qa-chain", check=False).stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("n" * 45, "must be at most 44 characters"),
        ("h-dot.v2", "must be a DNS-1035 label"),
        ("9lives", "must be a DNS-1035 label"),
    ],
    ids=["too-long", "dot", "leading-digit"],
)
def test_a_name_the_children_cannot_carry_is_rejected(
    crd: Cluster, namespace: str, name: str, expected: str
) -> None:
    app = copy.deepcopy(BASE)
    app["metadata"]["name"] = name
    result = crd.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(app), check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_the_longest_name_is_accepted(crd: Cluster, namespace: str) -> None:
    app = copy.deepcopy(BASE)
    app["metadata"]["name"] = "n" * 44
    crd.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(app))


def test_requests_up_to_limits_in_any_unit_are_accepted(crd: Cluster, namespace: str) -> None:
    """Quantities compare by value, not as text: 500m < 1, 1024Mi == 1Gi."""
    app = copy.deepcopy(BASE)
    app["spec"]["serving"]["resources"] = {
        "requests": {"cpu": "500m", "memory": "1024Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    app["spec"]["serving"]["nodeSelector"] = {"example.com/pool": "gpu_a-1.x"}
    app["spec"]["serving"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    crd.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(app))
