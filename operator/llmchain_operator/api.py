"""The LLMChainApp resource (llmchain.io/v1alpha1) as pydantic models.

These models are the single source of truth: `llmchain crd` (and `make crds`) generates the
CustomResourceDefinition from them, and the operator validates what it reads with them. Every
field has a description (shown by `kubectl explain`), a default where one makes sense, and bounds.
Cross-field rules are CEL (`x-kubernetes-validations`) so the API server enforces them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from llmchain_server import config, contract
from llmchain_server.config import Schema, nested

GROUP = "llmchain.io"
VERSION = "v1alpha1"
KIND = "LLMChainApp"
PLURAL = "llmchainapps"

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
"""A Kubernetes resource quantity in the forms this API accepts (e.g. 500m, 2, 256Mi)."""

Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=32)]

# The suffixes QUANTITY admits, two-letter ones first.
_QUANTITY_FACTORS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 10**-3,
}


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity (as QUANTITY admits) as a number: "1Gi" → 1073741824.0."""
    for suffix, factor in _QUANTITY_FACTORS.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity)


LONGEST_SUFFIX = len("-model-") + 12
"""The most the operator adds to an app's name to name a child (the model build Job:
`<name>-model-<digest>`, 12 hex digits of the model digest)."""
MAX_NAME_LENGTH = 63 - LONGEST_SUFFIX
"""Children's names, and the Job's pod label that carries its name, are at most 63 characters."""
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1035 label: the app's name is its Services' name."""
NAME_TOO_LONG = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters: the operator adds up to "
    f"{LONGEST_SUFFIX} (-model-<digest>) to name the app's children, whose names are limited to 63"
)
NAME_NOT_A_LABEL = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
    "letter, ending with a letter or digit): it is the name of the app's Services"
)


def name_problems(name: str) -> list[str]:
    """What is wrong with an app's name for the children it gets (the CRD checks the same)."""
    problems = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(NAME_TOO_LONG)
    if not re.fullmatch(NAME_PATTERN, name):
        problems.append(NAME_NOT_A_LABEL)
    return problems


LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label key as the API server accepts one: an optional DNS subdomain prefix and `/`, then a
name of at most 63 characters (alphanumerics, `-`, `_`, `.`, alphanumeric at both ends). No
backslash: the pattern goes into a CEL string literal as it is."""
LABEL_KEY_MAX = 253 + 1 + 63
LABEL_KEY_PROBLEM = (
    "keys must be label keys: an optional DNS subdomain prefix and '/', then at most 63 "
    "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
)


def rules(*triples: tuple[str, str, str]) -> ConfigDict:
    """Model config carrying CEL rules given as (rule, message, fieldPath) triples."""
    validations: list[JsonValue] = []
    for rule, message, field_path in triples:
        entry: dict[str, JsonValue] = {"rule": rule, "message": message}
        if field_path:
            entry["fieldPath"] = field_path
        validations.append(entry)
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": validations})


# --- references ----------------------------------------------------------------------------


class SecretKeyRef(Schema):
    """A key of a Secret in the app's namespace."""

    name: str = Field(
        description="Name of the Secret.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    key: str = Field(
        description="Key within the Secret.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


# --- model ---------------------------------------------------------------------------------


class UrlSource(Schema):
    """A model file fetched over HTTP(S) and checked against its digest."""

    url: str = Field(
        pattern=r"^https?://", max_length=2048, description="HTTP(S) URL of a GGUF file."
    )
    sha256: str = Field(
        pattern=r"^[a-f0-9]{64}$",
        description="SHA-256 of the file, lowercase hex; a download that differs is rejected.",
    )


class PvcSource(Schema):
    """A model source (GGUF file or Hugging Face folder) on a PersistentVolumeClaim."""

    claim_name: str = Field(
        min_length=1, max_length=253, description="PersistentVolumeClaim in the app's namespace."
    )
    path: str = Field(
        "/",
        max_length=1024,
        pattern=r"^/",
        description="Path of the GGUF file or Hugging Face folder inside the volume.",
    )


class OnnxSource(Schema):
    """An already built model folder (ONNX graph, tokenizer, manifest): served as is."""

    claim_name: str = Field(
        min_length=1, max_length=253, description="PersistentVolumeClaim holding the folder."
    )
    path: str = Field(
        "/", max_length=1024, pattern=r"^/", description="Path of the folder inside the volume."
    )


class ImageSource(Schema):
    """A model shipped in an OCI image, copied out by an init container."""

    reference: str = Field(
        min_length=1, max_length=512, description="Image reference, ideally pinned by digest."
    )
    path: str = Field(
        "/model",
        max_length=1024,
        pattern=r"^/",
        description="Path of the GGUF file or model folder inside the image.",
    )


class ModelSource(Schema):
    """Where the model comes from: exactly one of url, pvc, onnx, image."""

    url: UrlSource | None = Field(None, description="Download a GGUF file.")
    pvc: PvcSource | None = Field(None, description="Build from a file or folder on a PVC.")
    onnx: OnnxSource | None = Field(None, description="Serve a built ONNX model folder.")
    image: ImageSource | None = Field(None, description="Copy the model out of an OCI image.")

    model_config = rules(
        (
            "[has(self.url), has(self.pvc), has(self.onnx), has(self.image)]"
            ".filter(x, x).size() == 1",
            "exactly one of url, pvc, onnx, image must be set",
            "",
        )
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        kinds = [self.url, self.pvc, self.onnx, self.image]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("exactly one of url, pvc, onnx, image must be set")
        return self


class ModelVolume(Schema):
    """The PersistentVolumeClaim the build Job writes the model into, once per digest."""

    size: Quantity = Field("2Gi", description="Requested storage size.")
    storage_class_name: str | None = Field(
        None, max_length=253, description="StorageClass; unset uses the cluster default."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        "ReadWriteOnce",
        description="ReadWriteMany lets pods on several nodes mount the model; ReadWriteOnce "
        "needs them on one node.",
    )


class ModelSpec(Schema):
    """The model served by every replica."""

    source: ModelSource = Field(description="Where the model comes from.")
    quantization: Literal["int4", "int8", "fp16", "none"] = Field(
        "int8",
        description="Weight precision of the served ONNX model. int4 keeps GGUF 4-bit blocks "
        "exactly; int8 is Q(x) = round(S(x - Z)); none is fp32.",
    )
    accuracy: Literal["recommended", "int8", "exact"] = Field(
        "recommended",
        description="How int4/int8 models compute on CPUs: int8 quantizes every layer's "
        "activations to int8 (fastest, least faithful); exact keeps them fp32 (several times "
        "slower); recommended keeps fp32 for the attention's QKV projection only (dense, a "
        "little more memory). Ignored by fp16 and none builds.",
    )
    execution_provider: Literal["auto", "cuda", "tensorrt", "cpu"] = Field(
        "auto",
        description="onnxruntime execution provider: auto picks CUDA (or TensorRT) when the "
        "node has a GPU, else CPU.",
    )
    volume: ModelVolume | None = Field(
        None,
        description="Build the model once per digest into this PVC; omitted: each pod builds "
        "it into an emptyDir (fine for small models).",
    )


# --- retrieval -----------------------------------------------------------------------------


class EmbeddingModel(Schema):
    """The sentence-transformers encoder that embeds documents and queries."""

    source: ModelSource = Field(
        description="Where the encoder comes from: a sentence-transformers folder or its zip "
        "(url, pvc or image), or a built embedding model folder (onnx)."
    )
    quantization: Literal["int8", "fp16", "none"] = Field(
        "int8",
        description="Weight precision of the built encoder: int8 (fastest on CPUs; cosine "
        "similarity to the reference >= 0.99), fp16, or none (fp32, >= 0.9999).",
    )


class ConfigMapDocuments(Schema):
    """A ConfigMap whose keys are documents (file names) and values their text."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="ConfigMap in the app's namespace.",
    )


class Documents(Schema):
    """The corpus: exactly one of configMaps, pvc, url. Empty, binary, non-UTF-8 and oversized
    (over 10 MiB) files are skipped and counted."""

    config_maps: list[ConfigMapDocuments] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="ConfigMaps whose keys are documents; a change of their data re-indexes.",
    )
    pvc: PvcSource | None = Field(
        None,
        description="A folder (every file under it) or one file on a PVC, indexed once per "
        "spec: to re-index changed files, change the path or the claim.",
    )
    url: UrlSource | None = Field(
        None, description="A file, .zip or .tar.gz of documents, checked against its sha256."
    )

    model_config = rules(
        (
            "[has(self.configMaps), has(self.pvc), has(self.url)].filter(x, x).size() == 1",
            "exactly one of configMaps, pvc, url must be set",
            "",
        ),
        (
            "!has(self.configMaps) || "
            "self.configMaps.all(c, self.configMaps.exists_one(d, d.name == c.name))",
            "configMaps must not name a ConfigMap twice",
            ".configMaps",
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Documents:
        if [self.config_maps is not None, self.pvc is not None, self.url is not None].count(
            True
        ) != 1:
            raise ValueError("exactly one of configMaps, pvc, url must be set")
        names = [c.name for c in self.config_maps or []]
        if len(set(names)) != len(names):
            raise ValueError("configMaps must not name a ConfigMap twice")
        return self


class Chunking(Schema):
    """How documents are cut into passages: windows of tokens, aligned on words."""

    size: int = Field(
        200,
        ge=16,
        le=510,
        description="Tokens per chunk, at most; the build refuses more than the encoder reads "
        "less its two special tokens (254 for all-MiniLM-L6-v2).",
    )
    overlap: int = Field(
        40, ge=0, le=254, description="Tokens two neighbouring chunks share: under size / 2."
    )

    model_config = rules(
        (
            # Guarded: the API server checks the schema's default ({}) before defaulting into it.
            "!has(self.size) || !has(self.overlap) || self.overlap * 2 < self.size",
            "overlap must be less than half of size",
            ".overlap",
        )
    )

    @model_validator(mode="after")
    def _overlap_under_half(self) -> Chunking:
        if self.overlap * 2 >= self.size:
            raise ValueError("overlap must be less than half of size")
        return self


class Retrieval(Schema):
    """Retrieval: an embedding model, the documents, and the index built from them once per
    corpus digest (in a Job into the model volume when spec.model.volume is set and the model is
    built there, that is, its source is not onnx; else by each pod into an emptyDir)."""

    embedding_model: EmbeddingModel = Field(description="The encoder of documents and queries.")
    documents: Documents = Field(description="The corpus to index.")
    chunking: Chunking = nested(Chunking, "How documents are cut into passages.")
    index_kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto",
        description="Faiss index: flat (exact) or ivf (approximate, ~10x faster at 100,000 "
        "chunks with the same recall, measured); auto picks flat up to 50,000 chunks and ivf "
        "above. hnsw is fastest but loses recall on this encoder's vectors.",
    )


# --- serving -------------------------------------------------------------------------------


class ResourceList(Schema):
    """CPU and memory amounts."""

    cpu: Quantity | None = Field(None, description="CPU, e.g. 2 or 500m.")
    memory: Quantity | None = Field(None, description="Memory, e.g. 4Gi.")


def _not_above_limit(resource: str) -> tuple[str, str, str]:
    """A CEL rule: the request of `resource` is at most its limit (when both are set)."""
    request, limit = f"self.requests.{resource}", f"self.limits.{resource}"
    return (
        f"!has(self.requests) || !has(self.limits) || !has({request}) || !has({limit}) || "
        f"quantity({request}).compareTo(quantity({limit})) <= 0",
        f"requests.{resource} must not exceed limits.{resource}",
        f".requests.{resource}",
    )


class Resources(Schema):
    """Requests and limits of the server container (GPUs come from serving.gpus)."""

    requests: ResourceList = nested(ResourceList, "Resources the scheduler reserves.")
    limits: ResourceList = nested(ResourceList, "Most the container may use.")

    model_config = rules(_not_above_limit("cpu"), _not_above_limit("memory"))

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for resource in ("cpu", "memory"):
            request = getattr(self.requests, resource)
            limit = getattr(self.limits, resource)
            if request and limit and quantity_bytes(request) > quantity_bytes(limit):
                raise ValueError(f"requests.{resource} must not exceed limits.{resource}")
        return self


class Toleration(Schema):
    """A pod toleration (as in core/v1)."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty matches all.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: seconds the pod stays after the taint appears."
    )

    model_config = rules(
        (
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            ".value",
        ),
        (
            "self.operator == 'Exists' || (has(self.key) && self.key != '')",
            "operator must be Exists when key is empty (which matches every taint)",
            ".operator",
        ),
    )

    @model_validator(mode="after")
    def _operator_fits_key_and_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.operator != "Exists" and not self.key:
            raise ValueError(
                "operator must be Exists when key is empty (which matches every taint)"
            )
        return self


class Rollout(Schema):
    """How a new version of the pods replaces the old."""

    max_surge: int | None = Field(
        None,
        ge=0,
        le=16,
        description="Extra pods during a rollout. Default: 0 when pods use GPUs (a surge pod "
        "would wait for a GPU the old pod holds), else 1.",
    )
    max_unavailable: int | None = Field(
        None,
        ge=0,
        le=16,
        description="Pods that may be down during a rollout. Default: 1 when pods use GPUs, "
        "else 0.",
    )


class Serving(Schema):
    """How the model-server pods run."""

    replicas: int = Field(
        1, ge=0, le=256, description="Replicas when autoscaling is off (kubectl scale sets it)."
    )
    gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per pod; 0 runs on CPU.")
    resources: Resources = nested(Resources, "CPU and memory of the server container.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations, added to the nvidia.com/gpu one when gpus > 0.",
    )
    max_batch_size: int = Field(
        8, ge=1, le=256, description="Most sequences decoded together (continuous batching)."
    )
    max_concurrency: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most requests in flight per pod; beyond it the server answers 429.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the API key clients must send; unset: no auth."
    )
    image: str | None = Field(
        None,
        max_length=512,
        description="Server image; unset: the operator's default CPU or GPU image.",
    )
    rollout: Rollout = nested(Rollout, "Rolling-update settings.")
    termination_grace_period_seconds: int = Field(
        60, ge=1, le=3600, description="Time in-flight requests get to finish on shutdown."
    )

    model_config = rules(
        (
            f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.size() <= {LABEL_KEY_MAX} "
            f"&& k.matches('{LABEL_KEY}'))",
            f"nodeSelector {LABEL_KEY_PROBLEM}",
            ".nodeSelector",
        )
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > LABEL_KEY_MAX or not re.fullmatch(LABEL_KEY, key):
                raise ValueError(f"{key!r}: {LABEL_KEY_PROBLEM}")
        return value


# --- cache, autoscaling, monitoring --------------------------------------------------------


class Cache(Schema):
    """Exact-match response cache in a Redis-protocol sidecar of each pod."""

    enabled: bool = Field(True, description="Run the cache sidecar.")
    ttl_seconds: int = Field(3600, ge=1, le=7 * 86400, description="Seconds an entry lives.")
    max_memory: Quantity = Field(
        "256Mi", description="Memory of the cache (at least 1Mi); LRU beyond it."
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Cache image: any Redis-protocol server whose entrypoint is its server binary "
        "(it is given flags only). Default: the operator's (Valkey, BSD licence; Helm value "
        "defaults.cacheImage).",
    )
    include_sampled: bool = Field(
        False,
        description="Also cache requests with temperature > 0 (by default only deterministic "
        "ones are cached).",
    )

    model_config = rules(
        (
            "!has(self.maxMemory) || quantity(self.maxMemory).compareTo(quantity('1Mi')) >= 0",
            "maxMemory must be at least 1Mi (0 would leave the cache unbounded)",
            ".maxMemory",
        )
    )

    @field_validator("max_memory")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if quantity_bytes(value) < 2**20:
            raise ValueError("must be at least 1Mi (0 would leave the cache unbounded)")
        return value


class Autoscaling(Schema):
    """Scale the model-server Deployment on in-flight requests per pod."""

    min_replicas: int = Field(1, ge=1, le=256, description="Fewest replicas.")
    max_replicas: int = Field(4, ge=1, le=256, description="Most replicas.")
    target_inflight_per_pod: int = Field(
        8, ge=1, le=4096, description="In-flight requests per pod the autoscaler aims at."
    )
    engine: Literal["hpa", "keda"] = Field(
        "hpa",
        description="hpa: an autoscaling/v2 HorizontalPodAutoscaler on the pods metric "
        "(needs a custom-metrics adapter). keda: a KEDA ScaledObject with a Prometheus trigger.",
    )
    prometheus_address: str | None = Field(
        None,
        pattern=r"^https?://",
        max_length=2048,
        description="Prometheus the KEDA trigger queries (engine: keda).",
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Seconds of lower load before scaling down."
    )

    model_config = rules(
        (
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            ".minReplicas",
        ),
        (
            "self.engine != 'keda' || has(self.prometheusAddress)",
            "engine keda needs prometheusAddress",
            ".prometheusAddress",
        ),
    )


_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration (1h30m, 45s, 0)."""
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION.findall(text))


class Alerts(Schema):
    """Alerting rules (a PrometheusRule) on the app's service-level objectives."""

    enabled: bool = Field(True, description="Create the PrometheusRule.")
    p99_latency_seconds: float = Field(
        5.0,
        ge=contract.LATENCY_BUCKETS[0],
        lt=contract.LATENCY_BUCKETS[-1],
        description="Alert when p99 request latency exceeds this (within the latency "
        "histogram's buckets, 0.05 to 128 s: a p99 is not measured outside them).",
    )
    error_rate_percent: float = Field(
        5.0,
        ge=0.001,
        lt=100,
        description="Alert when more than this percentage of requests fail (5xx).",
    )
    cache_hit_rate_percent: float | None = Field(
        None, ge=0, le=100, description="Alert when the cache hit rate falls below this."
    )
    tool_error_rate_percent: float = Field(
        10.0,
        ge=0.001,
        lt=100,
        description="Alert when more than this percentage of tool calls fail (apps with "
        "tools only).",
    )
    for_duration: str | None = Field(
        None,
        # The PrometheusRule CRD's own pattern for `for` (units in order, each at most once).
        pattern=r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
        min_length=1,
        max_length=32,
        description="How long an alert's condition must hold before it fires, as a Prometheus "
        "duration of at most 24h (0, 30s, 2m, 1h30m); unset: 5m for LLMChainAppDown, 10m for "
        "latency, error rate and tool errors, 30m for the cache hit rate.",
    )

    @field_validator("for_duration")
    @classmethod
    def _at_most_a_day(cls, value: str | None) -> str | None:
        if value is not None and duration_seconds(value) > 86400:
            raise ValueError("must be at most 24h")
        return value


class Monitoring(Schema):
    """Prometheus Operator objects and a Grafana dashboard."""

    service_monitor: bool = Field(True, description="Create a ServiceMonitor for /metrics.")
    scrape_interval: str = Field(
        "30s",
        pattern=r"^0*[1-9][0-9]*(ms|s|m)$",
        max_length=16,
        description="Scrape interval (not zero).",
    )
    alerts: Alerts = nested(Alerts, "Alerting rules.")
    dashboard: bool = Field(
        True, description="Create a ConfigMap with a Grafana dashboard (sidecar-discoverable)."
    )


# --- the chain -----------------------------------------------------------------------------


class Memory(config.Memory):
    """Conversation memory, kept per session id in a Redis shared by all replicas."""

    store: Literal["managed", "external"] = Field(
        "managed",
        description="managed: a small Redis Deployment the operator runs for this app. "
        "external: the Redis whose URL is in redisUrlSecretRef.",
    )
    redis_url_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the external Redis URL (store: external)."
    )

    model_config = rules(
        (
            "(self.store == 'external') == has(self.redisUrlSecretRef)",
            "redisUrlSecretRef is required with store: external and not allowed with store: "
            "managed",
            ".redisUrlSecretRef",
        )
    )


