"""Example 04 (an agent with tools) as real pods on the real node: its tool service from
tool-service.yaml (in the server image built here), the app from app.yaml unchanged, under the
restricted Pod Security level. The chain's calls go to the tool service by its Service name,
resolved by the cluster's DNS and checked by the server against allowedHosts on the address it
resolves to, the one it connects to.

The NetworkPolicy the operator renders is not enforced here (the local cluster's bridge plugin
enforces none): nothing below claims containment from it."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster
from tests.support.realnode import image, pod_manifest, restricted_namespace, run_pod
from tests.support.waiting import wait_for

EXAMPLE = ROOT / "examples" / "04-agent-tools"


@pytest.fixture(scope="module")
def shop(cluster: Cluster, incluster_operator: str, model_files: str) -> Iterator[str]:
    namespace = "real-agent"
    restricted_namespace(cluster, namespace)
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "configmap",
        "shop-tools-code",
        f"--from-file={EXAMPLE / 'tool_service.py'}",
    )
    service = [d for d in yaml.safe_load_all((EXAMPLE / "tool-service.yaml").read_text()) if d]
    for doc in service:  # the server image built here, not the registry's
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = image("server")
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(service))
    cluster.kubectl("-n", namespace, "apply", "-f", str(EXAMPLE / "app.yaml"))
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/shop-tools", "--timeout=180s")
    wait_condition(cluster, namespace, "shop-assistant", "Ready", "True", timeout=300)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def invoke_from_a_pod(cluster: Cluster, namespace: str, inputs: dict[str, Any]) -> Any:
    url = f"http://shop-assistant.{namespace}.svc.cluster.local/v1/chains/shop-assistant/invoke"
    script = textwrap.dedent(
        f"""
        import json, urllib.error, urllib.request
        body = json.dumps({{"input": {inputs!r}}}).encode()
        request = urllib.request.Request({url!r}, body, {{"Content-Type": "application/json"}})
        try:
            print(json.dumps(json.load(urllib.request.urlopen(request, timeout=120))))
        except urllib.error.HTTPError as e:
            print(json.dumps({{"status": e.code, "body": json.load(e)}}))
        """
    )
    name = f"client-{abs(hash(json.dumps(inputs))) % 10**6}"
    _, logs = run_pod(cluster, namespace, pod_manifest(name, ["python3", "-c", script]), 240)
    return json.loads(logs.strip().splitlines()[-1])


def test_the_agent_calls_the_tool_service_through_its_service_name(
    cluster: Cluster, shop: str
) -> None:
    answer = invoke_from_a_pod(
        cluster, shop, {"question": "How many miles is 42 km?", "order": "A1234"}
    )
    assert isinstance(answer["output"], str), answer
    calls = answer["metadata"]["tool_calls"]
    lookup = calls[0]
    assert (lookup["step"], lookup["tool"], lookup["ok"]) == ("status", "order_status", True)
    for call in calls[1:]:
        assert call["step"] == "answer" and call["tool"] in ("convert_units", "order_status")


def test_an_unknown_order_is_a_tool_error_naming_the_tool(cluster: Cluster, shop: str) -> None:
    answer = invoke_from_a_pod(cluster, shop, {"question": "Where is it?", "order": "Z0000"})
    assert answer["status"] == 502, answer
    assert answer["body"]["error"]["type"] == "tool_error"
    assert "tool order_status answered HTTP 404" in answer["body"]["error"]["message"]


def test_the_status_lists_the_tools_and_the_steps_that_call_them(
    cluster: Cluster, shop: str
) -> None:
    def tools() -> Any:
        return cluster.get("-n", shop, "lca", "shop-assistant")["status"].get("tools")

    listed = wait_for(tools, timeout=60, what="status.tools")
    assert [(t["name"], t["steps"]) for t in listed] == [
        ("order_status", ["status", "answer"]),
        ("convert_units", ["answer"]),
    ]
    server = cluster.get("-n", shop, "networkpolicy", "shop-assistant")["spec"]
    assert server["policyTypes"] == ["Ingress", "Egress"]
    assert {"protocol": "TCP", "port": 8080} in server["egress"][-1]["ports"]
