"""The API models: examples validate, defaults fill in, templates are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmchain_operator.api import LLMChainApp
from llmchain_server.config import Chain, template_problems

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*/app.yaml"))


def test_there_are_at_least_three_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_validate_and_their_templates_check_out(path: Path) -> None:
    app = LLMChainApp.model_validate(yaml.safe_load(path.read_text()))
    assert template_problems(app.spec.chain) == []


def test_defaults_fill_in() -> None:
    app = LLMChainApp.model_validate(yaml.safe_load(EXAMPLES[0].read_text()))
    assert app.spec.serving.replicas == 1
    assert app.spec.model.quantization == "int8"
    assert app.spec.cache.enabled is True
    assert app.spec.chain.steps[0].generation.max_tokens == 64
    dumped = app.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["chain"]["steps"][0]["generation"]["maxTokens"] == 64


def test_unknown_fields_are_rejected() -> None:
    raw = yaml.safe_load(EXAMPLES[0].read_text())
    raw["spec"]["serving"] = {"replicaz": 2}
    with pytest.raises(ValidationError, match="replicaz"):
        LLMChainApp.model_validate(raw)


@pytest.mark.parametrize(
    ("alerts", "accepted"),
    [
        ({"forDuration": "1h30m"}, True),
        ({"forDuration": "0"}, True),
        ({"forDuration": "500ms"}, True),
        ({"forDuration": "30m1h"}, False),  # Prometheus wants units in order
        ({"forDuration": "1m1m"}, False),
        ({"forDuration": "25h"}, False),  # at most a day
        ({"forDuration": ""}, False),
        ({"p99LatencySeconds": 0.05}, True),
        ({"p99LatencySeconds": 0.01}, False),  # inside the first bucket: not measured
        ({"p99LatencySeconds": 128}, False),  # the last bound: a p99 never exceeds it
        ({"errorRatePercent": 100}, False),  # no error rate exceeds 100%
        ({"errorRatePercent": 1e-310}, False),
    ],
)
def test_alert_settings_prometheus_can_evaluate(alerts: dict[str, object], accepted: bool) -> None:
    raw = yaml.safe_load(EXAMPLES[0].read_text())
    raw["spec"]["monitoring"] = {"alerts": alerts}
    if accepted:
        LLMChainApp.model_validate(raw)
    else:
        with pytest.raises(ValidationError, match=next(iter(alerts))):
            LLMChainApp.model_validate(raw)


def chain(prompt: str, *, memory: bool = False, system: str | None = None) -> Chain:
    steps = [
        {"name": "first", "prompt": "{{ question }}"},
        {"name": "second", "prompt": prompt, "system": system},
    ]
    raw = {"inputs": ["question"], "steps": steps}
    if memory:
        raw["memory"] = {}
    return Chain.model_validate(raw)


def test_a_step_may_use_inputs_and_earlier_outputs() -> None:
    assert template_problems(chain("{{ question }} / {{ first }}")) == []


def test_undeclared_variable_is_named_with_its_field() -> None:
    problems = template_problems(chain("{{ question }} {{ answer }}"))
    assert len(problems) == 1
    assert problems[0].startswith("chain.steps[1].prompt: uses undeclared variable 'answer'")


def test_a_step_may_not_use_its_own_or_a_later_output() -> None:
    problems = template_problems(chain("{{ second }}"))
    assert "'second'" in problems[0]


def test_history_needs_memory() -> None:
    prompt = "{% for t in history %}{{ t.content }}{% endfor %}{{ question }}"
    assert template_problems(chain(prompt, memory=True)) == []
    assert "'history'" in template_problems(chain(prompt))[0]


def test_syntax_error_is_reported_with_its_line() -> None:
    problems = template_problems(chain("ok\n{{ question ", system="{% if %}"))
    assert problems[0].startswith("chain.steps[1].prompt: template syntax error on line 2")
    assert problems[1].startswith("chain.steps[1].system: template syntax error on line 1")
