"""Monitoring and autoscaling for real (hack/monitoring.sh): the Prometheus Operator, built here,
turns the apps' ServiceMonitors and PrometheusRules into the scrape configuration and rules of a
Prometheus it runs on the real node; every rule and dashboard query returns data after a little
load; the error-rate and no-ready-replica alerts fire for real causes; KEDA scales a real
Deployment from 1 to 3 Ready replicas on the in-flight metric under load from a Job in the
cluster, and back, with no failed or cut request; Prometheus scrapes the operator's pods."""

from __future__ import annotations

import json
import platform
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.monitoring import alerts, panels
from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster, create_namespace
from tests.support.model import GGUF_SHA256
from tests.support.prometheus import Prometheus, install_monitoring, remove_monitoring
from tests.support.realnode import (
    NODE_NAME,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    image,
)
from tests.support.waiting import wait_for

NAMESPACE = "real-monitoring"
PROMETHEUS_IN_CLUSTER = "http://prometheus.monitoring.svc:9090"
LOAD_CLIENT = ROOT / "tests" / "support" / "load_client.py"
SCALE_DOWN_WINDOW = 30  # seconds: the autoscaling app's scaleDownStabilizationSeconds


def app_manifest(name: str, model_url: str, **spec: Any) -> dict[str, Any]:
    """An int4 CPU app built in each pod from the in-cluster URL, scraped every 5 s, whose
    alerts fire after 10 s; small enough that three replicas fit on the 2-core node."""
    body: dict[str, Any] = {
        "apiVersion": "llmchain.io/v1alpha1",
        "kind": "LLMChainApp",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {
                "source": {"url": {"url": model_url, "sha256": GGUF_SHA256}},
                "quantization": "int4",
            },
            "chain": {
                "inputs": ["question"],
                "steps": [
                    {
                        "name": "answer",
                        "prompt": "Question: {{ question }}\nAnswer:",
                        "generation": {"maxTokens": 24, "temperature": 0.0},
                    }
                ],
            },
            "serving": {
                "replicas": 1,
                "resources": {
                    "requests": {"cpu": "150m", "memory": "512Mi"},
                    "limits": {"memory": "1536Mi"},
                },
                "maxBatchSize": 4,
                "maxConcurrency": 32,
            },
            "monitoring": {
                "scrapeInterval": "5s",
                "alerts": {"forDuration": "10s", "cacheHitRatePercent": 1},
            },
        },
    }
    body["spec"].update(spec)
    return body


def failing_chain() -> dict[str, Any]:
    """A chain whose JSON output is always cut: the step decodes under its schema, whose
    output starts with `{`, and its stop sequence is `{`, so the text parsed is empty and each
    request ends in a 502 (a real failure of the server's parser, not a faked one)."""
    return {
        "inputs": ["question"],
        "steps": [
            {
                "name": "answer",
                "prompt": "Question: {{ question }}\nAnswer as JSON:",
                "generation": {"maxTokens": 16, "temperature": 0.0, "stop": ["{"]},
                "output": {
                    "type": "json",
                    "jsonSchema": {"type": "object", "required": ["answer"]},
                },
            }
        ],
    }


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    """The stack for this module; removed after it, so the later tests' node is as before."""
    install_monitoring()
    yield Prometheus()
    remove_monitoring()


@pytest.fixture(scope="module")
def apps(
    cluster: Cluster, prometheus: Prometheus, incluster_operator: str, model_files: str
) -> Iterator[dict[str, dict[str, Any]]]:
    """`watched` (KEDA on in-flight requests, 1-3 replicas) and `failing` (its parser always
    fails), Ready. Yields their manifests by name."""
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    create_namespace(
        cluster,
        NAMESPACE,
        fake_nodes=False,
        labels={"pod-security.kubernetes.io/enforce": "restricted"},
    )
    manifests = {
        "watched": app_manifest(
            "watched",
            model_files,
            autoscaling={
                "engine": "keda",
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetInflightPerPod": 2,
                "prometheusAddress": PROMETHEUS_IN_CLUSTER,
                "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW,
            },
        ),
        "failing": app_manifest("failing", model_files, chain=failing_chain()),
    }
    for manifest in manifests.values():
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    for name in manifests:
        wait_condition(cluster, NAMESPACE, name, "Ready", "True", timeout=420)
    yield manifests
    # Waited for: KEDA must finalize the ScaledObject before the stack goes (fixture above).
    cluster.kubectl("delete", "namespace", NAMESPACE, "--timeout=300s", check=False)


