"""What blocks an app, named in its conditions as the kubelet reports it (#12 item 5b), with
real pods on the real node: an image that cannot be pulled (no registry is reachable from the
node) and a model init container that crash-loops (its download answers 404), with its last
log line. The operator runs from source as a local process with its ServiceAccount (the
chart's RBAC, pods/log included) and the images built here, resyncing every 5 s: pods are not
watched, the resync is what brings their state in. tests/e2e/test_blockers.py has the
blockers the scheduler reports (unbound PVC, unschedulable pod), on the KWOK nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import OPERATOR_ENV
from tests.support.apps import conditions, wait_reason
from tests.support.cluster import ROOT, Cluster
from tests.support.operator import OperatorProcess, install_operator_identity
from tests.support.realnode import image

QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
ABSENT_IMAGE = "localhost/llmchain/absent:0"


@pytest.fixture(scope="module")
def local_operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`llmchain operator` from this checkout, as its ServiceAccount, with the images built
    here for the pods it makes."""
    workdir = tmp_path_factory.mktemp("operator")
    env = {
        **OPERATOR_ENV,
        "LLMCHAIN_SERVER_IMAGE": image("server"),
        "LLMCHAIN_CACHE_IMAGE": image("redis"),
        "LLMCHAIN_MEMORY_IMAGE": image("redis"),
    }
    process = OperatorProcess(install_operator_identity(cluster, workdir), workdir, env=env)
    process.start()
    yield process
    process.stop()


def small_app(name: str, source: dict[str, Any]) -> dict[str, Any]:
    """Example 01 under another name, with another model source, asking for little CPU."""
    app = json.loads(json.dumps(QA))
    app["metadata"]["name"] = name
    app["spec"]["model"]["source"] = source
    app["spec"]["serving"] = {
        "replicas": 1,
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    }
    return app


def the_pod(cluster: Cluster, namespace: str, name: str) -> str:
    pods = cluster.get("-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={name}")
    return str(pods["items"][0]["metadata"]["name"])


def test_an_image_pull_back_off_is_named_with_the_kubelets_message(
    cluster: Cluster, local_operator: OperatorProcess, real_namespace: str
) -> None:
    """A model image source whose image is not on the node: the kubelet tries to pull it and
    cannot (nothing answers for `localhost`)."""
    source = {"image": {"reference": ABSENT_IMAGE, "path": "/model/m.gguf"}}
    app = small_app("pull", source)
    cluster.kubectl("-n", real_namespace, "apply", "-f", "-", input=json.dumps(app))

    model = wait_reason(
        cluster, real_namespace, "pull", "ModelReady", "ImagePullBackOff", timeout=180
    )
    pod = the_pod(cluster, real_namespace, "pull")
    expected = (
        f"The model build is blocked: Pod {pod}: init container model-source cannot pull image "
        f"{ABSENT_IMAGE}: "
    )
    assert model["message"].startswith(expected), model["message"]
    assert len(model["message"]) > len(expected) + 10, "the kubelet's error is missing"
    ready = conditions(cluster, real_namespace, "pull")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ImagePullBackOff")
    assert ready["message"] == model["message"].removeprefix("The model build is blocked: ")


def test_a_crash_looping_model_init_container_is_named_with_its_last_log_line(
    cluster: Cluster, local_operator: OperatorProcess, real_namespace: str, model_files: str
) -> None:
    """A model URL the file server answers with 404: the model init container fails, the
    kubelet restarts it with back-off, and the status carries the line it died with."""
    url = model_files.rsplit("/", 1)[0] + "/absent.gguf?token=not-for-the-status"
    source = {"url": {"url": url, "sha256": "0" * 64}}
    app = small_app("crash", source)
    cluster.kubectl("-n", real_namespace, "apply", "-f", "-", input=json.dumps(app))

    model = wait_reason(
        cluster, real_namespace, "crash", "ModelReady", "CrashLoopBackOff", timeout=240
    )
    pod = the_pod(cluster, real_namespace, "crash")
    assert model["message"] == (
        f"The model build is blocked: Pod {pod}: init container model is crash-looping (exit "
        "code 1): Error: cannot download http://models.llmchain.local/absent.gguf: HTTP 404 "
        "File not found"
    ), model["message"]
    assert "not-for-the-status" not in json.dumps(conditions(cluster, real_namespace, "crash"))
    ready = conditions(cluster, real_namespace, "crash")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoopBackOff")
    # The line came from the container's log, which the operator's identity may read: of its
    # current run when the kubelet reports it terminated, else of its previous run (a
    # collected run's log is gone, so ask for both).
    logs = [
        cluster.kubectl("-n", real_namespace, "logs", pod, "-c", "model", *previous, check=False)
        for previous in ([], ["--previous"])
    ]
    assert any("HTTP 404 File not found" in log.stdout for log in logs), logs
