"""The CRD generator: crds/ is current, and the schema is structural and fully documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_operator.crd import build_crd, render_crd_yaml, structural_schema

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "llmchainapps.llmchain.io.yaml"
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "discriminator"}


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), "crds/ is stale: run `make crds`"


def test_schema_has_no_json_schema_only_keywords(root_schema: dict[str, Any]) -> None:
    for path, node in walk(root_schema):
        assert not FORBIDDEN & node.keys(), f"{path} has {FORBIDDEN & node.keys()}"


def test_every_node_has_a_type(root_schema: dict[str, Any]) -> None:
    for path, node in walk(root_schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_every_spec_and_status_field_is_documented(root_schema: dict[str, Any]) -> None:
    for part in ("spec", "status"):
        for path, node in walk(root_schema["properties"][part], part):
            if not path.endswith("[]") and not path.endswith("{}"):
                assert node.get("description"), f"{path} has no description"


def test_strings_and_lists_in_cel_rules_are_bounded(root_schema: dict[str, Any]) -> None:
    # CEL cost estimation needs bounds on what rules iterate over.
    chain = root_schema["properties"]["spec"]["properties"]["chain"]
    assert chain["properties"]["steps"]["maxItems"] == 16
    assert chain["properties"]["inputs"]["maxItems"] == 32
    assert chain["properties"]["inputs"]["items"]["maxLength"] == 63


def test_optional_fields_are_plain_optional_properties(root_schema: dict[str, Any]) -> None:
    spec = root_schema["properties"]["spec"]
    assert spec["required"] == ["model", "chain"]
    autoscaling = spec["properties"]["autoscaling"]
    assert autoscaling["type"] == "object" and "default" not in autoscaling
    serving = spec["properties"]["serving"]
    assert serving["default"] == {}
    assert serving["properties"]["replicas"] == {
        "default": 1,
        "description": serving["properties"]["replicas"]["description"],
        "maximum": 256,
        "minimum": 0,
        "type": "integer",
    }


def test_exclusive_bounds_use_openapi_v3_booleans(root_schema: dict[str, Any]) -> None:
    top_p = root_schema["properties"]["spec"]["properties"]["chain"]["properties"]["steps"][
        "items"
    ]["properties"]["generation"]["properties"]["topP"]
    assert top_p["minimum"] == 0 and top_p["exclusiveMinimum"] is True


def test_free_form_json_schema_is_preserved() -> None:
    from llmchain_server.config import OutputParser

    schema = structural_schema(OutputParser)
    assert schema["properties"]["jsonSchema"]["x-kubernetes-preserve-unknown-fields"] is True


def test_crd_names_subresources_and_columns() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["metadata"]["name"] == "llmchainapps.llmchain.io"
    assert crd["spec"]["names"]["shortNames"] == ["lca"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.serving.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "Quantization", "Endpoint", "Age"]


def test_the_charts_crd_copy_is_current() -> None:
    chart_copy = ROOT / "charts" / "llmchain-operator" / "crds" / CRD_FILE.name
    assert chart_copy.read_text() == CRD_FILE.read_text(), "chart CRD is stale: run `make crds`"