class SecretHeader(Schema):
    """An HTTP header whose value is a key of a Secret."""

    header: str = Field(pattern=config.HEADER, description="Header name, e.g. Authorization.")
    secret_key_ref: SecretKeyRef = Field(description="The Secret key holding its value.")


class Tool(config.ToolBase):
    """A tool chains can call over HTTP, from tool and agent steps."""

    headers_from_secrets: list[SecretHeader] = Field(
        default_factory=list,
        max_length=8,
        description="Headers whose values are Secret keys (tokens, API keys): passed to the "
        "server pods as environment variables, never written into the chain ConfigMap.",
    )

    egress_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list,
        max_length=8,
        description="Ports the server pods' NetworkPolicy lets out for this tool; default: the "
        "URL's port. A tool behind a Service whose targetPort differs needs the pods' port here "
        "(policies see the connection after the Service's translation).",
    )

    def for_server(self, index: int) -> config.Tool:
        """The tool as the server reads it: each secret header names the environment variable
        `secret_env` gives it."""
        data = self.model_dump(exclude={"headers_from_secrets", "egress_ports"})
        data["secret_headers"] = {
            h.header: secret_env(index, j) for j, h in enumerate(self.headers_from_secrets)
        }
        return config.Tool.model_validate(data)


def secret_env(tool: int, header: int) -> str:
    """The server's environment variable holding secret header `header` of tool `tool`."""
    return f"LLMCHAIN_TOOL_{tool}_SECRET_{header}"


