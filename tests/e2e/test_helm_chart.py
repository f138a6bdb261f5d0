"""`helm install` of the operator chart on the local cluster."""

from __future__ import annotations

from tests.support.cluster import ROOT, Cluster

CHART = ROOT / "charts" / "llmchain-operator"


def test_helm_installs_and_uninstalls_the_operator(cluster: Cluster, namespace: str) -> None:
    release = f"op-{namespace[-6:]}"
    cluster.run(
        [
            "helm",
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "120s",
            "--set",
            "replicaCount=2",
        ]
    )
    name = f"{release}-llmchain-operator"
    deployment = cluster.get("-n", namespace, "deployment", name)
    assert deployment["status"]["readyReplicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["llmchain", "operator"]
    assert cluster.get("clusterrole", name)["rules"]
    assert cluster.get("-n", namespace, "role", f"{name}-leader-election")
    who = f"--as=system:serviceaccount:{namespace}:{name}"
    allowed = cluster.kubectl(
        "auth", "can-i", "patch", "deployments", "-n", "default", who, check=False
    ).stdout.strip()
    assert allowed == "yes"
    denied = cluster.kubectl(
        "auth", "can-i", "list", "secrets", "-n", "default", who, check=False
    ).stdout.strip()
    assert denied == "no"
    assert cluster.get("crd", "llmchainapps.llmchain.io")

    cluster.run(["helm", "uninstall", release, "-n", namespace, "--wait"])
    gone = cluster.kubectl("get", "clusterrole", name, check=False)
    assert "NotFound" in gone.stderr
