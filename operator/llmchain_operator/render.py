"""`llmchain render`: the child manifests the operator would apply, offline, as YAML."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import yaml

from llmchain_operator.api import KIND, LLMChainApp
from llmchain_operator.builders import build_children
from llmchain_operator.builders.monitoring import build_prometheus_rule, rule_tests
from llmchain_operator.kinds import OPTIONAL_API_GROUPS
from llmchain_operator.settings import Settings
from llmchain_operator.validation import validate


class RenderError(ValueError):
    """An input document is not a valid LLMChainApp; the message names the field."""


def parse_apps(documents: Iterable[Any], namespace: str | None = None) -> list[LLMChainApp]:
    """LLMChainApps among YAML documents (others are ignored), validated."""
    apps = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", f"document {index}")
        validated = validate(doc)
        if validated.app is None or validated.problems:
            raise RenderError(f"{KIND} {name}: " + "; ".join(validated.problems))
        app = validated.app
        if namespace or not app.metadata.get("namespace"):
            app.metadata["namespace"] = namespace or "default"
        apps.append(app)
    return apps


def render(
    text: str,
    settings: Settings,
    *,
    namespace: str | None = None,
    available_groups: Collection[str] = OPTIONAL_API_GROUPS,
) -> str:
    out = []
    for app in parse_apps(yaml.safe_load_all(text), namespace):
        children = build_children(app, settings, available_groups)
        for obj in children.objects:
            source = f"# Source: {KIND} {app.metadata['namespace']}/{app.metadata['name']}"
            out.append(source + "\n" + yaml.safe_dump(obj, sort_keys=False, width=100))
        for obj in children.skipped:
            out.append(
                f"# Skipped {obj['kind']} {obj['metadata']['name']}: "
                f"API {obj['apiVersion']} not available\n"
            )
    return "---\n".join(out)


def rule_test_files(text: str, *, namespace: str | None = None) -> dict[str, str]:
    """`llmchain rule-tests`: per app with alerts, its rule groups (`<ns>-<name>.rules.yaml`, the
    PrometheusRule's spec) and a `promtool test rules` file (`<ns>-<name>.test.yaml`) in which
    each alert fires on synthetic series and stays quiet on others. File name -> content."""
    files = {}
    for app in parse_apps(yaml.safe_load_all(text), namespace):
        rule = build_prometheus_rule(app)
        if rule is None:
            continue
        stem = f"{app.metadata['namespace']}-{app.metadata['name']}"
        files[f"{stem}.rules.yaml"] = yaml.safe_dump(rule["spec"], sort_keys=False, width=100)
        tests = rule_tests(app, f"{stem}.rules.yaml")
        files[f"{stem}.test.yaml"] = yaml.safe_dump(tests, sort_keys=False, width=100)
    return files
