"""The CPU examples (01, 03) as real pods on the real node, managed by the operator running in
the cluster from its image: Ready only because the real probes passed, the model built by the
real init container from a URL served in the cluster, answers through the Service and through
`kubectl port-forward` with the openai client, under the restricted Pod Security level."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster
from tests.support.realnode import (
    NODE_NAME,
    PortForward,
    all_statuses,
    host_path_volume,
    image,
    pod_manifest,
    pods_of,
    restricted_namespace,
    run_pod,
    sigkill_container,
)
from tests.support.waiting import wait_for

QUESTION = "What is the capital of France?"
EXAMPLES = {
    "qa-chain": ROOT / "examples" / "01-qa-chain" / "app.yaml",
    "edge-summarizer": ROOT / "examples" / "03-edge-cpu" / "app.yaml",
}


@pytest.fixture(scope="module")
def apps(cluster: Cluster, incluster_operator: str, model_files: str) -> Iterator[str]:
    """Examples 01 and 03, unchanged, in a restricted namespace; Ready. Yields the namespace."""
    namespace = "real-apps"
    restricted_namespace(cluster, namespace)
    for path in EXAMPLES.values():
        cluster.kubectl("-n", namespace, "apply", "-f", str(path))
    for name in EXAMPLES:
        wait_condition(cluster, namespace, name, "Ready", "True", timeout=300)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_examples_run_as_real_pods_on_the_real_node(cluster: Cluster, apps: str) -> None:
    for app in EXAMPLES:
        pods = pods_of(cluster, apps, app)
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


def small_app(name: str, replicas: int = 1, **chain: Any) -> dict[str, Any]:
    """Example 01 under another name, asking for little CPU (a 2-core node hosts the tier)."""
    app: dict[str, Any] = yaml.safe_load(EXAMPLES["qa-chain"].read_text())
    app["metadata"]["name"] = name
    app["spec"]["serving"] = {
        "replicas": replicas,
        "resources": {"requests": {"cpu": "100m", "memory": "768Mi"}, "limits": {"memory": "2Gi"}},
    }
    app["spec"]["chain"].update(chain)
    return app


def apply_ready(cluster: Cluster, namespace: str, app: dict[str, Any]) -> list[dict[str, Any]]:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(app))
    name = app["metadata"]["name"]
    wait_condition(cluster, namespace, name, "Ready", "True", timeout=300)
    return pods_of(cluster, namespace, name)


def test_a_spec_change_rolls_with_zero_failed_requests(cluster: Cluster, apps: str) -> None:
    """A client pod loops through the Service while the Deployment rolls to a new prompt."""
    url = f"http://qa-chain.{apps}.svc.cluster.local/v1/chains/qa-chain/invoke"
    script = textwrap.dedent(
        f"""
        import json, time, urllib.request
        ok, failed, errors, deadline = 0, 0, [], time.monotonic() + 75
        while time.monotonic() < deadline:
            body = json.dumps({{"input": {{"question": f"What is {{ok + failed}} plus one?"}}}})
            request = urllib.request.Request({url!r}, body.encode(),
                                             {{"Content-Type": "application/json"}})
            try:
                json.load(urllib.request.urlopen(request, timeout=60))["output"]
                ok += 1
                if ok == 1:
                    print("first answer", flush=True)
            except Exception as error:
                failed += 1
                errors.append(repr(error)[:200])
            time.sleep(0.1)
        print(json.dumps({{"ok": ok, "failed": failed, "errors": errors[:5]}}))
        """
    )
    client = pod_manifest("looping-client", ["python3", "-c", script])
    cluster.kubectl("-n", apps, "create", "-f", "-", input=json.dumps(client))
    cluster.kubectl(
        "-n", apps, "wait", "--for=condition=Ready", "pod/looping-client", "--timeout=60s"
    )
    before = {p["metadata"]["name"] for p in pods_of(cluster, apps, "qa-chain")}
    wait_for(
        lambda: "first answer" in cluster.kubectl("-n", apps, "logs", "looping-client").stdout,
        timeout=15,  # of the client's 75 s, leave 60 for the rollout
        what="the looping client's first answer before the rollout",
    )
    app = yaml.safe_load(EXAMPLES["qa-chain"].read_text())
    app["spec"]["chain"]["steps"][0]["prompt"] = "Q: {{ question }}\nA:"
    cluster.kubectl("-n", apps, "apply", "-f", "-", input=yaml.safe_dump(app))

    def rolled() -> bool:
        pods = pods_of(cluster, apps, "qa-chain")
        names = {p["metadata"]["name"] for p in pods}
        ready = all(s.get("ready") for p in pods for s in p["status"].get("containerStatuses", []))
        return bool(names) and not names & before and ready

    wait_for(rolled, timeout=60, what="qa-chain to roll to new pods")
    pod = wait_for(
        lambda: (
            (p := cluster.get("-n", apps, "pod", "looping-client"))["status"]["phase"]
            in ("Succeeded", "Failed")
            and p
        ),
        timeout=120,
        what="the looping client to finish",
    )
    assert pod["status"]["phase"] == "Succeeded"
    log = cluster.kubectl("-n", apps, "logs", "looping-client").stdout
    counts = json.loads(log.splitlines()[-1])
    print(f"requests through the Service during the rollout: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] >= 20, counts
    cluster.kubectl("-n", apps, "apply", "-f", str(EXAMPLES["qa-chain"]))  # back to the example


def test_deleting_a_pod_mid_stream_lets_the_stream_finish(cluster: Cluster, apps: str) -> None:
    (pod,) = apply_ready(cluster, apps, small_app("draining"))
    name = pod["metadata"]["name"]
    with PortForward(cluster, apps, f"pod/{name}", 8000) as forward:
        client = openai.OpenAI(base_url=f"{forward.url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="draining",
            temperature=0,
            max_tokens=400,
            stream=True,
            messages=[{"role": "user", "content": "Tell a long story about the sea."}],
        )
        chunks, finish = [], None
        for chunk in stream:
            if not chunks:
                cluster.kubectl("-n", apps, "delete", "pod", name, "--wait=false")
                deleting = time.monotonic()
            chunks.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    streamed = time.monotonic() - deleting
    print(f"the stream went on {streamed:.1f}s after the pod's deletion, {len(chunks)} chunks")
    assert finish in ("length", "stop"), finish
    assert len(chunks) > 50
    wait_for(
        lambda: name not in {p["metadata"]["name"] for p in pods_of(cluster, apps, "draining")},
        timeout=90,
        what="the deleted pod to go",
    )
    cluster.kubectl("-n", apps, "delete", "lca", "draining", "--wait=false")


def test_killed_containers_are_restarted_and_the_cache_fails_open(
    cluster: Cluster, apps: str
) -> None:
    (pod,) = apply_ready(cluster, apps, small_app("crashy"))
    name = pod["metadata"]["name"]

    def restarts(container: str) -> tuple[int, bool]:
        current = cluster.get("-n", apps, "pod", name)
        status = next(s for s in all_statuses(current) if s["name"] == container)
        return status.get("restartCount", 0), bool(status.get("ready"))

    sigkill_container(pod, "cache")
    with PortForward(cluster, apps, f"pod/{name}", 8000) as forward:
        # The cache is down (or coming back): the server answers anyway.
        for i in range(3):
            request = urllib.request.Request(
                f"{forward.url}/v1/chains/crashy/invoke",
                json.dumps({"input": {"question": f"Is {i} even?"}}).encode(),
                {"Content-Type": "application/json"},
            )
            assert json.load(urllib.request.urlopen(request, timeout=60))["output"]
    wait_for(lambda: restarts("cache") == (1, True), timeout=60, what="the cache restarted")

    sigkill_container(cluster.get("-n", apps, "pod", name), "server")
    wait_for(lambda: restarts("server") == (1, True), timeout=180, what="the server Ready again")
    cluster.kubectl("-n", apps, "delete", "lca", "crashy", "--wait=false")


def test_two_replicas_share_the_conversation_memory(cluster: Cluster, apps: str) -> None:
    chain = {
        "inputs": ["topic"],
        "steps": [
            {
                "name": "answer",
                "prompt": "Earlier: {% for turn in history %}{{ turn.inputs.topic }}; {% endfor %}"
                "\nExplain {{ topic }} in one sentence.",
                "generation": {"maxTokens": 16},
            }
        ],
        "memory": {"window": 4, "ttlSeconds": 600},
    }
    app = small_app("remembers", replicas=2)
    app["spec"]["chain"] = chain
    app["spec"]["cache"] = {"enabled": False}
    first, second = apply_ready(cluster, apps, app)
    config = {"configurable": {"session_id": "alice-1"}}
    usages = []
    for pod, topic in ((first, "volcanoes"), (second, "glaciers")):
        with PortForward(cluster, apps, f"pod/{pod['metadata']['name']}", 8000) as forward:
            request = urllib.request.Request(
                f"{forward.url}/v1/chains/remembers/invoke",
                json.dumps({"input": {"topic": topic}, "config": config}).encode(),
                {"Content-Type": "application/json"},
            )
            usages.append(
                json.load(urllib.request.urlopen(request, timeout=60))["metadata"]["usage"]
            )
    # The second pod's prompt held the first pod's turn: it read it from the shared Redis.
    assert usages[1]["prompt_tokens"] > usages[0]["prompt_tokens"]
    memory_pod = pods_of(cluster, apps, "remembers", "memory")[0]["metadata"]["name"]
    stored = cluster.kubectl(
        "-n",
        apps,
        "exec",
        memory_pod,
        "--",
        "redis-cli",
        "lrange",
        "llmchain:memory:remembers:alice-1",
        "0",
        "-1",
    ).stdout
    assert "volcanoes" in stored and "glaciers" in stored
    cluster.kubectl("-n", apps, "delete", "lca", "remembers", "--wait=false")


def test_the_model_comes_from_an_image_and_from_a_volume_built_once(
    cluster: Cluster, apps: str
) -> None:
    """model.source.image: the init container copies the GGUF out of the model image.
    model.volume: a Job builds the model once into a PersistentVolume (pre-made, on the node's
    disk: the cluster has no dynamic provisioner) that the server pods mount read-only."""
    from_image = small_app("from-image")
    from_image["spec"]["model"]["source"] = {
        "image": {
            "reference": image("model"),
            "path": "/model/SmolLM2-135M-Instruct.Q4_1.gguf",
        }
    }
    (pod,) = apply_ready(cluster, apps, from_image)
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names[:3] == ["cache", "model-source", "model"], names
    cluster.kubectl("-n", apps, "delete", "lca", "from-image", "--wait=false")

    on_volume = small_app("on-volume", replicas=2)
    on_volume["spec"]["model"]["volume"] = {"size": "1Gi", "accessMode": "ReadWriteOnce"}
    pv = host_path_volume(cluster, apps, "on-volume-model")
    try:
        pods = apply_ready(cluster, apps, on_volume)
        assert len(pods) == 2
        jobs = cluster.get("-n", apps, "jobs", "-l", "app.kubernetes.io/instance=on-volume")
        assert len(jobs["items"]) == 1  # built once, for both pods
        assert jobs["items"][0]["status"].get("succeeded") == 1
        for pod in pods:
            mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
            assert mounts["/models"].get("readOnly") is True
            # The pods wait for the Job's build instead of building.
            waits = [c for c in pod["spec"]["initContainers"] if c["name"] == "model"]
            assert [c["args"][:3] for c in waits] == [["llmchain", "model", "wait"]], waits
    finally:
        cluster.kubectl("-n", apps, "delete", "lca", "on-volume", "--wait=true", check=False)
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