class Chain(config.Chain):
    """A sequential chain: each step's output is a variable for the steps after it."""

    memory: Memory | None = Field(
        None, description="Conversation memory; omitted: every request stands alone."
    )

    def for_server(self) -> config.Chain:
        """The chain as the server reads it: without where the memory store runs (the operator
        turns that into the server's memory URL)."""
        return config.Chain.model_validate(
            self.model_dump(exclude={"memory": {"store", "redis_url_secret_ref"}})
        )


# --- the resource --------------------------------------------------------------------------


class LLMChainAppSpec(Schema):
    """Desired state of an LLM chain app."""

    model: ModelSpec = Field(description="The model every replica serves.")
    chain: Chain = Field(description="The chain: inputs, steps, memory.")
    serving: Serving = nested(Serving, "How the model-server pods run.")
    cache: Cache = nested(Cache, "Per-pod response cache.")
    autoscaling: Autoscaling | None = Field(
        None,
        description="Autoscale the Deployment; omitted: serving.replicas is used. The "
        "autoscaler targets the Deployment, never this resource.",
    )
    monitoring: Monitoring = nested(Monitoring, "Prometheus and Grafana objects.")
    tools: list[Tool] = Field(
        default_factory=list,
        max_length=32,
        description="Tools the chain's tool and agent steps call over HTTP. The operator "
        "adds NetworkPolicy egress for their ports (and DNS); the server checks allowedHosts "
        "on every call.",
    )
    retrieval: Retrieval | None = Field(
        None,
        description="The documents the chain's retrieval steps search, the embedding model and "
        "the index; omitted: no retrieval steps. The server also serves /v1/embeddings.",
    )

    model_config = rules(
        (
            "!has(self.tools) || self.tools.all(t, self.tools.exists_one(u, u.name == t.name))",
            "tool names must be unique",
            ".tools",
        ),
        (
            "self.chain.steps.all(s, s.type != 'tool' || "
            "(has(self.tools) && self.tools.exists(t, t.name == s.tool)))",
            "a tool step's tool must be one of spec.tools",
            ".chain.steps",
        ),
        (
            "self.chain.steps.all(s, s.type != 'agent' || "
            "(has(self.tools) && s.tools.all(n, self.tools.exists(t, t.name == n))))",
            "an agent step's tools must be among spec.tools",
            ".chain.steps",
        ),
        (
            "self.chain.steps.all(s, s.type != 'retrieval') || has(self.retrieval)",
            "retrieval steps need spec.retrieval (the embedding model and the documents to index)",
            ".chain.steps",
        ),
        (
            "!(self.model.executionProvider in ['cuda', 'tensorrt']) || self.serving.gpus >= 1",
            "executionProvider cuda and tensorrt need serving.gpus >= 1",
            ".model.executionProvider",
        ),
        (
            "self.model.executionProvider != 'tensorrt' || self.model.quantization != 'int4'",
            "the TensorRT provider does not run int4 (MatMulNBits) models",
            ".model.quantization",
        ),
    )


