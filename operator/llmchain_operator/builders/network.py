"""Service, ServiceAccount, PodDisruptionBudget and NetworkPolicies of an app."""

from __future__ import annotations

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    app_namespace,
    metadata,
    selector_labels,
)
from llmchain_operator.builders.memory import manages_memory, memory_name
from llmchain_operator.settings import Settings
from llmchain_server.contract import CACHE_PORT, HTTP_PORT

SERVICE_PORT = 80


def endpoint(app: LLMChainApp, settings: Settings) -> str:
    """The in-cluster URL of the app's HTTP API."""
    return f"http://{app_name(app)}.{app_namespace(app)}.svc.{settings.cluster_domain}"


def build_service(app: LLMChainApp) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(app, "server"),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_service_account(app: LLMChainApp) -> Manifest:
    """The pods' identity. They call no Kubernetes API, so no token is mounted and no Role bound."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(app, app_name(app), "server"),
        "automountServiceAccountToken": False,
    }


def build_pdb(app: LLMChainApp) -> Manifest:
    """At most one server pod down through voluntary disruptions (node drains).

    maxUnavailable rather than minAvailable: with one replica, minAvailable: 1 would block
    every drain for good.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(app, "server")},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_network_policies(app: LLMChainApp) -> list[Manifest]:
    """Server pods accept only their HTTP port (the cache sidecar stays private); the memory
    store accepts only the app's server pods."""
    server = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(app, "server")},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": HTTP_PORT}]}],
        },
    }
    if not manages_memory(app):
        return [server]
    memory = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(app, memory_name(app), "memory"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(app, "memory")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(app, "server")}}],
                    "ports": [{"protocol": "TCP", "port": CACHE_PORT}],
                }
            ],
        },
    }
    return [server, memory]
