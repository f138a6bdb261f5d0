"""The retrieval index's way into the pods.

With a model volume (spec.model.volume), a Job per index digest builds the embedding model and
the index into it, once whatever the replica count, and each pod waits for the index. Without
one, each pod builds both into an emptyDir in its init containers. The index digest covers the
embedding model's digest, the corpus (the ConfigMaps' data; a PVC's or URL's spec), the
chunking and the index kind, so a change of any of them builds a new index and rolls the pods.
"""

from __future__ import annotations

import base64
import hashlib

from llmchain_operator.api import LLMChainApp, Retrieval, quantity_bytes
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    build_labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
    stable_hash,
)
from llmchain_operator.builders.model import builder_resources, builds_in_job, model_pvc_name
from llmchain_operator.settings import Settings
from llmchain_server import contract
from llmchain_server.contract import DOCUMENTS_DIR, MODEL_DIR, RETRIEVAL_DIR

EMBEDDING_SOURCE_DIR = "/embedding-source"
"""Where the embedding model's PVC source (or its built onnx folder) is mounted."""


def _retrieval(app: LLMChainApp) -> Retrieval:
    assert app.spec.retrieval is not None
    return app.spec.retrieval


def index_in_job(app: LLMChainApp) -> bool:
    """The app has retrieval and a model volume: a Job builds the index into it."""
    return app.spec.retrieval is not None and builds_in_job(app)


def embedding_digest(app: LLMChainApp) -> str:
    """Identity of the built embedding model: source, quantization, build recipe."""
    embedding = _retrieval(app).embedding_model
    return "sha256:" + stable_hash(
        {
            "source": embedding.source.model_dump(by_alias=True, exclude_none=True),
            "quantization": embedding.quantization,
            "recipe": contract.MODEL_BUILD_RECIPE,
        }
    )


def configmaps_digest(configmaps: list[Manifest]) -> str:
    """The corpus digest of document ConfigMaps, as `llmchain index build` computes it of the
    files their volumes mount at <DOCUMENTS_DIR>/<name>/<key> (contract.files_digest; hidden
    keys skipped as the build skips them). The build is given it and refuses documents that
    changed after the operator read them."""
    files = {}
    for configmap in configmaps:
        name = configmap["metadata"]["name"]
        contents = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
        for key, value in (configmap.get("binaryData") or {}).items():
            contents[key] = base64.b64decode(value)
        for key, data in contents.items():
            if not key.startswith("."):
                files[f"{name}/{key}"] = hashlib.sha256(data).hexdigest()
    return contract.files_digest(files)


def corpus_identity(app: LLMChainApp, documents_digest: str | None) -> str:
    """The corpus as the index digest sees it: the ConfigMaps' content digest when the
    operator read them (`llmchain render` without them: their names), else the PVC's or URL's
    spec (a URL is pinned by its sha256)."""
    documents = _retrieval(app).documents
    if documents.config_maps is not None and documents_digest is not None:
        return documents_digest
    return "sha256:" + stable_hash(documents.model_dump(by_alias=True, exclude_none=True))


def index_digest(app: LLMChainApp, documents_digest: str | None) -> str:
    retrieval = _retrieval(app)
    return "sha256:" + stable_hash(
        {
            "embeddingModel": embedding_digest(app),
            "corpus": corpus_identity(app, documents_digest),
            "chunking": retrieval.chunking.model_dump(by_alias=True),
            "kind": retrieval.index_kind,
            "recipe": contract.INDEX_BUILD_RECIPE,
        }
    )


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def index_job_name(app: LLMChainApp, documents_digest: str | None) -> str:
    return f"{app_name(app)}-index-{_short(index_digest(app, documents_digest))}"


def _root(app: LLMChainApp) -> tuple[str, str]:
    """The volume the builds write into and its mount path."""
    return ("models", MODEL_DIR) if index_in_job(app) else ("retrieval", RETRIEVAL_DIR)


def embedding_dir(app: LLMChainApp) -> str:
    """Where the server (and the index build) find the embedding model folder."""
    onnx = _retrieval(app).embedding_model.source.onnx
    if onnx is not None:
        return f"{EMBEDDING_SOURCE_DIR}/{onnx.path.strip('/')}".rstrip("/")
    return f"{_root(app)[1]}/embedding-{_short(embedding_digest(app))}"


def index_dir(app: LLMChainApp, documents_digest: str | None) -> str:
    return f"{_root(app)[1]}/index-{_short(index_digest(app, documents_digest))}"


