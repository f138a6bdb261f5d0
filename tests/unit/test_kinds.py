"""The kind table (llmchain_operator.kinds) against everything derived from it or checked by it:
the chart's RBAC, the builders' output, the CLI's optional groups."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_cli.main import render as render_command
from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders import build_children
from llmchain_operator.kinds import CHILDREN, KINDS, OPTIONAL_API_GROUPS, OPTIONAL_CRDS, Kind
from llmchain_operator.settings import Settings
from tests.unit.test_builders import GPU, QA, app

TEMPLATES = Path(__file__).resolve().parents[2] / "charts/llmchain-operator/templates"


def rbac_rules(template: str) -> list[dict[str, Any]]:
    """The rules of a chart RBAC template, its metadata's Helm expressions blanked out (the
    rules themselves must hold none, or this reading would not be what Helm renders)."""
    text = (TEMPLATES / template).read_text()
    assert "{{" not in text.partition("\nrules:")[2], f"{template}: templated rules"
    rules: list[dict[str, Any]] = yaml.safe_load(re.sub(r"\{\{.*?\}\}", "x", text))["rules"]
    return rules


def granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs.update(rule["verbs"])
    return verbs


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_chart_grants_what_the_operator_does_to_each_kind(kind: Kind) -> None:
    rules = rbac_rules("clusterrole.yaml" if kind.rbac == "ClusterRole" else "role.yaml")
    missing = set(kind.verbs) - granted(rules, kind.group, kind.plural)
    assert not missing, f"the chart's {kind.rbac} lacks {sorted(missing)} on {kind.plural}"
    if kind.status_verbs:
        missing = set(kind.status_verbs) - granted(rules, kind.group, f"{kind.plural}/status")
        assert not missing, f"the chart's {kind.rbac} lacks {sorted(missing)} on status"
    if kind.log_verbs:
        missing = set(kind.log_verbs) - granted(rules, kind.group, f"{kind.plural}/log")
        assert not missing, f"the chart's {kind.rbac} lacks {sorted(missing)} on log"


def test_the_cluster_role_grants_no_kind_outside_the_table() -> None:
    known = {(k.group, k.plural) for k in KINDS} | {(k.group, f"{k.plural}/status") for k in KINDS}
    known |= {(k.group, f"{k.plural}/log") for k in KINDS if k.log_verbs}
    # What kopf itself needs (discovery, cluster-wide watching, the webhook's configuration).
    kopf = {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
        ("events.k8s.io", "events"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    }
    for rule in rbac_rules("clusterrole.yaml"):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) in known | kopf, f"{group}/{resource} is not in kinds.py"


def every_child(application: LLMChainApp) -> list[dict[str, Any]]:
    return build_children(application, Settings()).objects


@pytest.mark.parametrize(
    "application",
    [
        app(GPU),  # KEDA, monitoring, GPU
        app(QA, autoscaling={"engine": "hpa", "minReplicas": 1, "maxReplicas": 3}),
        app(QA, model__volume={"size": "2Gi"}),  # build Job and PVC
    ],
    ids=["gpu-keda", "hpa", "build-job"],
)
def test_every_object_the_builders_make_is_a_child_kind_of_the_table(
    application: LLMChainApp,
) -> None:
    children = {(k.kind, k.api_version) for k in CHILDREN}
    for obj in every_child(application):
        assert (obj["kind"], obj["apiVersion"]) in children, obj["kind"]


def test_optional_groups_and_their_crds_come_from_the_optional_kinds() -> None:
    assert OPTIONAL_API_GROUPS == ("monitoring.coreos.com", "keda.sh")
    assert OPTIONAL_CRDS["keda.sh"] == ("scaledobjects.keda.sh",)
    assert set(OPTIONAL_CRDS["monitoring.coreos.com"]) == {
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    }
    assert all(not k.watched for k in KINDS if k.optional)  # kopf cannot watch absent CRDs


def test_the_cli_offers_exactly_the_optional_groups() -> None:
    option = next(p for p in render_command.params if p.name == "missing")
    assert tuple(option.type.choices) == OPTIONAL_API_GROUPS  # type: ignore[attr-defined]
