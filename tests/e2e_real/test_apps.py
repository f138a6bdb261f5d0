"""The CPU examples (01, 03) as real pods on the real node, managed by the operator running in
the cluster from its image: Ready only because the real probes passed, the model built by the
real init container from a URL served in the cluster, answers through the Service and through
`kubectl port-forward` with the openai client, under the restricted Pod Security level."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster, create_namespace
from tests.support.realnode import NODE_NAME, PortForward, pod_manifest, run_pod

QUESTION = "What is the capital of France?"
EXAMPLES = {
    "qa-chain": ROOT / "examples" / "01-qa-chain" / "app.yaml",
    "edge-summarizer": ROOT / "examples" / "03-edge-cpu" / "app.yaml",
}


@pytest.fixture(scope="module")
def apps(cluster: Cluster, incluster_operator: str, model_files: str) -> Iterator[str]:
    """Examples 01 and 03, unchanged, in a restricted namespace; Ready. Yields the namespace."""
    namespace = "real-apps"
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true")
    create_namespace(
        cluster,
        namespace,
        fake_nodes=False,
        labels={"pod-security.kubernetes.io/enforce": "restricted", "llmchain.io/test": "true"},
    )
    for path in EXAMPLES.values():
        cluster.kubectl("-n", namespace, "apply", "-f", str(path))
    for name in EXAMPLES:
        wait_condition(cluster, namespace, name, "Ready", "True", timeout=300)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def pods_of(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get(
        "-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={app}"
    )["items"]
    return pods


def all_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod["status"]
    return [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]


def test_the_examples_run_as_real_pods_on_the_real_node(cluster: Cluster, apps: str) -> None:
    for app in EXAMPLES:
        pods = [p for p in pods_of(cluster, apps, app) if "memory" not in p["metadata"]["name"]]
        assert pods, app
        for pod in pods:
            assert pod["spec"]["nodeName"] == NODE_NAME
            statuses = all_statuses(pod)
            assert {s["name"] for s in statuses} >= {"model", "server"}
            for status in statuses:
                assert status["containerID"].startswith("containerd://"), status
                assert status["image"].startswith("localhost/llmchain/"), status
            # The init container really built the model; the server is Ready by its probe.
            model = next(s for s in statuses if s["name"] == "model")
            assert model["state"]["terminated"]["exitCode"] == 0
            server = next(s for s in statuses if s["name"] == "server")
            assert server["ready"] is True
            log = cluster.kubectl("-n", apps, "logs", pod["metadata"]["name"], "-c", "model")
            assert "build: wrote /models/" in log.stdout


def test_the_server_runs_as_10001_on_a_read_only_root(cluster: Cluster, apps: str) -> None:
    pod = pods_of(cluster, apps, "qa-chain")[0]["metadata"]["name"]
    script = textwrap.dedent(
        """
        import os
        print(os.getuid(), os.getgid())
        for path in ("/", "/opt/llmchain", "/etc"):
            try:
                open(os.path.join(path, "probe"), "w")
                print(path, "writable")
            except OSError as e:
                print(path, e.strerror)
        """
    )
    out = cluster.kubectl("-n", apps, "exec", pod, "-c", "server", "--", "python3", "-c", script)
    lines = out.stdout.splitlines()
    assert lines[0] == "10001 10001"
    assert all(line.endswith("Read-only file system") for line in lines[1:]), lines
    # The server writes nothing outside its volumes: the root filesystem is mounted read-only.
    mounts = cluster.kubectl(
        "-n", apps, "exec", pod, "-c", "server", "--", "cat", "/proc/self/mounts"
    ).stdout.splitlines()
    root = next(m.split() for m in mounts if m.split()[1] == "/")
    assert root[3].split(",")[0] == "ro", root


def test_the_chain_answers_through_the_service_from_a_pod(cluster: Cluster, apps: str) -> None:
    url = f"http://qa-chain.{apps}.svc.cluster.local/v1/chains/qa-chain/invoke"
    script = textwrap.dedent(
        f"""
        import json, urllib.request
        body = json.dumps({{"input": {{"question": {QUESTION!r}}}}}).encode()
        request = urllib.request.Request({url!r}, body, {{"Content-Type": "application/json"}})
        print(json.dumps(json.load(urllib.request.urlopen(request, timeout=120))))
        """
    )
    client = pod_manifest("client", ["python3", "-c", script])
    _, logs = run_pod(cluster, apps, client, timeout=180)
    answer = json.loads(logs.strip().splitlines()[-1])
    assert isinstance(answer["output"], str) and answer["output"].strip()


def test_port_forward_serves_the_openai_client_and_the_cache_hits(
    cluster: Cluster, apps: str
) -> None:
    with PortForward(cluster, apps, "service/qa-chain", 80) as forward:
        client = openai.OpenAI(base_url=f"{forward.url}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        messages: Any = [{"role": "user", "content": f"Question: {QUESTION}\nAnswer:"}]
        first = client.chat.completions.create(
            model=model, temperature=0, max_tokens=24, messages=messages
        )
        again = client.chat.completions.create(
            model=model, temperature=0, max_tokens=24, messages=messages
        )
        assert first.choices[0].message.content
        assert again.choices[0].message.content == first.choices[0].message.content
        with urllib.request.urlopen(f"{forward.url}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
    hits = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("llmchain_cache_hits_total")
    ]
    assert hits and hits[0] >= 1, metrics


def test_no_container_restarted_or_was_oom_killed(cluster: Cluster, apps: str) -> None:
    """The kubelet enforces the examples' memory limits for real: sized from measurement."""
    for app in EXAMPLES:
        for pod in pods_of(cluster, apps, app):
            for status in all_statuses(pod):
                assert status.get("restartCount", 0) == 0, (pod["metadata"]["name"], status)
                last = status.get("lastState", {}).get("terminated", {})
                assert last.get("reason") != "OOMKilled", status
    example = yaml.safe_load(EXAMPLES["edge-summarizer"].read_text())
    assert example["spec"]["serving"]["resources"]["limits"]["memory"]