COPIED_SOURCE = "/tmp/embedding-source"
"""Where an image source is copied: the pod's or Job's scratch volume, not the model volume
(the built encoder is kept there; its source is not)."""


def _embedding_source_volume(app: LLMChainApp) -> Manifest | None:
    source = _retrieval(app).embedding_model.source
    claim = source.pvc or source.onnx
    if claim is None:
        return None
    return {
        "name": "embedding-source",
        "persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": True},
    }


_EMBEDDING_SOURCE_MOUNT = {
    "name": "embedding-source",
    "mountPath": EMBEDDING_SOURCE_DIR,
    "readOnly": True,
}


def _document_volumes(app: LLMChainApp) -> list[Manifest]:
    documents = _retrieval(app).documents
    if documents.config_maps is not None:
        return [
            {"name": f"documents-{i}", "configMap": {"name": cm.name}}
            for i, cm in enumerate(documents.config_maps)
        ]
    if documents.pvc is not None:
        claim = {"claimName": documents.pvc.claim_name, "readOnly": True}
        return [{"name": "documents", "persistentVolumeClaim": claim}]
    return []


def _document_mounts(app: LLMChainApp) -> list[Manifest]:
    documents = _retrieval(app).documents
    if documents.config_maps is not None:
        return [
            {"name": f"documents-{i}", "mountPath": f"{DOCUMENTS_DIR}/{cm.name}", "readOnly": True}
            for i, cm in enumerate(documents.config_maps)
        ]
    if documents.pvc is not None:
        return [{"name": "documents", "mountPath": DOCUMENTS_DIR, "readOnly": True}]
    return []


def _documents_args(app: LLMChainApp) -> list[str]:
    documents = _retrieval(app).documents
    if documents.url is not None:
        return [
            contract.FLAG_DOCUMENTS,
            documents.url.url,
            contract.FLAG_SHA256,
            documents.url.sha256,
        ]
    if documents.pvc is not None:
        path = f"{DOCUMENTS_DIR}/{documents.pvc.path.strip('/')}".rstrip("/")
        return [contract.FLAG_DOCUMENTS, path]
    return [contract.FLAG_DOCUMENTS, DOCUMENTS_DIR]


