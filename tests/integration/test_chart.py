"""The Helm chart lints, validates its values, renders what deploy/ holds, and the API server
accepts what it renders."""

from __future__ import annotations

import subprocess

from tests.support.cluster import ROOT, TOOLBIN, Cluster

CHART = ROOT / "charts" / "llmchain-operator"
HELM = str(TOOLBIN / "helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm(
        "template",
        "llmchain-operator",
        str(CHART),
        "--namespace",
        "llmchain-system",
        "--kube-version",
        "1.36.3",
        *args,
        check=check,
    )


def test_chart_lints_strictly() -> None:
    result = helm("lint", "--strict", str(CHART), "--kube-version", "1.36.3", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_manifests_are_rendered_from_the_chart() -> None:
    rendered = subprocess.run(
        [str(ROOT / "hack" / "render-manifests.sh")], check=True, capture_output=True, text=True
    ).stdout
    committed = (ROOT / "deploy" / "llmchain-operator.yaml").read_text()
    assert rendered == committed, "deploy/ is stale: run `make manifests`"


def test_values_schema_rejects_bad_values() -> None:
    bad = template("--set", "replicaCount=0", check=False)
    assert bad.returncode != 0 and "replicaCount" in bad.stderr
    unknown = template("--set", "replicas=3", check=False)
    assert unknown.returncode != 0 and "replicas" in unknown.stderr


def test_every_option_renders_objects_the_api_server_accepts(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "namespace.yaml"))
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / ".toolchain" / "crds")
    )
    rendered = template(
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.host=llmchain.example",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "defaults.serverImage=x/y:1",
    ).stdout
    assert "--webhook-port=9443" in rendered and "--namespace=team-b" in rendered
    assert "--no-leader-election" in rendered and "kind: ServiceMonitor" in rendered
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "Warning" not in result.stderr, result.stderr
