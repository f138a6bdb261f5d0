"""The operator, as a real process under its own ServiceAccount, on the local cluster."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.apps import conditions, wait_condition
from tests.support.cluster import ROOT, Cluster
from tests.support.operator import LLMCHAIN, OperatorProcess
from tests.support.waiting import wait_for

EXAMPLES = sorted((ROOT / "examples").glob("*/app.yaml"))
QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
UPSTREAM_CRDS = ROOT / ".toolchain" / "crds"


@pytest.fixture(scope="module", autouse=True)
def upstream_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(UPSTREAM_CRDS))


def apply(cluster: Cluster, namespace: str, app: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(app))


def exists(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    return cluster.kubectl("-n", namespace, "get", kind, name, check=False).returncode == 0


def rendered_children(path: Path, namespace: str) -> list[tuple[str, str]]:
    import subprocess

    out = subprocess.run(
        [str(LLMCHAIN), "render", str(path), "-n", namespace],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d]


def prebound_volume(cluster: Cluster, namespace: str, claim: str) -> None:
    """KWOK has no storage provisioner: a PersistentVolume bound in advance to the claim."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pv-{namespace}", "labels": {"llmchain.io/test": "true"}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": f"/tmp/{namespace}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_becomes_ready_with_all_its_children(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str, path: Path
) -> None:
    app = yaml.safe_load(path.read_text())
    name = app["metadata"]["name"]
    serving = app["spec"].get("serving", {})
    if "apiKeySecretRef" in serving:
        ref = serving["apiKeySecretRef"]
        cluster.kubectl(
            "-n",
            app_namespace,
            "create",
            "secret",
            "generic",
            ref["name"],
            f"--from-literal={ref['key']}=not-a-real-key",
        )
    if "volume" in app["spec"]["model"]:
        prebound_volume(cluster, app_namespace, f"{name}-model")
    if (path.parent / "kustomization.yaml").exists():  # the app with its ConfigMaps
        cluster.kubectl("-n", app_namespace, "apply", "-k", str(path.parent))
    else:
        cluster.kubectl("-n", app_namespace, "apply", "-f", str(path))

    ready = wait_condition(cluster, app_namespace, name, "Ready", "True", timeout=90)
    assert ready["reason"] == "Available"
    status = cluster.get("-n", app_namespace, "lca", name)["status"]
    assert status["endpoint"] == f"http://{name}.{app_namespace}.svc.cluster.local"
    assert status["observedGeneration"] == 1
    assert status["modelDigest"].startswith("sha256:")
    assert conditions(cluster, app_namespace, name)["ModelReady"]["status"] == "True"
    if "retrieval" in app["spec"]:
        assert conditions(cluster, app_namespace, name)["IndexReady"]["status"] == "True"
        assert status["retrieval"]["corpusDigest"].startswith("sha256:")

    uid = cluster.get("-n", app_namespace, "lca", name)["metadata"]["uid"]
    for kind, child in rendered_children(path, app_namespace):
        obj = cluster.get("-n", app_namespace, kind.lower(), child)
        owners = obj["metadata"]["ownerReferences"]
        assert owners[0]["uid"] == uid and owners[0]["controller"] is True, (kind, child)