def tool_problems(spec: LLMChainAppSpec) -> list[str]:
    """The spec's tool references, as the CRD's CEL rules check them (for `llmchain render` and
    the webhook, which validate with these models)."""
    names = [t.name for t in spec.tools]
    problems = [
        f"spec.tools: tool {n} is defined twice" for n in sorted(set(names)) if names.count(n) > 1
    ]
    for i, step in enumerate(spec.chain.steps):
        wanted = [step.tool] if isinstance(step, config.ToolStep) else getattr(step, "tools", [])
        problems += [
            f"spec.chain.steps[{i}]: tool {n} is not one of spec.tools"
            for n in wanted
            if n not in names
        ]
        if isinstance(step, config.RetrievalStep) and spec.retrieval is None:
            problems.append(
                f"spec.chain.steps[{i}]: retrieval steps need spec.retrieval (the embedding "
                "model and the documents to index)"
            )
    return problems


class Condition(Schema):
    """A status condition, as in metav1.Condition."""

    type: str = Field(
        max_length=316,
        description="Ready, ModelReady, IndexReady, Progressing, Degraded or OptionalAPIs.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last change.")
    message: str = Field(max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, ge=0, description="Generation of the spec this condition is about."
    )


class AutoscalerStatus(Schema):
    """What the app's autoscaler reports (its HorizontalPodAutoscaler; KEDA's for engine keda)."""

    engine: Literal["hpa", "keda"] = Field(description="The autoscaling engine.")
    hpa: str | None = Field(None, description="Name of the HorizontalPodAutoscaler that scales.")
    active: bool = Field(
        description="Whether the autoscaler is acting on its metric: the HPA's ScalingActive "
        "condition (engine hpa) or the ScaledObject's Active condition (engine keda)."
    )
    reason: str | None = Field(None, max_length=1024, description="Reason of that condition.")
    message: str | None = Field(None, max_length=4096, description="Message of that condition.")
    current_replicas: int | None = Field(None, ge=0, description="Replicas the HPA last saw.")
    desired_replicas: int | None = Field(None, ge=0, description="Replicas the HPA wants.")
    last_scale_time: str | None = Field(None, description="When the HPA last changed the count.")