def server_pods(cluster: Cluster, app: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={app},app.kubernetes.io/component=server"
    pods: list[dict[str, Any]] = cluster.get("-n", NAMESPACE, "pods", "-l", selector)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_on_real_node(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and pod["spec"].get("nodeName") == NODE_NAME


def post(url: str, payload: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def pod_url(cluster: Cluster, app: str) -> str:
    ip = server_pods(cluster, app)[0]["status"]["podIP"]
    return f"http://{ip}:8000"


def test_the_stack_runs_on_the_real_node_from_images_built_here(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    expected = {
        "monitoring": {image("prometheus-operator"), image("prometheus")},
        "keda": {image("keda")},
    }
    for namespace, images in expected.items():
        pods = cluster.get("-n", namespace, "pods")["items"]
        running = {c["image"] for p in pods for c in p["spec"]["containers"]}
        assert images <= running, (namespace, running)

        def all_ready(ns: str = namespace) -> bool:  # KEDA restarts once to load its certs
            found = cluster.get("-n", ns, "pods")["items"]
            return bool(found) and all(ready_on_real_node(p) for p in found)

        wait_for(all_ready, timeout=120, interval=2, what=f"{namespace}'s pods Ready")
    reloader = cluster.get("-n", "monitoring", "pod", "prometheus-llmchain-0")["spec"]
    assert image("prometheus-config-reloader") in {c["image"] for c in reloader["containers"]}
    # The Prometheus running is the release promtool was built from (one Go module).
    version = (ROOT / ".toolchain" / "bin" / "promtool").resolve().parent.parent.name
    running = prometheus.api("status/buildinfo")["version"]  # 3.MM.P, from module v0.3MM.P
    assert version.startswith(f"prometheus-v0.3{running.split('.', 1)[1]}")


def test_app_pods_are_scraped_through_the_servicemonitor_the_operator_made(
    cluster: Cluster, prometheus: Prometheus, apps: dict[str, dict[str, Any]]
) -> None:
    def scraped(app: str) -> set[str]:
        return {
            t["labels"]["pod"]
            for t in prometheus.targets()
            if t["scrapePool"] == f"serviceMonitor/{NAMESPACE}/{app}/0" and t["health"] == "up"
        }

    for name in apps:
        pods = {p["metadata"]["name"] for p in server_pods(cluster, name)}
        wait_for(lambda: scraped(name) >= pods, timeout=90, what=f"{name}'s pods scraped")  # noqa: B023
        up = prometheus.values(f'up{{namespace="{NAMESPACE}",service="{name}"}}')
        assert up and all(v == 1 for v in up), (name, up)

    # The rules: PrometheusRule -> the operator's ConfigMap -> the reloader -> Prometheus.
    def groups() -> set[str]:
        return {g["name"] for g in prometheus.api("rules", type="alert")["groups"]}

    wanted = {f"llmchain.{name}" for name in apps}
    wait_for(lambda: groups() >= wanted, timeout=120, interval=3, what="both apps' rules loaded")


def test_every_rule_and_dashboard_query_returns_data_after_a_little_load(
    cluster: Cluster, prometheus: Prometheus, apps: dict[str, dict[str, Any]]
) -> None:
    base = pod_url(cluster, "watched")
    chat = {"model": "watched", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

    def load(round_: int) -> None:  # misses, then the same questions again: cache hits
        for question in ("What is the capital of France?", f"Name a colour ({round_}).") * 2:
            status = post(f"{base}/v1/chains/watched/invoke", {"input": {"question": question}})
            assert status == 200
        assert post(f"{base}/v1/chat/completions", {**chat, "stream": True}) == 200

    # The request series exist, at 0, before the first request (rate() cannot count the first
    # requests of a series born with them), so one round of load shows in every query.
    route = 'route="/v1/chat/completions",status="200"'
    served = f'llmchain_requests_total{{namespace="{NAMESPACE}",service="watched",{route}}}'
    wait_for(lambda: prometheus.values(served), timeout=60, interval=2, what="series before load")
    load(0)
    app = LLMChainApp.model_validate(apps["watched"])
    queries = {f"rule {a.name}": a.value for a in alerts(app)}
    for panel in panels(app):
        for legend, expr in panel.targets:
            queries[f"panel {panel.title!r} ({legend})"] = expr
    missing = {}
    for what, expr in queries.items():
        deadline = time.monotonic() + 60  # a few scrapes and rule evaluations each
        while not prometheus.finite(expr) and time.monotonic() < deadline:
            time.sleep(3)
        if not prometheus.finite(expr):
            missing[what] = expr
    assert not missing, f"queries that return no data: {yaml.safe_dump(missing, width=200)}"


def wait_for_alert(prometheus: Prometheus, name: str, app: str, timeout: float) -> dict[str, Any]:
    def firing() -> dict[str, Any] | None:
        found = prometheus.alerts(name, llmchain_app=app)
        return next((a for a in found if a["state"] == "firing"), None)

    alert: dict[str, Any] = wait_for(firing, timeout=timeout, interval=2, what=f"{name} firing")
    return alert


def test_the_error_rate_alert_fires_when_requests_really_fail(
    cluster: Cluster, prometheus: Prometheus, apps: dict[str, dict[str, Any]]
) -> None:
    assert not prometheus.alerts("LLMChainHighErrorRate", llmchain_app="failing")
    base = pod_url(cluster, "failing")
    statuses = [
        post(f"{base}/v1/chains/failing/invoke", {"input": {"question": f"Question {i}?"}})
        for i in range(6)
    ]
    assert set(statuses) == {502}, statuses  # the parser's failure, as the server reports it
    alert = wait_for_alert(prometheus, "LLMChainHighErrorRate", "failing", timeout=120)
    assert alert["labels"]["severity"] == "warning"
    assert "failing" in alert["annotations"]["summary"]
    # The healthy app's error rate stays quiet.
    assert not prometheus.alerts("LLMChainHighErrorRate", llmchain_app="watched")


def test_the_no_ready_replica_alert_fires_when_the_pods_are_gone(
    cluster: Cluster, prometheus: Prometheus, apps: dict[str, dict[str, Any]]
) -> None:
    assert not prometheus.alerts("LLMChainAppDown", llmchain_app="failing")
    cluster.kubectl(
        "-n", NAMESPACE, "patch", "lca", "failing", "--type=merge",
        "-p", json.dumps({"spec": {"serving": {"replicas": 0}}}),
    )  # fmt: skip
    wait_for(lambda: not server_pods(cluster, "failing"), timeout=120, what="failing's pods gone")
    alert = wait_for_alert(prometheus, "LLMChainAppDown", "failing", timeout=120)
    assert alert["labels"]["severity"] == "critical"
    assert not prometheus.alerts("LLMChainAppDown", llmchain_app="watched")


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    found = (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    return next(found, platform.machine())


def load_job(url: str) -> list[dict[str, Any]]:
    """A ConfigMap with the load client and a Job that runs it from the server image."""
    script = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "load-client", "namespace": NAMESPACE},
        "data": {"load_client.py": LOAD_CLIENT.read_text()},
    }
    container = {
        "name": "load",
        "image": image("server"),
        "imagePullPolicy": "Never",
        "command": ["python", "/client/load_client.py", url, "watched", "8", "1", "/phase"],
        "securityContext": RESTRICTED_CONTAINER,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "volumeMounts": [
            {"name": "client", "mountPath": "/client"},
            {"name": "phase", "mountPath": "/phase"},
        ],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "load", "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "load"}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": RESTRICTED_POD,
                    "containers": [container],
                    "volumes": [
                        {"name": "client", "configMap": {"name": "load-client"}},
                        {"name": "phase", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [script, job]


def test_keda_scales_out_to_three_ready_replicas_under_load_and_back_without_losing_one(
    cluster: Cluster, prometheus: Prometheus, apps: dict[str, dict[str, Any]]
) -> None:
    deployment = cluster.get("-n", NAMESPACE, "deployment", "watched")
    assert deployment["spec"]["replicas"] == 1
    url = f"http://watched.{NAMESPACE}.svc/v1/chat/completions"
    for manifest in load_job(url):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    started = time.monotonic()
    pod = wait_for(
        lambda: next(iter(cluster.get("-n", NAMESPACE, "pods", "-l", "app=load")["items"]), None),
        timeout=30,
        what="the load Job's pod",
    )
    load_pod = pod["metadata"]["name"]

    def three_ready() -> bool:
        return sum(ready_on_real_node(p) for p in server_pods(cluster, "watched")) >= 3

    wait_for(three_ready, timeout=420, interval=2, what="3 Ready replicas on the real node")
    scale_out = time.monotonic() - started
    status = cluster.get("-n", NAMESPACE, "lca", "watched")["status"]
    wait_for(
        lambda: (
            cluster.get("-n", NAMESPACE, "lca", "watched")["status"].get("readyReplicas", 0) >= 3
        ),
        timeout=60,
        what="the app's status to count 3 ready replicas",
    )
    status = cluster.get("-n", NAMESPACE, "lca", "watched")["status"]
    assert status["desiredReplicas"] >= 3, status
    autoscaler = status["autoscaler"]
    assert autoscaler["engine"] == "keda" and autoscaler["active"] is True, autoscaler
    assert autoscaler["hpa"] == "keda-hpa-watched" and autoscaler["desiredReplicas"] >= 3

    # One request at a time from now on: the autoscaler scales in while requests keep flowing.
    cluster.kubectl("-n", NAMESPACE, "exec", load_pod, "--", "touch", "/phase/low")
    low_since = time.monotonic()

    def scaled_in() -> bool:
        return cluster.get("-n", NAMESPACE, "deployment", "watched")["spec"]["replicas"] == 1 and (
            len(server_pods(cluster, "watched")) == 1
        )

    wait_for(scaled_in, timeout=420, interval=2, what="scale-in to 1 replica")
    scale_in = time.monotonic() - low_since

    def drained() -> bool:  # the pods that went, gone after their drain, load still flowing
        selector = "app.kubernetes.io/instance=watched,app.kubernetes.io/component=server"
        return len(cluster.get("-n", NAMESPACE, "pods", "-l", selector)["items"]) == 1

    wait_for(drained, timeout=180, interval=2, what="the removed replicas to finish draining")
    cluster.kubectl("-n", NAMESPACE, "exec", load_pod, "--", "touch", "/phase/stop")
    cluster.kubectl(
        "-n", NAMESPACE, "wait", "--for=condition=Complete", "job/load", "--timeout=300s"
    )
    logs = cluster.kubectl("-n", NAMESPACE, "logs", "job/load").stdout
    summary = json.loads(logs.split("SUMMARY ", 1)[1])
    counts = summary["counts"]
    # The measurement, with the knobs that set it (bench/results is where results go).
    result = {
        "engine": "keda",
        "target_inflight_per_pod": 2,
        "scrape_interval_s": 5,
        "keda_polling_interval_s": 15,
        "scale_down_window_s": SCALE_DOWN_WINDOW,
        "concurrent_requests_high": 8,
        "concurrent_requests_low": 1,
        "scale_out_1_to_3_ready_s": round(scale_out, 1),
        "scale_in_3_to_1_s": round(scale_in, 1),
        "requests": counts,
        "cpu": cpu_model(),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "autoscaling-e2e.json").write_text(json.dumps(result, indent=2))
    print(f"\nautoscaling: {result}")
    assert counts.get("high", {}).get("ok", 0) > 0 and counts.get("low", {}).get("ok", 0) > 0
    failed = sum(c["failed"] for c in counts.values())
    assert failed == 0, summary["failures"]


def test_prometheus_scrapes_the_operator_pods_through_the_charts_servicemonitor(
    cluster: Cluster, prometheus: Prometheus, incluster_operator: str
) -> None:
    monitor = cluster.get("-n", incluster_operator, "servicemonitors")["items"]
    assert len(monitor) == 1, "the chart's ServiceMonitor (metrics.serviceMonitor.enabled)"
    pool = f"serviceMonitor/{incluster_operator}/{monitor[0]['metadata']['name']}/0"
    pods = {
        p["metadata"]["name"]
        for p in cluster.get(
            "-n", incluster_operator, "pods", "-l", "app.kubernetes.io/instance=llmchain"
        )["items"]
    }

    def scraped() -> set[str]:
        return {
            t["labels"]["pod"]
            for t in prometheus.targets()
            if t["scrapePool"] == pool and t["health"] == "up"
        }

    assert wait_for(lambda: scraped() >= pods, timeout=90, what="both operator pods scraped")
    # Its own metrics, as scraped: exactly one of the two replicas leads.
    selector = f'namespace="{incluster_operator}"'
    leaders = wait_for(
        lambda: prometheus.values(f"sum(llmchain_operator_leader{{{selector}}})"),
        timeout=60,
        what="llmchain_operator_leader scraped",
    )
    assert leaders == [1.0]
    assert prometheus.values(f"sum(llmchain_operator_managed_apps{{{selector}}})")
