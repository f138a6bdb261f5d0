"""The chain ConfigMap and the model-server Deployment (server, cache sidecar, model init)."""

from __future__ import annotations

import yaml

from llmchain_operator.api import LLMChainApp, quantity_bytes, secret_env
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    build_labels,
    metadata,
    model_digest,
    restricted_container_security,
    restricted_pod_security,
    selector_labels,
    stable_hash,
    uses_gpu,
)
from llmchain_operator.builders.memory import memory_url_env
from llmchain_operator.builders.model import model_dir, model_init_containers, model_volumes
from llmchain_operator.builders.retrieval import (
    retrieval_init_containers,
    retrieval_server_args,
    retrieval_server_mounts,
    retrieval_volumes,
)
from llmchain_operator.settings import Settings
from llmchain_server import contract
from llmchain_server.config import ChainConfig
from llmchain_server.contract import (
    API_KEY_DIR,
    CACHE_PORT,
    CHAIN_DIR,
    CHAIN_FILE,
    HTTP_PORT,
    MODEL_DIR,
)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

PRE_STOP_SECONDS = 5
"""Endpoints drop the pod during this pause, before SIGTERM reaches the server."""


def chain_configmap_name(app: LLMChainApp) -> str:
    return f"{app_name(app)}-chain"


def render_chain_config(app: LLMChainApp) -> str:
    config = ChainConfig(
        name=app_name(app),
        chain=app.spec.chain.for_server(),
        tools=[tool.for_server(i) for i, tool in enumerate(app.spec.tools)],
    )
    data = config.model_dump(by_alias=True, exclude_none=True)
    if not data["tools"]:
        del data["tools"]  # as before tools existed: a server of that version reads it too
    return yaml.safe_dump(data, sort_keys=False)


def build_chain_configmap(app: LLMChainApp) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(app, chain_configmap_name(app), "server"),
        "data": {CHAIN_FILE: render_chain_config(app)},
    }


