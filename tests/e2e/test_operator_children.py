"""Children the operator cannot apply, on the local cluster with the real operator (#12 items 1
and 2): one the API server rejects, and names another app's children already have."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import yaml

from tests.support.apps import conditions, wait_condition, wait_reason
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.operator import OperatorProcess

QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
UPSTREAM_CRDS = ROOT / ".toolchain" / "crds"

# Passes the CRD's schema and CEL rules (they do not check every rule of a pod's tolerations),
# and the API server refuses it in the Deployment's pod template.
TOLERATION_SECONDS_WITHOUT_NO_EXECUTE = {
    "key": "dedicated",
    "operator": "Equal",
    "value": "llm",
    "effect": "NoSchedule",
    "tolerationSeconds": 60,
}


@pytest.fixture(scope="module", autouse=True)
def upstream_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(UPSTREAM_CRDS))


def apply(cluster: Cluster, namespace: str, app: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(app))


def named(name: str, **spec: Any) -> dict[str, Any]:
    app = copy.deepcopy(QA)
    app["metadata"]["name"] = name
    app["spec"].update(spec)
    return app


def exists(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    return cluster.kubectl("-n", namespace, "get", kind, name, check=False).returncode == 0


def events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=LLMChainApp,involvedObject.name={name},reason={reason}"
    items: list[dict[str, Any]] = cluster.get(
        "-n", namespace, "events", "--field-selector", selector
    )["items"]
    return items


def test_a_deployment_the_api_server_rejects_is_reported_and_the_rest_applied(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    app = named("rejected")
    app["spec"]["serving"]["tolerations"] = [TOLERATION_SECONDS_WITHOUT_NO_EXECUTE]
    apply(cluster, app_namespace, app)

    degraded = wait_reason(cluster, app_namespace, "rejected", "Degraded", "ChildRejected")
    assert degraded["status"] == "True"
    assert degraded["message"].startswith("Deployment rejected: ")
    field = "spec.template.spec.tolerations[0].effect"  # the API server's words name the field
    assert field in degraded["message"] and "tolerationSeconds" in degraded["message"]
    ready = conditions(cluster, app_namespace, "rejected")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ChildRejected")
    table = cluster.kubectl("-n", app_namespace, "get", "lca", "rejected").stdout
    assert table.splitlines()[1].split()[:2] == ["rejected", "False"], table

    assert not exists(cluster, app_namespace, "deployment", "rejected")
    for kind, name in (
        ("serviceaccount", "rejected"),
        ("configmap", "rejected-chain"),
        ("service", "rejected"),  # applied after the Deployment: the loop went on
        ("networkpolicy", "rejected"),
        ("configmap", "rejected-dashboard"),
    ):
        assert exists(cluster, app_namespace, kind, name), (kind, name)

    # Retried (5 and 10 s after the refusal) and resynced (every 5 s here): no second event.
    time.sleep(12)
    posted = events(cluster, app_namespace, "rejected", "ChildRejected")
    assert len(posted) == 1 and posted[0]["type"] == "Warning", posted
    assert field in posted[0]["message"]

    del app["spec"]["serving"]["tolerations"][0]["tolerationSeconds"]  # fixed
    apply(cluster, app_namespace, app)
    wait_condition(cluster, app_namespace, "rejected", "Ready", "True")
    assert conditions(cluster, app_namespace, "rejected")["Degraded"]["status"] == "False"


def _snapshot(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj = cluster.get("-n", namespace, kind, name)
    meta = obj["metadata"]
    return {
        "uid": meta["uid"],
        "owners": meta["ownerReferences"],
        "labels": meta["labels"],
        "generation": meta.get("generation"),
        "spec": obj["spec"],
    }


def test_an_app_never_takes_over_the_children_of_another(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    apply(
        cluster, app_namespace, named("hc", chain={**QA["spec"]["chain"], "memory": {"window": 3}})
    )
    wait_condition(cluster, app_namespace, "hc", "Ready", "True", timeout=90)
    hc_uid = cluster.get("-n", app_namespace, "lca", "hc")["metadata"]["uid"]
    held = ("service", "deployment", "networkpolicy")
    before = {kind: _snapshot(cluster, app_namespace, kind, "hc-memory") for kind in held}
    assert all(snap["owners"][0]["uid"] == hc_uid for snap in before.values())

    apply(cluster, app_namespace, named("hc-memory"))  # wants Service hc-memory, and more
    degraded = wait_reason(cluster, app_namespace, "hc-memory", "Degraded", "NameConflict")
    assert degraded["status"] == "True"
    for kind in ("Service", "Deployment", "NetworkPolicy"):
        expected = f"{kind} hc-memory is controlled by LLMChainApp hc, not by this app"
        assert expected in degraded["message"], degraded["message"]
    ready = conditions(cluster, app_namespace, "hc-memory")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    posted = events(cluster, app_namespace, "hc-memory", "NameConflict")
    assert any("Service hc-memory is controlled by LLMChainApp hc" in e["message"] for e in posted)

    # The names it does not share are its own.
    chain = cluster.get("-n", app_namespace, "configmap", "hc-memory-chain")
    other_uid = cluster.get("-n", app_namespace, "lca", "hc-memory")["metadata"]["uid"]
    assert chain["metadata"]["ownerReferences"][0]["uid"] == other_uid

    time.sleep(6)  # a resync of both apps (every 5 s here)
    after = {kind: _snapshot(cluster, app_namespace, kind, "hc-memory") for kind in held}
    assert after == before
    hc = conditions(cluster, app_namespace, "hc")
    assert (hc["Ready"]["status"], hc["Degraded"]["status"]) == ("True", "False")


def test_an_operator_upgrade_leaves_a_build_job_as_it_is(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    """A Job's pod template is immutable: an operator started with a new server image (as an
    upgrade is) updates the Deployment and leaves the model build Job alone, instead of having
    the Job refused (ChildRejected) for as long as it lives."""
    app = named("upgraded", model={**QA["spec"]["model"], "volume": {"size": "1Gi"}})
    apply(cluster, app_namespace, app)
    wait_for(lambda: cluster.get("-n", app_namespace, "jobs")["items"], timeout=60, what="the Job")
    (job,) = cluster.get("-n", app_namespace, "jobs")["items"]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]

    new_image = "example.invalid/llmchain-server:upgraded"
    before = dict(operator.env)
    operator.stop()
    operator.env = {**before, "LLMCHAIN_SERVER_IMAGE": new_image}
    try:
        operator.start()

        def deployment_upgraded() -> bool:
            deployment = cluster.get("-n", app_namespace, "deployment", "upgraded")
            containers = deployment["spec"]["template"]["spec"]["containers"]
            return any(c["image"] == new_image for c in containers)

        wait_for(deployment_upgraded, timeout=60, what="the Deployment on the new image")
        time.sleep(6)  # one more resync (5 s in the tests)
        degraded = conditions(cluster, app_namespace, "upgraded")["Degraded"]
        assert degraded["reason"] != "ChildRejected", degraded["message"]
        assert events(cluster, app_namespace, "upgraded", "ChildRejected") == []
        (after,) = cluster.get("-n", app_namespace, "jobs")["items"]
        assert after["metadata"]["uid"] == job["metadata"]["uid"]
        assert after["spec"]["template"]["spec"]["containers"][0]["image"] == image
    finally:
        operator.stop()
        operator.env = before
        operator.start()
