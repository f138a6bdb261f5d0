"""What every builder shares: names, labels, object metadata, the model digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llmchain_operator.api import LLMChainApp
from llmchain_server import contract

Manifest = dict[str, Any]

MANAGED_BY = "llmchain-operator"
PART_OF = "llmchain"


def app_name(app: LLMChainApp) -> str:
    return str(app.metadata["name"])


def app_namespace(app: LLMChainApp) -> str:
    return str(app.metadata.get("namespace") or "default")


def build_labels(app: LLMChainApp, component: str | None = None) -> dict[str, str]:
    """The app.kubernetes.io/* labels of a child object (the first three select pods)."""
    labels = {
        "app.kubernetes.io/name": "llmchain-app",
        "app.kubernetes.io/instance": app_name(app),
    }
    if component:
        labels["app.kubernetes.io/component"] = component
    labels["app.kubernetes.io/part-of"] = PART_OF
    labels["app.kubernetes.io/managed-by"] = MANAGED_BY
    return labels


def selector_labels(app: LLMChainApp, component: str) -> dict[str, str]:
    """The stable subset of build_labels used in selectors (never changes over upgrades)."""
    return {
        "app.kubernetes.io/name": "llmchain-app",
        "app.kubernetes.io/instance": app_name(app),
        "app.kubernetes.io/component": component,
    }


def metadata(
    app: LLMChainApp,
    name: str,
    component: str | None = None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    meta: Manifest = {
        "name": name,
        "namespace": app_namespace(app),
        "labels": {**build_labels(app, component), **(labels or {})},
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def stable_hash(value: Any, length: int = 64) -> str:
    """SHA-256 of a JSON-serialisable value, independent of key order."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:length]


def model_digest(app: LLMChainApp) -> str:
    """Identity of the built model: source (with its checksum), quantization, accuracy plan (of
    int4/int8 builds), build recipe.

    Two apps (or two replicas) with the same digest serve the same bytes, so the build runs once
    per digest. The execution provider is not part of it: one model serves CPU and GPU alike.
    """
    model = app.spec.model
    inputs = {
        "source": model.source.model_dump(by_alias=True, exclude_none=True),
        "quantization": model.quantization,
        "recipe": contract.MODEL_BUILD_RECIPE,  # a new builder version builds anew
    }
    if model.quantization in ("int4", "int8"):  # fp16 and fp32 builds have no accuracy plan
        inputs["accuracy"] = model.accuracy
    return "sha256:" + stable_hash(inputs)


def short_digest(app: LLMChainApp) -> str:
    return model_digest(app).removeprefix("sha256:")[:12]


def uses_gpu(app: LLMChainApp) -> bool:
    return app.spec.serving.gpus > 0


def restricted_container_security() -> Manifest:
    """A container security context that passes the `restricted` Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
