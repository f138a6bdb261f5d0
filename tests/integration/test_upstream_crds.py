"""Upstream CRDs from `make toolchain` install, and the API server validates with them."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.cluster import ROOT, TOOLBIN, Cluster

CRDS = ROOT / ".toolchain" / "crds"
EXPECTED = {
    # Every monitoring.coreos.com CRD: the Prometheus Operator in the cluster needs them all.
    *(
        f"{plural}.monitoring.coreos.com"
        for plural in (
            "alertmanagerconfigs",
            "alertmanagers",
            "podmonitors",
            "probes",
            "prometheusagents",
            "prometheuses",
            "prometheusrules",
            "scrapeconfigs",
            "servicemonitors",
            "thanosrulers",
        )
    ),
    # Every KEDA CRD: its operator watches them all.
    *(
        f"{plural}.keda.sh"
        for plural in (
            "scaledobjects",
            "scaledjobs",
            "triggerauthentications",
            "clustertriggerauthentications",
        )
    ),
    "cloudeventsources.eventing.keda.sh",
    "clustercloudeventsources.eventing.keda.sh",
}


@pytest.fixture(scope="module")
def upstream_crds(cluster: Cluster) -> Cluster:
    # Server-side apply: these CRDs are too large for the last-applied annotation.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for name in EXPECTED:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return cluster


SERVICE_MONITOR = """\
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {{name: qa-chain}}
spec:
  selector: {{matchLabels: {{app.kubernetes.io/name: qa-chain}}}}
  endpoints: {endpoints}
"""


def test_the_extracted_files_are_the_expected_crds() -> None:
    names = {p.name for p in CRDS.glob("*.yaml")}
    assert {f"{n.split('.', 1)[1]}_{n.split('.', 1)[0]}.yaml" for n in EXPECTED} == names


def test_valid_service_monitor_is_accepted(upstream_crds: Cluster, namespace: str) -> None:
    manifest = SERVICE_MONITOR.format(endpoints="[{port: http, path: /metrics, interval: 15s}]")
    upstream_crds.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)
    stored = upstream_crds.get("-n", namespace, "servicemonitor", "qa-chain")
    assert stored["spec"]["endpoints"][0]["interval"] == "15s"


def test_invalid_service_monitor_is_rejected_naming_the_field(
    upstream_crds: Cluster, namespace: str
) -> None:
    manifest = SERVICE_MONITOR.format(endpoints="[{port: http, interval: every-now-and-then}]")
    result = upstream_crds.kubectl("-n", namespace, "apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert "spec.endpoints[0].interval" in result.stderr
    missing = upstream_crds.kubectl(
        "-n", namespace, "get", "servicemonitor", "qa-chain", check=False
    )
    assert "NotFound" in missing.stderr


def test_keda_scaled_object_is_validated(upstream_crds: Cluster, namespace: str) -> None:
    manifest = textwrap.dedent("""\
        apiVersion: keda.sh/v1alpha1
        kind: ScaledObject
        metadata: {name: qa-chain}
        spec:
          scaleTargetRef: {name: qa-chain}
          minReplicaCount: 1
          maxReplicaCount: 4
          triggers:
          - type: prometheus
            metadata: {serverAddress: "http://prometheus:9090", query: "sum(x)", threshold: "8"}
        """)
    upstream_crds.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)
    bad = manifest.replace("minReplicaCount: 1", "minReplicaCount: lots")
    result = upstream_crds.kubectl("-n", namespace, "apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.minReplicaCount" in result.stderr and "integer" in result.stderr


def test_promtool_checks_alerting_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        textwrap.dedent("""\
        groups:
        - name: llmchain
          rules:
          - alert: LLMChainHighLatency
            expr: histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 5
            for: 10m
        """)
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("> 5", "> > 5"))
    promtool = str(TOOLBIN / "promtool")
    ok = subprocess.run([promtool, "check", "rules", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True)
    assert fail.returncode != 0
    assert "parse error" in (fail.stdout + fail.stderr)
