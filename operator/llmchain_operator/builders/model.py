"""The model's way into the pods: build Job and PVC (build once per digest), or an init
container that builds into an emptyDir, or a prebuilt ONNX folder mounted as is."""

from __future__ import annotations

from llmchain_operator.api import LLMChainApp, quantity_bytes
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    build_labels,
    metadata,
    model_digest,
    restricted_container_security,
    restricted_pod_security,
    short_digest,
)
from llmchain_operator.settings import Settings
from llmchain_server import contract
from llmchain_server.contract import MODEL_DIR

BUILD_MEMORY = "2Gi"
"""The model build's memory limit when the server has a smaller one (see builder_resources)."""

SOURCE_DIR = "/source"
COPIED_SOURCE = f"{MODEL_DIR}/.source"


def model_pvc_name(app: LLMChainApp) -> str:
    return f"{app_name(app)}-model"


def build_job_name(app: LLMChainApp) -> str:
    return f"{app_name(app)}-model-{short_digest(app)}"


def builds_in_job(app: LLMChainApp) -> bool:
    """A PVC is configured and the source needs building: one Job per digest builds it."""
    return app.spec.model.volume is not None and app.spec.model.source.onnx is None


def model_dir(app: LLMChainApp) -> str:
    """Where the server finds the model folder inside its pod."""
    onnx = app.spec.model.source.onnx
    if onnx is not None:
        return f"{MODEL_DIR}/{onnx.path.strip('/')}".rstrip("/")
    return f"{MODEL_DIR}/{short_digest(app)}"


def _source_copy_container(app: LLMChainApp) -> Manifest | None:
    """For an image source: copy the model out of its image into the models volume."""
    image = app.spec.model.source.image
    if image is None:
        return None
    return {
        "name": "model-source",
        "image": image.reference,
        "command": ["cp", "-R", image.path, COPIED_SOURCE],
        "volumeMounts": [{"name": "models", "mountPath": MODEL_DIR}],
        "securityContext": restricted_container_security(),
    }


def _build_args(app: LLMChainApp) -> list[str]:
    source = app.spec.model.source
    args = [contract.COMMAND, *contract.MODEL_BUILD]
    volume = app.spec.model.volume
    if source.url is not None:
        args += [contract.FLAG_SOURCE, source.url.url, contract.FLAG_SHA256, source.url.sha256]
        if volume is not None:  # the volume's size caps the download (an endless source)
            args += [contract.FLAG_MAX_SOURCE_BYTES, str(int(quantity_bytes(volume.size)))]
    elif source.pvc is not None:
        args += [contract.FLAG_SOURCE, f"{SOURCE_DIR}/{source.pvc.path.strip('/')}".rstrip("/")]
    elif source.image is not None:
        args += [contract.FLAG_SOURCE, COPIED_SOURCE]
    args += [
        contract.FLAG_QUANTIZATION,
        app.spec.model.quantization,
        contract.FLAG_ACCURACY,
        app.spec.model.accuracy,
        contract.FLAG_OUT,
        model_dir(app),
        contract.FLAG_DIGEST,
        model_digest(app),
    ]
    return args


def _source_volume(app: LLMChainApp) -> tuple[list[Manifest], list[Manifest]]:
    pvc = app.spec.model.source.pvc
    if pvc is None:
        return [], []
    volume = {
        "name": "model-source",
        "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True},
    }
    return [volume], [{"name": "model-source", "mountPath": SOURCE_DIR, "readOnly": True}]


def _builder_container(app: LLMChainApp, settings: Settings, name: str) -> Manifest:
    _, source_mounts = _source_volume(app)
    return {
        "name": name,
        "image": settings.server_image,
        "args": _build_args(app),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR},
            *source_mounts,
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "resources": builder_resources(app),
        "securityContext": restricted_container_security(),
    }


