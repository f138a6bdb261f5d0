"""spec.tools in the resource: what the operator renders from them (the chain file's tools with
secret headers as environment variables, the server pods' NetworkPolicy egress, the tool error
alert and dashboard row, the status entry) and what validation refuses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_operator.api import LLMChainApp, secret_env, tools_status
from llmchain_operator.builders.monitoring import alerts, build_dashboard_configmap
from llmchain_operator.builders.network import build_network_policies
from llmchain_operator.builders.workload import build_deployment, render_chain_config
from llmchain_operator.settings import Settings
from llmchain_operator.validation import validate
from llmchain_server.config import ChainConfig

ROOT = Path(__file__).resolve().parents[2]
AGENT: dict[str, Any] = yaml.safe_load((ROOT / "examples/04-agent-tools/app.yaml").read_text())
QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())


def app(raw: dict[str, Any]) -> LLMChainApp:
    raw = copy.deepcopy(raw)
    raw["metadata"]["namespace"] = "shop"
    return LLMChainApp.model_validate(raw)


def with_secret_and_cidr() -> LLMChainApp:
    raw = copy.deepcopy(AGENT)
    tool = raw["spec"]["tools"][0]
    tool["headersFromSecrets"] = [
        {"header": "Authorization", "secretKeyRef": {"name": "shop-token", "key": "token"}}
    ]
    tool["http"]["allowedHosts"] = ["10.0.0.0/8"]
    tool["http"]["url"] = "https://10.1.2.3:8443/orders/{{ order_id }}"
    tool.pop("egressPorts")
    return app(raw)


def test_the_chain_file_carries_the_tools_and_names_secrets_by_variable_only() -> None:
    a = with_secret_and_cidr()
    text = render_chain_config(a)
    config = ChainConfig.model_validate(yaml.safe_load(text))
    assert [t.name for t in config.tools] == ["order_status", "convert_units"]
    assert config.tools[0].secret_headers == {"Authorization": secret_env(0, 0)}
    assert "shop-token" not in text and "headersFromSecrets" not in text
    env = build_deployment(a, Settings())["spec"]["template"]["spec"]["containers"]
    server = next(c for c in env if c["name"] == "server")
    assert {
        "name": secret_env(0, 0),
        "valueFrom": {"secretKeyRef": {"name": "shop-token", "key": "token"}},
    } in server["env"]


def test_an_app_without_tools_renders_its_chain_file_as_before() -> None:
    assert "tools" not in yaml.safe_load(render_chain_config(app(QA)))


def test_egress_is_limited_to_dns_memory_and_the_tools_ports() -> None:
    server = build_network_policies(with_secret_and_cidr())[0]["spec"]
    assert server["policyTypes"] == ["Ingress", "Egress"]
    egress = server["egress"]
    assert egress[0] == {
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    }
    # A CIDR entry: only there, on the URL's port.
    assert egress[-2] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "ports": [{"protocol": "TCP", "port": 8443}],
    }
    # A host name: every address (NetworkPolicy has no host names), on the pods' port given.
    assert egress[-1]["to"] == [  # but never to link-local and cloud metadata addresses
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "100.100.100.200/32"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10", "fd00:ec2::254/128"]}},
    ]
    assert egress[-1]["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert build_network_policies(app(QA))[0]["spec"]["policyTypes"] == ["Ingress"]


def test_the_tool_error_alert_and_dashboard_row_come_with_tools() -> None:
    names = [a.name for a in alerts(app(AGENT))]
    assert "LLMChainToolErrors" in names
    rule = next(a for a in alerts(app(AGENT)) if a.name == "LLMChainToolErrors")
    assert 'outcome="error"' in rule.expr and rule.expr.endswith("> 0.2")
    assert "LLMChainToolErrors" not in [a.name for a in alerts(app(QA))]
    dashboard = build_dashboard_configmap(app(AGENT))
    assert dashboard is not None and "Tool call latency p99 by tool" in str(dashboard["data"])


def test_the_status_lists_each_tool_with_the_steps_that_call_it() -> None:
    status = tools_status(app(AGENT).spec)
    assert status == [
        {
            "name": "order_status",
            "method": "GET",
            "allowedHosts": ["shop-tools"],
            "steps": ["status", "answer"],
        },
        {
            "name": "convert_units",
            "method": "GET",
            "allowedHosts": ["shop-tools"],
            "steps": ["answer"],
        },
    ]
    assert tools_status(app(QA).spec) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["chain"]["steps"][0].update(tool="missing"),
            "spec.chain.steps[0]: tool missing is not one of spec.tools",
        ),
        (
            lambda s: s["tools"][0].update(parameters={"type": "object", "properties": 7}),
            "spec.tools[0].parameters: Value error, parameters is not a valid JSON schema",
        ),
        (
            lambda s: s["tools"][0].update(parameters={"type": "string"}),
            "must be the schema of an object",
        ),
        (
            lambda s: s["tools"][0]["http"].update(allowedHosts=["evil host"]),
            "spec.tools[0].http.allowedHosts[0]",
        ),
        (
            lambda s: s["chain"]["steps"][1].update(prompt="{{ nope }}"),
            "spec.chain.steps[1].prompt: uses undeclared variable 'nope'",
        ),
        (
            lambda s: s["chain"]["steps"][0]["arguments"].update(order_id="{{ nope }}"),
            "spec.chain.steps[0].arguments.order_id: uses undeclared variable 'nope'",
        ),
    ],
    ids=["unknown-tool", "bad-schema", "not-an-object", "bad-host", "agent-prompt", "argument"],
)
def test_validation_names_the_field_at_fault(change: Any, expected: str) -> None:
    raw = copy.deepcopy(AGENT)
    change(raw["spec"])
    problems = validate(raw).problems
    assert any(expected in p for p in problems), problems


def test_the_model_download_is_let_out_only_from_pods_that_download() -> None:
    raw = copy.deepcopy(AGENT)
    direct = build_network_policies(app(raw))[0]["spec"]["egress"]
    assert {"protocol": "TCP", "port": 80} in [p for r in direct for p in r["ports"]]
    raw["spec"]["model"]["volume"] = {"size": "1Gi"}  # built once by a Job instead
    in_job = build_network_policies(app(raw))[0]["spec"]["egress"]
    assert {"protocol": "TCP", "port": 80} not in [p for r in in_job for p in r["ports"]]