class ToolStatus(Schema):
    """A tool of the app as the status reports it."""

    name: str = Field(description="Tool name.")
    method: str = Field(description="HTTP method.")
    allowed_hosts: list[str] = Field(description="Where its calls may go.")
    steps: list[str] = Field(description="The steps that call it.")


def tools_status(spec: LLMChainAppSpec) -> list[dict[str, object]] | None:
    """The status's tools (camelCase, as stored): each with the steps that call it; None for
    an app without tools."""
    if not spec.tools:
        return None

    def callers(name: str) -> list[str]:
        return [
            s.name
            for s in spec.chain.steps
            if (isinstance(s, config.ToolStep) and s.tool == name)
            or (isinstance(s, config.AgentStep) and name in s.tools)
        ]

    return [
        {
            "name": t.name,
            "method": t.http.method,
            "allowedHosts": list(t.http.allowed_hosts),
            "steps": callers(t.name),
        }
        for t in spec.tools
    ]


class RetrievalStatus(Schema):
    """The index as built: the digests it was built for and, once a build reported, its size."""

    index_digest: str = Field(
        description="Digest of the index the pods serve: embedding model, corpus, chunking, kind."
    )
    embedding_model_digest: str = Field(description="Digest of the built embedding model.")
    corpus_digest: str = Field(
        description="Digest of the corpus: the ConfigMaps' data, or the PVC's or URL's spec."
    )
    documents: int | None = Field(None, ge=0, description="Documents indexed.")
    chunks: int | None = Field(None, ge=0, description="Passages (chunks) in the index.")
    skipped: int | None = Field(
        None,
        ge=0,
        description="Files not indexed (empty, binary, not UTF-8 or over 10 MiB); the build's "
        "log names each.",
    )


