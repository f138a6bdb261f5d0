"""One validation, worded once: the webhook, `llmchain render` and validate() itself describe
a mistake with the same field path (the reconciler's condition: tests/unit/test_reconcile.py)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest
import yaml

from llmchain_operator import main
from llmchain_operator.api import MAX_NAME_LENGTH
from llmchain_operator.builders import build_children
from llmchain_operator.render import RenderError, render
from llmchain_operator.settings import Settings
from llmchain_operator.validation import field_path, validate
from tests.unit.test_builders import GPU, QA, app


def broken(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(QA)
    body["metadata"]["namespace"] = "apps"
    steps = body["spec"]["chain"]["steps"]
    steps.append({**steps[0], **changes})
    return body


def with_step(step: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(QA)
    body["metadata"]["namespace"] = "apps"
    body["spec"]["chain"]["steps"].append(step)
    return body


MISTAKES = [
    (broken(name="Second Step"), "spec.chain.steps[1].name: String should match pattern"),
    (broken(name="second", prompt="{{ nowhere }}"), "spec.chain.steps[1].prompt: uses undeclared"),
    (
        broken(name="second", generation={"maxTokens": 0}),
        "spec.chain.steps[1].generation.maxTokens",
    ),
    (
        with_step({"name": "second", "type": "retrieval", "query": "{{ question }}"}),
        "spec.chain.steps[1]: retrieval steps need spec.retrieval",
    ),
]


def test_field_paths_use_brackets_for_list_items() -> None:
    assert field_path(("spec", "chain", "steps", 0, "name")) == "spec.chain.steps[0].name"
    assert field_path(()) == "(the resource)"


@pytest.mark.parametrize(
    ("body", "expected"), MISTAKES, ids=["schema", "template", "bound", "retrieval"]
)
def test_validate_render_and_the_webhook_word_a_mistake_alike(
    body: dict[str, Any], expected: str
) -> None:
    problems = validate(body).problems
    assert len(problems) == 1 and problems[0].startswith(expected), problems

    with pytest.raises(RenderError) as rendered:
        render(yaml.safe_dump(body), Settings())
    assert problems[0] in str(rendered.value)

    with pytest.raises(kopf.AdmissionError) as admitted:
        asyncio.run(main.validate_app(body=body))  # type: ignore[arg-type]
    assert str(admitted.value) == problems[0]


def test_a_valid_app_has_no_problems() -> None:
    validated = validate(QA)
    assert validated.app is not None and validated.problems == []


def test_a_key_beside_the_resource_fields_is_a_mistake() -> None:
    body = copy.deepcopy(QA)
    body["sepc"] = body["spec"]  # a typo'd second spec in a file given to render
    assert validate(body).problems == ["sepc: not a field of the resource"]
    with pytest.raises(RenderError, match="sepc: not a field of the resource"):
        render(yaml.safe_dump(body), Settings())


def test_a_stored_object_s_status_is_not_the_user_s_mistake() -> None:
    body = {**copy.deepcopy(QA), "status": {"conditions": []}}
    assert validate(body).problems == []


def test_a_missing_api_version_takes_the_default() -> None:
    body = copy.deepcopy(QA)
    del body["apiVersion"]
    assert validate(body).problems == []


def named(name: str) -> dict[str, Any]:
    body = copy.deepcopy(QA)
    body["metadata"]["name"] = name
    return body


def test_names_the_children_cannot_carry_are_problems() -> None:
    assert validate(named("n" * 44)).problems == []
    assert "must be at most 44 characters" in validate(named("n" * 45)).problems[0]
    assert "DNS-1035" in validate(named("h-dot.v2")).problems[0]


def test_the_longest_name_gives_children_names_kubernetes_accepts() -> None:
    """Every child of the longest name, with everything on (memory, KEDA, monitoring, a build
    Job: the longest suffix), has a name and label values of at most 63 characters."""
    longest = copy.deepcopy(GPU)
    longest["metadata"]["name"] = "n" * MAX_NAME_LENGTH
    children = build_children(app(longest, model__volume={"size": "2Gi"}), Settings()).objects
    assert any(o["kind"] == "Job" for o in children)
    for obj in children:
        meta = obj["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert all(len(v) <= 63 for v in meta["labels"].values()), meta["labels"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("chain.inputs", ["question", "question"], "spec.chain.inputs: Value error, input names"),
        ("cache.maxMemory", "0", "spec.cache.maxMemory: Value error, must be at least 1Mi"),
        ("monitoring.scrapeInterval", "0s", "spec.monitoring.scrapeInterval: String should"),
        (
            "serving.resources",
            {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
            "spec.serving.resources: Value error, requests.cpu must not exceed limits.cpu",
        ),
        (
            "serving.resources",
            {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}},
            "spec.serving.resources: Value error, requests.memory must not exceed limits.memory",
        ),
        (
            "serving.nodeSelector",
            {"a b": "x"},
            "spec.serving.nodeSelector: Value error, 'a b': keys must be label keys",
        ),
        ("serving.nodeSelector", {"a": "x y"}, "spec.serving.nodeSelector.a: String should"),
        (
            "serving.tolerations",
            [{"key": "k", "operator": "Exists", "value": "v"}],
            "spec.serving.tolerations[0]: Value error, value must be empty when operator is",
        ),
        (
            "serving.tolerations",
            [{"effect": "NoSchedule"}],
            "spec.serving.tolerations[0]: Value error, operator must be Exists when key is empty",
        ),
    ],
    ids=[
        "duplicate-input",
        "unbounded-cache",
        "zero-scrape-interval",
        "cpu-requests-above-limits",
        "memory-requests-above-limits",
        "node-selector-key",
        "node-selector-value",
        "exists-toleration-with-a-value",
        "equal-toleration-without-a-key",
    ],
)
def test_meaningless_values_are_problems_naming_their_field(
    path: str, value: Any, expected: str
) -> None:
    body = copy.deepcopy(QA)
    node = body["spec"]
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    problems = validate(body).problems
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_requests_up_to_limits_in_any_unit_are_valid() -> None:
    body = copy.deepcopy(QA)
    body["spec"]["serving"] = {
        "resources": {
            "requests": {"cpu": "500m", "memory": "1024Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "nodeSelector": {"example.com/pool": "gpu_a-1.x"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
    }
    assert validate(body).problems == []
