"""Autoscalers. Both target the Deployment, never the LLMChainApp: the app lives in Git, and an
autoscaler writing its spec would be permanent GitOps drift."""

from __future__ import annotations

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.common import Manifest, app_name, app_namespace, metadata
from llmchain_server.contract import INFLIGHT

SCALE_UP_POLICY = {"type": "Pods", "value": 4, "periodSeconds": 60}


def _target(app: LLMChainApp) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": app_name(app)}


def build_hpa(app: LLMChainApp) -> Manifest | None:
    """autoscaling/v2 on the per-pod in-flight requests (needs a custom-metrics adapter)."""
    scaling = app.spec.autoscaling
    if scaling is None or scaling.engine != "hpa":
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "scaleTargetRef": _target(app),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": INFLIGHT},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(scaling.target_inflight_per_pod),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [SCALE_UP_POLICY]},
                "scaleDown": {
                    "stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds
                },
            },
        },
    }


def build_scaled_object(app: LLMChainApp) -> Manifest | None:
    """A KEDA ScaledObject with a Prometheus trigger on the same metric."""
    scaling = app.spec.autoscaling
    if scaling is None or scaling.engine != "keda":
        return None
    query = f'sum({INFLIGHT}{{namespace="{app_namespace(app)}",service="{app_name(app)}"}})'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "scaleTargetRef": _target(app),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": scaling.scale_down_stabilization_seconds,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds
                        },
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": scaling.prometheus_address or "",
                        "query": query,
                        "threshold": str(scaling.target_inflight_per_pod),
                    },
                }
            ],
        },
    }
