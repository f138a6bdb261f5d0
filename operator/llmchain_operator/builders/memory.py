"""The conversation memory store shared by all replicas: a per-app Redis-protocol Deployment
and Service the operator owns, or an external URL from a Secret."""

from __future__ import annotations

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    app_namespace,
    build_labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
    selector_labels,
)
from llmchain_operator.settings import Settings
from llmchain_server import contract
from llmchain_server.contract import CACHE_PORT


def memory_name(app: LLMChainApp) -> str:
    return f"{app_name(app)}-memory"


def manages_memory(app: LLMChainApp) -> bool:
    memory = app.spec.chain.memory
    return memory is not None and memory.store == "managed"


def memory_url_env(app: LLMChainApp) -> list[Manifest]:
    """The memory URL variable of the server container (referenced by `--memory-url`)."""
    memory = app.spec.chain.memory
    if memory is None:
        return []
    if memory.redis_url_secret_ref is not None:
        ref = memory.redis_url_secret_ref
        return [
            {
                "name": contract.ENV_MEMORY_URL,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        ]
    url = f"redis://{memory_name(app)}.{app_namespace(app)}.svc:{CACHE_PORT}/0"
    return [{"name": contract.ENV_MEMORY_URL, "value": url}]


def build_memory_deployment(app: LLMChainApp, settings: Settings) -> Manifest | None:
    memory = app.spec.chain.memory
    if memory is None or not manages_memory(app):
        return None
    selector = selector_labels(app, "memory")
    container = {
        "name": "memory",
        "image": settings.memory_image,
        # Flags only: the image's entrypoint is its server binary (see the cache sidecar).
        # Protected mode off, as the official images' entrypoints do: without a configuration
        # file it refuses every client but loopback; the NetworkPolicy admits only the app's
        # server pods.
        "args": [
            "--protected-mode",
            "no",
            "--port",
            str(CACHE_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "volatile-lru",
        ],
        "ports": [{"name": "redis", "containerPort": CACHE_PORT}],
        "readinessProbe": {"tcpSocket": {"port": CACHE_PORT}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": CACHE_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(app, memory_name(app), "memory"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": build_labels(app, "memory")},
                "spec": {
                    "serviceAccountName": app_name(app),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod_security(),
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def build_memory_service(app: LLMChainApp) -> Manifest | None:
    if not manages_memory(app):
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(app, memory_name(app), "memory"),
        "spec": {
            "selector": selector_labels(app, "memory"),
            "ports": [{"name": "redis", "port": CACHE_PORT, "targetPort": "redis"}],
        },
    }