def test_spec_change_rolls_out_and_observed_generation_follows(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    apply(cluster, app_namespace, QA)
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True")
    before = cluster.get("-n", app_namespace, "deployment", "qa-chain")
    changed = copy.deepcopy(QA)
    changed["spec"]["chain"]["steps"][0]["prompt"] = "Q: {{ question }}\nA:"
    apply(cluster, app_namespace, changed)

    wait_for(
        lambda: (
            cluster.get("-n", app_namespace, "lca", "qa-chain")["status"].get("observedGeneration")
            == 2
        ),
        timeout=30,
        what="observedGeneration 2",
    )
    after = cluster.get("-n", app_namespace, "deployment", "qa-chain")
    key = "llmchain.io/chain-hash"
    assert (
        after["spec"]["template"]["metadata"]["annotations"][key]
        != before["spec"]["template"]["metadata"]["annotations"][key]
    )
    chain = cluster.get("-n", app_namespace, "configmap", "qa-chain-chain")["data"]["chain.yaml"]
    assert "Q: {{ question }}" in chain
    cluster.kubectl(
        "-n", app_namespace, "rollout", "status", "deployment/qa-chain", "--timeout=60s"
    )
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True")


def test_deleted_and_hand_edited_children_are_restored(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    apply(cluster, app_namespace, QA)
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True")
    for kind, name in (
        ("service", "qa-chain"),
        ("configmap", "qa-chain-chain"),
        ("networkpolicy", "qa-chain"),
    ):
        cluster.kubectl("-n", app_namespace, "delete", kind, name)
        wait_for(
            lambda kind=kind, name=name: exists(cluster, app_namespace, kind, name),
            timeout=20,
            what=f"{kind}/{name} to be recreated",
        )

    image = cluster.get("-n", app_namespace, "deployment", "qa-chain")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    cluster.kubectl(
        "-n",
        app_namespace,
        "set",
        "image",
        "deployment/qa-chain",
        "server=registry.invalid/hijacked:1",
    )

    def restored() -> bool:
        spec = cluster.get("-n", app_namespace, "deployment", "qa-chain")["spec"]
        return bool(spec["template"]["spec"]["containers"][0]["image"] == image)

    wait_for(restored, timeout=20, what="the server image to be restored")


def test_deleting_the_app_garbage_collects_every_child(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    apply(cluster, app_namespace, QA)
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True")
    cluster.kubectl("-n", app_namespace, "delete", "lca", "qa-chain", "--timeout=30s")
    selector = "app.kubernetes.io/instance=qa-chain"
    kinds = "deployments,services,configmaps,serviceaccounts,pdb,networkpolicies,pods"
    wait_for(
        lambda: not cluster.get("-n", app_namespace, kinds, "-l", selector)["items"],
        timeout=60,
        what="every child to be garbage-collected",
    )


def test_invalid_template_is_degraded_without_touching_running_children(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    apply(cluster, app_namespace, QA)
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True")
    before = cluster.get("-n", app_namespace, "deployment", "qa-chain")
    broken = copy.deepcopy(QA)
    broken["spec"]["chain"]["steps"][0]["prompt"] = "{{ question }} {{ context }}"
    apply(cluster, app_namespace, broken)

    degraded = wait_condition(cluster, app_namespace, "qa-chain", "Degraded", "True")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.chain.steps[0].prompt: uses undeclared variable 'context'" in degraded["message"]
    assert conditions(cluster, app_namespace, "qa-chain")["Ready"]["status"] == "False"
    events = cluster.get("-n", app_namespace, "events", "--field-selector", "reason=InvalidSpec")[
        "items"
    ]
    assert events and "context" in events[0]["message"]
    after = cluster.get("-n", app_namespace, "deployment", "qa-chain")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert (
        "context"
        not in cluster.get("-n", app_namespace, "configmap", "qa-chain-chain")["data"]["chain.yaml"]
    )

    apply(cluster, app_namespace, QA)
    wait_condition(cluster, app_namespace, "qa-chain", "Degraded", "False")


def test_missing_secret_is_degraded_until_it_exists(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    app = copy.deepcopy(QA)
    app["spec"]["serving"] = {"apiKeySecretRef": {"name": "qa-keys", "key": "key"}}
    apply(cluster, app_namespace, app)
    degraded = wait_condition(cluster, app_namespace, "qa-chain", "Degraded", "True")
    assert "spec.serving.apiKeySecretRef: Secret qa-keys not found" in degraded["message"]
    assert not exists(cluster, app_namespace, "deployment", "qa-chain")

    cluster.kubectl(
        "-n",
        app_namespace,
        "create",
        "secret",
        "generic",
        "qa-keys",
        "--from-literal=key=s3cr3t-value",
    )
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True", timeout=60)
    status = json.dumps(cluster.get("-n", app_namespace, "lca", "qa-chain")["status"])
    assert "s3cr3t" not in status
    assert "s3cr3t" not in operator.log.read_text()


def test_switching_autoscaling_on_keeps_the_replica_count(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    app = copy.deepcopy(QA)
    app["spec"]["serving"] = {"replicas": 3}
    apply(cluster, app_namespace, app)
    wait_for(
        lambda: exists(cluster, app_namespace, "deployment", "qa-chain"),
        timeout=60,
        what="the operator to create the Deployment",
    )
    cluster.kubectl(
        "-n", app_namespace, "rollout", "status", "deployment/qa-chain", "--timeout=60s"
    )
    wait_for(
        lambda: cluster.get("-n", app_namespace, "deployment", "qa-chain")["spec"]["replicas"] == 3,
        timeout=30,
        what="3 replicas",
    )

    app["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 6}
    apply(cluster, app_namespace, app)
    seen: list[int] = []

    def handed_over() -> bool:
        """True once the HPA exists and the operator no longer owns spec.replicas; every look
        records spec.replicas, so a dip between the hand-over's two applies would show."""
        deployment = cluster.get(
            "-n", app_namespace, "deployment", "qa-chain", "--show-managed-fields"
        )
        seen.append(deployment["spec"]["replicas"])
        owners = [
            m["manager"]
            for m in deployment["metadata"]["managedFields"]
            if "f:replicas" in json.dumps(m.get("fieldsV1", {}).get("f:spec", {}))
        ]
        return "llmchain-operator" not in owners and exists(
            cluster, app_namespace, "hpa", "qa-chain"
        )

    wait_for(handed_over, timeout=30, interval=0.3, what="the HPA and the hand-over of replicas")
    assert set(seen) == {3}, f"replicas dipped during the hand-over: {seen}"

    del app["spec"]["autoscaling"]
    apply(cluster, app_namespace, app)
    wait_for(
        lambda: not exists(cluster, app_namespace, "hpa", "qa-chain"),
        timeout=30,
        what="the HPA to be pruned",
    )
    assert cluster.get("-n", app_namespace, "deployment", "qa-chain")["spec"]["replicas"] == 3


def test_the_model_is_built_once_per_digest(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    app = copy.deepcopy(QA)
    app["spec"]["model"]["volume"] = {"size": "1Gi"}
    app["spec"]["serving"] = {"replicas": 3}
    prebound_volume(cluster, app_namespace, "qa-chain-model")
    apply(cluster, app_namespace, app)
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True", timeout=90)
    jobs = cluster.get("-n", app_namespace, "jobs")["items"]
    assert len(jobs) == 1
    assert (
        conditions(cluster, app_namespace, "qa-chain")["ModelReady"]["reason"] == "BuildSucceeded"
    )
    first = jobs[0]["metadata"]["name"]

    app["spec"]["model"]["quantization"] = "int4"
    apply(cluster, app_namespace, app)

    def rebuilt() -> list[str] | None:
        names = [j["metadata"]["name"] for j in cluster.get("-n", app_namespace, "jobs")["items"]]
        return names if names and first not in names else None

    names = wait_for(rebuilt, timeout=60, what="a new build Job replacing the old")
    assert len(names) == 1
    wait_condition(cluster, app_namespace, "qa-chain", "Ready", "True", timeout=90)


MANAGED_APPS = "llmchain_operator_managed_apps "


def test_operator_metrics_count_reconciles(
    operator: OperatorProcess, cluster: Cluster, app_namespace: str
) -> None:
    second = copy.deepcopy(QA)
    second["metadata"]["name"] = "qa-chain-2"
    for app in (QA, second):
        apply(cluster, app_namespace, app)
    text = operator.metrics()
    success = [
        line
        for line in text.splitlines()
        if line.startswith('llmchain_operator_reconciles_total{result="success"}')
    ]
    assert success and float(success[0].split()[-1]) > 0
    assert "llmchain_operator_reconcile_duration_seconds_bucket" in text

    def counts_every_app() -> bool:
        gauge = next(
            line for line in operator.metrics().splitlines() if line.startswith(MANAGED_APPS)
        )
        apps = len(cluster.get("llmchainapps", "-A")["items"])
        return float(gauge.split()[-1]) == apps >= 2

    # Every app the operator sees, not 1: kopf gives each object its own copy of the memo.
    wait_for(counts_every_app, timeout=30, what="the managed-apps gauge to count every app")