def _cache_sidecar(app: LLMChainApp, settings: Settings) -> Manifest:
    """The response cache as a native sidecar (an init container that keeps running). Only
    flags are passed: the image's entrypoint is its server binary (valkey-server in Valkey's
    image, whose entrypoint script also takes bare flags; redis-server in ours)."""
    cache = app.spec.cache
    return {
        "name": "cache",
        "image": cache.image or settings.cache_image,
        "restartPolicy": "Always",
        "args": [
            "--port",
            str(CACHE_PORT),
            "--bind",
            "127.0.0.1",
            "--maxmemory",
            _redis_bytes(cache.max_memory),
            "--maxmemory-policy",
            "allkeys-lru",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        # No probe: the cache listens on the pod's loopback only (its entries are users'
        # answers), which the kubelet's probes cannot reach, and the server treats it as
        # fail-open; the kubelet restarts it if its process exits.
        "ports": [{"name": "cache", "containerPort": CACHE_PORT}],
        "resources": {
            "requests": {"cpu": "50m", "memory": cache.max_memory},
            "limits": {"memory": _with_headroom(cache.max_memory)},
        },
        "securityContext": restricted_container_security(),
    }


def _redis_bytes(quantity: str) -> str:
    """Kubernetes quantity → the redis maxmemory form (256Mi → 256mb)."""
    units = {"Ki": "kb", "Mi": "mb", "Gi": "gb", "k": "kb", "M": "mb", "G": "gb"}
    for suffix, unit in units.items():
        if quantity.endswith(suffix):
            return quantity.removesuffix(suffix) + unit
    return quantity


def _with_headroom(quantity: str) -> str:
    """The cache container's memory limit: maxmemory plus a quarter for Redis overhead."""
    for suffix in ("Ki", "Mi", "Gi"):
        if quantity.endswith(suffix):
            number = float(quantity.removesuffix(suffix))
            return f"{int(number * 1.25 + 0.999)}{suffix}"
    return quantity


def _server_args(app: LLMChainApp, documents_digest: str | None) -> list[str]:
    args = [
        contract.COMMAND,
        *contract.SERVE,
        contract.FLAG_MODEL,
        model_dir(app),
        contract.FLAG_CHAIN,
        f"{CHAIN_DIR}/{CHAIN_FILE}",
        contract.FLAG_HOST,
        "0.0.0.0",
        contract.FLAG_PORT,
        str(HTTP_PORT),
    ]
    if app.spec.cache.enabled:
        args += [contract.FLAG_REDIS_URL, f"redis://127.0.0.1:{CACHE_PORT}/0"]
    if app.spec.chain.memory is not None:
        args += [contract.FLAG_MEMORY_URL, f"$({contract.ENV_MEMORY_URL})"]
    return args + retrieval_server_args(app, documents_digest)


def _server_env(app: LLMChainApp) -> list[Manifest]:
    serving = app.spec.serving
    env: list[Manifest] = [
        {"name": contract.ENV_EXECUTION_PROVIDER, "value": app.spec.model.execution_provider},
        # The model id OpenAI clients send: the app's name, not the model folder's digest.
        {"name": contract.ENV_MODEL_NAME, "value": app_name(app)},
        # In-flight requests get the termination grace period less the preStop pause and a
        # margin for the process to exit.
        {
            "name": contract.ENV_GRACE_SECONDS,
            "value": str(max(1, serving.termination_grace_period_seconds - PRE_STOP_SECONDS - 5)),
        },
        {"name": contract.ENV_MODEL_DIGEST, "value": model_digest(app)},
        {"name": contract.ENV_MAX_BATCH_SIZE, "value": str(serving.max_batch_size)},
        {"name": contract.ENV_MAX_CONCURRENCY, "value": str(serving.max_concurrency)},
        {"name": contract.ENV_CACHE_TTL_SECONDS, "value": str(app.spec.cache.ttl_seconds)},
        {"name": contract.ENV_CACHE_SAMPLED, "value": str(app.spec.cache.include_sampled).lower()},
        {
            "name": contract.ENV_CPU_LIMIT,
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": "server",
                    "resource": "limits.cpu",
                    "divisor": "1",
                }
            },
        },
        {"name": "HOME", "value": "/tmp"},
    ]
    if serving.api_key_secret_ref is not None:
        env.append(
            {
                "name": contract.ENV_API_KEY_FILE,
                "value": f"{API_KEY_DIR}/{serving.api_key_secret_ref.key}",
            }
        )
    env.extend(memory_url_env(app))
    for i, tool in enumerate(app.spec.tools):
        for j, secret in enumerate(tool.headers_from_secrets):
            ref = secret.secret_key_ref
            env.append(
                {
                    "name": secret_env(i, j),
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    return env


DEFAULT_REQUESTS = {"cpu": "1", "memory": "1Gi"}


def _server_resources(app: LLMChainApp) -> Manifest:
    """The spec's requests and limits; an unset request is the default, or the limit where
    that is lower (the API server rejects a request above its limit)."""
    resources = app.spec.serving.resources.model_dump(by_alias=True, exclude_none=True)
    limits = dict(resources.get("limits", {}))
    requests = {
        name: min(default, limits.get(name, default), key=quantity_bytes)
        for name, default in DEFAULT_REQUESTS.items()
    }
    requests.update(resources.get("requests", {}))
    if uses_gpu(app):
        limits[GPU_RESOURCE] = str(app.spec.serving.gpus)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def _server_container(
    app: LLMChainApp, settings: Settings, documents_digest: str | None
) -> Manifest:
    http = {"port": "http"}
    mounts = [
        {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
        {"name": "chain", "mountPath": CHAIN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *retrieval_server_mounts(app),
    ]
    if app.spec.serving.api_key_secret_ref is not None:
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    image = app.spec.serving.image or (
        settings.server_gpu_image if uses_gpu(app) else settings.server_image
    )
    return {
        "name": "server",
        "image": image,
        "args": _server_args(app, documents_digest),
        "env": _server_env(app),
        "ports": [{"name": "http", "containerPort": HTTP_PORT}],
        "startupProbe": {
            "httpGet": {**http, "path": contract.READY_PATH},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {"httpGet": {**http, "path": contract.READY_PATH}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {**http, "path": contract.LIVE_PATH},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Endpoints drop the pod before SIGTERM arrives, so no new request is routed to it.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "resources": _server_resources(app),
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
    }


def _rollout_strategy(app: LLMChainApp) -> Manifest:
    rollout = app.spec.serving.rollout
    gpu = uses_gpu(app)
    surge = rollout.max_surge if rollout.max_surge is not None else (0 if gpu else 1)
    unavailable = rollout.max_unavailable
    if unavailable is None:
        unavailable = 1 if gpu or surge == 0 else 0
    return {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }


def _pod_volumes(app: LLMChainApp) -> list[Manifest]:
    volumes = [
        *model_volumes(app),
        {"name": "chain", "configMap": {"name": chain_configmap_name(app)}},
        {"name": "tmp", "emptyDir": {}},
        *retrieval_volumes(app),
    ]
    ref = app.spec.serving.api_key_secret_ref
    if ref is not None:
        volumes.append(
            {
                "name": "api-key",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": ref.key}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def build_deployment(
    app: LLMChainApp, settings: Settings, documents_digest: str | None = None
) -> Manifest:
    """The model-server Deployment. `replicas` is left out when an autoscaler owns it.
    `documents_digest`: the content digest of the retrieval ConfigMaps, when there are some."""
    serving = app.spec.serving
    selector = selector_labels(app, "server")
    annotations = {
        # Prefixed so the value never reads as a number in YAML (all-digit hex is possible).
        "llmchain.io/chain-hash": "sha256:" + stable_hash(render_chain_config(app), 16),
        "llmchain.io/model-digest": model_digest(app),
    }
    init = [
        *([_cache_sidecar(app, settings)] if app.spec.cache.enabled else []),
        *model_init_containers(app, settings),
        *retrieval_init_containers(app, settings, documents_digest),
    ]
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in serving.tolerations]
    if uses_gpu(app) and GPU_TOLERATION not in tolerations:
        tolerations.insert(0, GPU_TOLERATION)
    pod_spec: Manifest = {
        "serviceAccountName": app_name(app),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": serving.termination_grace_period_seconds,
        "securityContext": restricted_pod_security(),
        "initContainers": init,
        "containers": [_server_container(app, settings, documents_digest)],
        "volumes": _pod_volumes(app),
    }
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(serving.node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    spec: Manifest = {
        "selector": {"matchLabels": selector},
        "strategy": _rollout_strategy(app),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": build_labels(app, "server"),
                "annotations": annotations,
            },
            "spec": pod_spec,
        },
    }
    if app.spec.autoscaling is None:
        spec = {"replicas": serving.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": spec,
    }
