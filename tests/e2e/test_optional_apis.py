"""Without the Prometheus Operator and KEDA APIs the app still runs; a condition and an event
say what was skipped, and the objects appear once the APIs are installed."""

from __future__ import annotations

from tests.support.apps import wait_condition
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.operator import OperatorProcess

UPSTREAM_CRDS = ROOT / ".toolchain" / "crds"
GPU_EXAMPLE = ROOT / "examples" / "02-gpu-autoscaled" / "app.yaml"


def test_missing_optional_apis_are_skipped_and_reported(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str
) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "-f", str(UPSTREAM_CRDS))
    try:
        cluster.kubectl(
            "-n",
            app_namespace,
            "create",
            "secret",
            "generic",
            "support-keys",
            "--from-literal=key=k",
        )
        app = GPU_EXAMPLE.read_text().replace(
            "    volume: {size: 2Gi, accessMode: ReadWriteMany}\n", ""
        )
        cluster.kubectl("-n", app_namespace, "apply", "-f", "-", input=app)
        cond = wait_condition(cluster, app_namespace, "support-chat", "OptionalAPIs", "False")
        assert cond["reason"] == "APINotInstalled"
        for skipped in (
            "ScaledObject support-chat",
            "ServiceMonitor support-chat",
            "PrometheusRule support-chat",
        ):
            assert skipped in cond["message"]
        events = cluster.get(
            "-n", app_namespace, "events", "--field-selector", "reason=APINotInstalled"
        )["items"]
        assert events and "ServiceMonitor" in events[0]["message"]
        assert (
            cluster.kubectl(
                "-n", app_namespace, "rollout", "status", "deployment/support-chat", "--timeout=60s"
            ).returncode
            == 0
        )
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(UPSTREAM_CRDS))

    # Raw paths: kubectl's discovery cache may still lack the re-created CRDs.
    monitor = f"/apis/monitoring.coreos.com/v1/namespaces/{app_namespace}/servicemonitors"
    scaled = f"/apis/keda.sh/v1alpha1/namespaces/{app_namespace}/scaledobjects"

    def exists(path: str) -> bool:
        return cluster.kubectl("get", "--raw", f"{path}/support-chat", check=False).returncode == 0

    wait_for(lambda: exists(monitor), timeout=60, what="the ServiceMonitor once its API is back")
    wait_condition(cluster, app_namespace, "support-chat", "OptionalAPIs", "True")
    assert exists(scaled)
