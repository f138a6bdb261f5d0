"""spec.retrieval on the local cluster with the operator from source: the document ConfigMap
watched (an edit re-indexes without touching the app), one index Job per digest into the model
volume, a missing ConfigMap named until it is created."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster
from tests.support.operator import OperatorProcess
from tests.support.waiting import wait_for

EXAMPLE = ROOT / "examples" / "05-docs-qa"
DOCS_QA: dict[str, Any] = yaml.safe_load((EXAMPLE / "app.yaml").read_text())


def configmap(pages: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "heronfeed-docs"},
            "data": pages,
        }
    )


def index_jobs(cluster: Cluster, namespace: str) -> set[str]:
    jobs = cluster.get("-n", namespace, "jobs", "-l", "app.kubernetes.io/component=index-build")
    return {j["metadata"]["name"] for j in jobs["items"]}


def test_a_configmap_edit_builds_a_new_index_in_a_job_and_rolls_the_pods(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    app = copy.deepcopy(DOCS_QA)
    app["spec"]["model"]["volume"] = {"size": "4Gi"}
    cluster.kubectl("-n", app_namespace, "apply", "-f", "-", input=json.dumps(app))
    degraded = wait_condition(cluster, app_namespace, "docs-qa", "Degraded", "True")
    assert degraded["message"] == (
        "spec.retrieval.documents.configMaps[0].name: ConfigMap heronfeed-docs not found"
    )

    # Created after the app: the ConfigMap watch reconciles it (no resync within the test).
    pages = {"ports.md": "Heronfeed listens on port 7400."}
    cluster.kubectl("-n", app_namespace, "apply", "-f", "-", input=configmap(pages))
    wait_for(lambda: len(index_jobs(cluster, app_namespace)) == 1, timeout=30, what="index Job")
    [first] = index_jobs(cluster, app_namespace)
    job = cluster.get("-n", app_namespace, "job", first)
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "docs-qa-model"}} in volumes
    # The status is written after the children are applied: wait for it, not just the Job.
    status = wait_for(
        lambda: (
            (s := cluster.get("-n", app_namespace, "lca", "docs-qa")["status"]).get("retrieval")
            and s
        ),
        timeout=30,
        what="status.retrieval",
    )
    assert status["retrieval"]["indexDigest"].removeprefix("sha256:")[:12] in first

    def waited_for() -> str:
        deployment = cluster.get("-n", app_namespace, "deployment", "docs-qa")
        wait = deployment["spec"]["template"]["spec"]["initContainers"][-1]
        return str(wait["args"][wait["args"].index("--digest") + 1])

    before = waited_for()
    assert before == status["retrieval"]["indexDigest"]

    pages["ports.md"] = "Heronfeed listens on port 7500."
    cluster.kubectl("-n", app_namespace, "apply", "-f", "-", input=configmap(pages))
    # The old digest's Job is pruned with the pods that waited for it.
    wait_for(
        lambda: index_jobs(cluster, app_namespace) - {first}, timeout=30, what="a new index Job"
    )
    assert waited_for() != before
    generation = cluster.get("-n", app_namespace, "lca", "docs-qa")["metadata"]["generation"]
    assert generation == 1  # the app itself was not touched
