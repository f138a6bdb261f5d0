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
from llmchain_operator.render import RenderError, render
from llmchain_operator.settings import Settings
from llmchain_operator.validation import field_path, validate
from tests.unit.test_builders import QA


def broken(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(QA)
    body["metadata"]["namespace"] = "apps"
    steps = body["spec"]["chain"]["steps"]
    steps.append({**steps[0], **changes})
    return body


MISTAKES = [
    (broken(name="Second Step"), "spec.chain.steps[1].name: String should match pattern"),
    (broken(name="second", prompt="{{ nowhere }}"), "spec.chain.steps[1].prompt: uses undeclared"),
    (
        broken(name="second", generation={"maxTokens": 0}),
        "spec.chain.steps[1].generation.maxTokens",
    ),
]


def test_field_paths_use_brackets_for_list_items() -> None:
    assert field_path(("spec", "chain", "steps", 0, "name")) == "spec.chain.steps[0].name"
    assert field_path(()) == "(the resource)"


@pytest.mark.parametrize(("body", "expected"), MISTAKES, ids=["schema", "template", "bound"])
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
