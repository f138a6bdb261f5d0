"""Helm, built from its Go module, installs and removes a chart on the local cluster."""

from __future__ import annotations

from pathlib import Path

from tests.support.cluster import Cluster


def test_helm_installs_upgrades_and_uninstalls_a_chart(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "hello"
    cluster.run(["helm", "create", str(chart)])
    cluster.run(["helm", "lint", str(chart)])
    cluster.run(
        ["helm", "install", "hello", str(chart), "-n", namespace, "--wait", "--timeout", "120s"]
    )
    listed = cluster.run(["helm", "list", "-n", namespace, "-o", "json"]).stdout
    assert '"name":"hello"' in listed and '"status":"deployed"' in listed
    deployment = cluster.get("-n", namespace, "deployment", "hello")
    assert deployment["status"]["readyReplicas"] == 1

    cluster.run(
        [
            "helm",
            "upgrade",
            "hello",
            str(chart),
            "-n",
            namespace,
            "--set",
            "replicaCount=2",
            "--wait",
            "--timeout",
            "120s",
        ]
    )
    assert cluster.get("-n", namespace, "deployment", "hello")["status"]["readyReplicas"] == 2

    cluster.run(["helm", "uninstall", "hello", "-n", namespace, "--wait"])
    gone = cluster.kubectl("-n", namespace, "get", "deployment", "hello", check=False)
    assert "NotFound" in gone.stderr