def _container(app: LLMChainApp, settings: Settings, name: str, args: list[str]) -> Manifest:
    volume, path = _root(app)
    extra = [_EMBEDDING_SOURCE_MOUNT] if _embedding_source_volume(app) else []
    # The build's report on success; on failure the log's tail (the error), for the status.
    report = {"terminationMessagePolicy": "FallbackToLogsOnError"} if name == "index" else {}
    return {
        "name": name,
        **report,
        "image": settings.server_image,
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [
            {"name": volume, "mountPath": path},
            *extra,
            *(_document_mounts(app) if name == "index" else []),
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "resources": builder_resources(app),
        "securityContext": restricted_container_security(),
    }


def _build_steps(
    app: LLMChainApp, settings: Settings, documents_digest: str | None
) -> list[Manifest]:
    """The containers that build the embedding model (unless it is a built folder) and then the
    index, in order."""
    embedding = _retrieval(app).embedding_model
    source = embedding.source
    steps = []
    if source.image is not None:
        steps.append(
            {
                "name": "embedding-source",
                "image": source.image.reference,
                "command": ["cp", "-R", source.image.path, COPIED_SOURCE],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": restricted_container_security(),
            }
        )
    if source.onnx is None:
        args = [contract.COMMAND, *contract.MODEL_BUILD]
        if source.url is not None:
            args += [contract.FLAG_SOURCE, source.url.url, contract.FLAG_SHA256, source.url.sha256]
        elif source.pvc is not None:
            path = f"{EMBEDDING_SOURCE_DIR}/{source.pvc.path.strip('/')}".rstrip("/")
            args += [contract.FLAG_SOURCE, path]
        else:
            args += [contract.FLAG_SOURCE, COPIED_SOURCE]
        volume = app.spec.model.volume
        if source.url is not None and index_in_job(app) and volume is not None:
            # The volume's size caps the download, as for the model (an endless source).
            args += [contract.FLAG_MAX_SOURCE_BYTES, str(int(quantity_bytes(volume.size)))]
        args += [
            contract.FLAG_QUANTIZATION,
            embedding.quantization,
            contract.FLAG_OUT,
            embedding_dir(app),
            contract.FLAG_DIGEST,
            embedding_digest(app),
        ]
        steps.append(_container(app, settings, "embedding-model", args))
    retrieval = _retrieval(app)
    args = [
        contract.COMMAND,
        *contract.INDEX_BUILD,
        *_documents_args(app),
        contract.FLAG_EMBEDDING_MODEL,
        embedding_dir(app),
        contract.FLAG_OUT,
        index_dir(app, documents_digest),
        contract.FLAG_CHUNK_SIZE,
        str(retrieval.chunking.size),
        contract.FLAG_CHUNK_OVERLAP,
        str(retrieval.chunking.overlap),
        contract.FLAG_KIND,
        retrieval.index_kind,
        contract.FLAG_DIGEST,
        index_digest(app, documents_digest),
        *(
            [contract.FLAG_CORPUS_DIGEST, documents_digest]
            if retrieval.documents.config_maps is not None and documents_digest is not None
            else []
        ),
        contract.FLAG_REPORT,
        contract.TERMINATION_LOG,
    ]
    steps.append(_container(app, settings, "index", args))
    return steps


def retrieval_init_containers(
    app: LLMChainApp, settings: Settings, documents_digest: str | None
) -> list[Manifest]:
    """The server pod's init containers for retrieval: wait for the Job's index, or build the
    embedding model and the index in the pod."""
    if app.spec.retrieval is None:
        return []
    if not index_in_job(app):
        return _build_steps(app, settings, documents_digest)
    wait = {
        "name": "index",
        "image": settings.server_image,
        "args": [
            contract.COMMAND,
            *contract.INDEX_WAIT,
            contract.FLAG_DIR,
            index_dir(app, documents_digest),
            contract.FLAG_DIGEST,
            index_digest(app, documents_digest),
            contract.FLAG_TIMEOUT,
            "3600",
        ],
        "volumeMounts": [{"name": "models", "mountPath": MODEL_DIR, "readOnly": True}],
        "securityContext": restricted_container_security(),
    }
    return [wait]


def retrieval_volumes(app: LLMChainApp) -> list[Manifest]:
    """The server pod's volumes for retrieval (besides the model volume)."""
    if app.spec.retrieval is None:
        return []
    source = _embedding_source_volume(app)
    volumes = [source] if source else []
    if not index_in_job(app):
        volumes += [{"name": "retrieval", "emptyDir": {}}, *_document_volumes(app)]
    elif source is not None and app.spec.retrieval.embedding_model.source.pvc is not None:
        volumes = []  # the Job built from it: the pod reads the built folder on the model volume
    return volumes


def retrieval_server_mounts(app: LLMChainApp) -> list[Manifest]:
    if app.spec.retrieval is None:
        return []
    mounts = []
    if not index_in_job(app):
        mounts.append({"name": "retrieval", "mountPath": RETRIEVAL_DIR, "readOnly": True})
    if app.spec.retrieval.embedding_model.source.onnx is not None:
        mounts.append(_EMBEDDING_SOURCE_MOUNT)
    return mounts


def retrieval_server_args(app: LLMChainApp, documents_digest: str | None) -> list[str]:
    if app.spec.retrieval is None:
        return []
    return [
        contract.FLAG_EMBEDDING_MODEL,
        embedding_dir(app),
        contract.FLAG_EMBEDDING_MODEL_NAME,
        f"{app_name(app)}-embeddings",
        contract.FLAG_INDEX,
        index_dir(app, documents_digest),
    ]


def build_index_job(
    app: LLMChainApp, settings: Settings, documents_digest: str | None
) -> Manifest | None:
    """The Job that builds the embedding model and the index for this digest into the model
    volume (once; both builds are idempotent)."""
    if not index_in_job(app):
        return None
    *init, build = _build_steps(app, settings, documents_digest)
    digest = index_digest(app, documents_digest)
    digest_label = {"llmchain.io/index-digest": f"sha256-{_short(digest)}"}
    source = _embedding_source_volume(app)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            app,
            index_job_name(app, documents_digest),
            "index-build",
            labels=digest_label,
            annotations={"llmchain.io/index-digest": digest},
        ),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 7200,
            "template": {
                "metadata": {"labels": {**build_labels(app, "index-build"), **digest_label}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": restricted_pod_security(),
                    "initContainers": init,
                    "containers": [build],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": model_pvc_name(app)},
                        },
                        {"name": "tmp", "emptyDir": {}},
                        *([source] if source else []),
                        *_document_volumes(app),
                    ],
                },
            },
        },
    }
