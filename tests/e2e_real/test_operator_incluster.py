"""The operator in the cluster, as `helm install` puts it there: two real pods, one leading; a
killed leader pod hands over; `helm upgrade` to a new image rolls without a reconcile gap longer
than the lease. The apps here only need reconciling, so their pods go to the KWOK nodes."""

from __future__ import annotations

import copy
import subprocess
import threading
import time
from typing import Any

import yaml

from tests.support.cluster import ROOT, Cluster
from tests.support.realnode import NODE_NAME, NODE_SCRIPT, image, sigkill_container
from tests.support.waiting import wait_for

LEASE_SECONDS = 15  # the chart's default leaderElection.leaseSeconds
QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get(
        "-n", "llmchain-system", "pods", "-l", "app.kubernetes.io/instance=llmchain"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def leader_gauge(cluster: Cluster, pod: str) -> float:
    script = (
        "import urllib.request; print([l for l in urllib.request.urlopen("
        "'http://127.0.0.1:8080/metrics').read().decode().splitlines() "
        "if l.startswith('llmchain_operator_leader ')][0].split()[1])"
    )
    out = cluster.kubectl("-n", "llmchain-system", "exec", pod, "--", "python3", "-c", script)
    return float(out.stdout.strip())


def holder_pod(cluster: Cluster) -> str:
    holder = cluster.get("-n", "llmchain-system", "lease", "llmchain-operator")["spec"].get(
        "holderIdentity", ""
    )
    names = [p["metadata"]["name"] for p in operator_pods(cluster)]
    return next((n for n in names if holder.startswith(f"{n}-")), "")


def apply_app(cluster: Cluster, namespace: str, name: str, max_tokens: int = 64) -> None:
    app = copy.deepcopy(QA)
    app["metadata"]["name"] = name
    app["spec"]["chain"]["steps"][0]["generation"]["maxTokens"] = max_tokens
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(app))


def reconciled(cluster: Cluster, namespace: str, name: str) -> bool:
    app = cluster.get("-n", namespace, "lca", name)
    status = app.get("status", {})
    return bool(status.get("observedGeneration") == app["metadata"]["generation"])


def test_two_real_replicas_one_leads_and_a_killed_leader_hands_over(
    cluster: Cluster, incluster_operator: str, namespace: str
) -> None:
    pods = operator_pods(cluster)
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == image("operator")
    leader = wait_for(lambda: holder_pod(cluster), timeout=60, what="a leader")
    gauges = {p["metadata"]["name"]: leader_gauge(cluster, p["metadata"]["name"]) for p in pods}
    assert gauges[leader] == 1 and sum(gauges.values()) == 1, gauges

    apply_app(cluster, namespace, "before")
    wait_for(lambda: reconciled(cluster, namespace, "before"), timeout=60, what="reconciled")

    # SIGKILL of the leader's process, no release: the standby takes over when the lease
    # expires (the kubelet restarts the killed container, which then stands by).
    sigkill_container(cluster.get("-n", "llmchain-system", "pod", leader), "operator")
    killed = time.monotonic()
    apply_app(cluster, namespace, "after")
    wait_for(
        lambda: reconciled(cluster, namespace, "after"),
        timeout=LEASE_SECONDS * 4,
        what="the new leader to reconcile",
    )
    handover = time.monotonic() - killed
    print(f"hand-over after a SIGKILLed leader pod: {handover:.1f}s")
    assert handover < LEASE_SECONDS * 2 + 10, f"hand-over took {handover:.1f}s"
    assert holder_pod(cluster) not in ("", leader)
    restarted = cluster.get("-n", "llmchain-system", "pod", leader)["status"]["containerStatuses"]
    assert restarted[0]["restartCount"] == 1


def test_helm_upgrade_to_a_new_image_rolls_without_a_reconcile_gap(
    cluster: Cluster, incluster_operator: str, namespace: str
) -> None:
    wait_for(lambda: len(operator_pods(cluster)) == 2 and holder_pod(cluster), timeout=90)
    apply_app(cluster, namespace, "probe", max_tokens=10)
    wait_for(lambda: reconciled(cluster, namespace, "probe"), timeout=60, what="reconciled")
    # A new image: the same contents under another tag, imported into the node.
    current = image("operator")
    new = f"{current}-upgrade"
    subprocess.run(
        [str(NODE_SCRIPT), "ctr", "images", "tag", "--force", current, new],
        check=True,
        capture_output=True,
    )
    lags: list[float] = []
    unreconciled: list[str] = []
    stop = threading.Event()

    def change_the_spec_every_second() -> None:
        tokens = 11
        while not stop.is_set():
            apply_app(cluster, namespace, "probe", max_tokens=tokens)
            changed = time.monotonic()
            try:
                wait_for(
                    lambda: reconciled(cluster, namespace, "probe"),
                    timeout=LEASE_SECONDS * 4,
                    interval=0.2,  # the lag is measured to within this
                    what=f"maxTokens {tokens} to be reconciled",
                )
            except AssertionError as error:  # reported by the test thread, below
                unreconciled.append(str(error))
                return
            lags.append(time.monotonic() - changed)
            tokens += 1
            time.sleep(1)  # the pace of the changes, on purpose: one a second

    watcher = threading.Thread(target=change_the_spec_every_second, daemon=True)
    watcher.start()
    try:
        wait_for(
            lambda: len(lags) >= 2 or unreconciled,
            timeout=60,
            what="two changes reconciled before the upgrade",
        )
        tag = new.rsplit(":", 1)[1]
        subprocess.run(
            [str(ROOT / "hack" / "operator.sh"), "install", "--set", f"image.tag={tag}"],
            check=True,
            timeout=300,
        )
        pods = operator_pods(cluster)
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {new}
        wait_for(lambda: holder_pod(cluster), timeout=60, what="a leader after the upgrade")
        after = len(lags)
        wait_for(
            lambda: len(lags) >= after + 3 or unreconciled,
            timeout=LEASE_SECONDS * 4,
            what="three changes reconciled by the new leader",
        )
    finally:
        stop.set()
        watcher.join(timeout=120)
    assert not unreconciled, unreconciled
    print(f"reconcile lag during helm upgrade: max {max(lags):.2f}s over {len(lags)} changes")
    assert len(lags) >= 5, lags
    assert max(lags) < LEASE_SECONDS, f"a change waited {max(lags):.1f}s for a reconcile: {lags}"