class LLMChainAppStatus(Schema):
    """Observed state, written by the operator."""

    observed_generation: int | None = Field(
        None, ge=0, description="Generation of the spec the operator last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, ModelReady, IndexReady (with retrieval), Progressing, Degraded, "
        "OptionalAPIs.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(None, ge=0, description="Pods of the Deployment.")
    ready_replicas: int | None = Field(None, ge=0, description="Ready pods of the Deployment.")
    desired_replicas: int | None = Field(
        None,
        ge=0,
        description="Replicas the Deployment is asked for (by the autoscaler, if any).",
    )
    autoscaler: AutoscalerStatus | None = Field(
        None, description="The autoscaler's view (spec.autoscaling set)."
    )
    selector: str | None = Field(
        None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoint: str | None = Field(None, description="In-cluster URL of the app's HTTP API.")
    tools: list[ToolStatus] | None = Field(
        None, description="The tools the chain calls, and where calls may go."
    )
    model_digest: str | None = Field(
        None, description="Digest of the built model being served (sha256:...)."
    )
    retrieval: RetrievalStatus | None = Field(
        None, description="The document index the retrieval steps search."
    )


class LLMChainApp(Schema):
    """An LLM chain app: a model, a chain, and how to serve, cache, scale and watch them."""

    api_version: Literal["llmchain.io/v1alpha1"] = Field("llmchain.io/v1alpha1")
    kind: Literal["LLMChainApp"] = Field("LLMChainApp")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: LLMChainAppSpec
    status: LLMChainAppStatus | None = None