def builder_resources(app: LLMChainApp) -> Manifest:
    """The build asks for what the server asks for, so a pod that fits a node while serving fits
    it while building. Building SmolLM2-135M peaks at 1.5-1.7 GiB resident (measured: int4,
    int8), above what the server needs (0.6-0.8 GiB): where the server has a memory limit, the
    build's is raised to BUILD_MEMORY, or the kubelet would OOM-kill it at the pod's limit."""
    resources = app.spec.serving.resources.model_dump(by_alias=True, exclude_none=True)
    built: Manifest = {"requests": {"cpu": "1", "memory": "1Gi", **resources.get("requests", {})}}
    limit = resources.get("limits", {}).get("memory")
    if limit is not None:
        raised = max(quantity_bytes(limit), quantity_bytes(BUILD_MEMORY))
        built["limits"] = {"memory": limit if raised == quantity_bytes(limit) else BUILD_MEMORY}
    return built


def model_volumes(app: LLMChainApp) -> list[Manifest]:
    """The pod volumes that hold the model (and its source, when it is on a PVC)."""
    source = app.spec.model.source
    if source.onnx is not None:
        models: Manifest = {
            "persistentVolumeClaim": {"claimName": source.onnx.claim_name, "readOnly": True}
        }
    elif builds_in_job(app):
        models = {"persistentVolumeClaim": {"claimName": model_pvc_name(app), "readOnly": True}}
    else:
        models = {"emptyDir": {}}
    volumes, _ = _source_volume(app) if not builds_in_job(app) else ([], [])
    return [{"name": "models", **models}, *volumes]


def model_init_containers(app: LLMChainApp, settings: Settings) -> list[Manifest]:
    """Init containers that make the model folder ready before the server starts."""
    if app.spec.model.source.onnx is not None:
        return []
    if builds_in_job(app):
        wait = {
            "name": "model",
            "image": settings.server_image,
            "args": [
                contract.COMMAND,
                *contract.MODEL_WAIT,
                contract.FLAG_DIR,
                model_dir(app),
                contract.FLAG_DIGEST,
                model_digest(app),
                contract.FLAG_TIMEOUT,
                "3600",
            ],
            "volumeMounts": [{"name": "models", "mountPath": MODEL_DIR, "readOnly": True}],
            "securityContext": restricted_container_security(),
        }
        return [wait]
    copy = _source_copy_container(app)
    return [*([copy] if copy else []), _builder_container(app, settings, "model")]


def build_model_pvc(app: LLMChainApp) -> Manifest | None:
    volume = app.spec.model.volume
    if volume is None or not builds_in_job(app):
        return None
    spec: Manifest = {
        "accessModes": [volume.access_mode],
        "resources": {"requests": {"storage": volume.size}},
    }
    if volume.storage_class_name:
        spec["storageClassName"] = volume.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(app, model_pvc_name(app), "model"),
        "spec": spec,
    }


def build_model_job(app: LLMChainApp, settings: Settings) -> Manifest | None:
    """The Job that builds the model for this digest into the PVC (once; it is idempotent)."""
    if not builds_in_job(app):
        return None
    source_volumes, _ = _source_volume(app)
    copy = _source_copy_container(app)
    # Prefixed so the value never reads as a number in YAML (all-digit hex is possible).
    digest_label = {"llmchain.io/model-digest": f"sha256-{short_digest(app)}"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            app,
            build_job_name(app),
            "model-build",
            labels=digest_label,
            annotations={"llmchain.io/model-digest": model_digest(app)},
        ),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 7200,
            "template": {
                "metadata": {"labels": {**build_labels(app, "model-build"), **digest_label}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": restricted_pod_security(),
                    "initContainers": [copy] if copy else [],
                    "containers": [_builder_container(app, settings, "build")],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": model_pvc_name(app)},
                        },
                        {"name": "tmp", "emptyDir": {}},
                        *source_volumes,
                    ],
                },
            },
        },
    }
