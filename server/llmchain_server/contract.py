"""The agreement between the operator and the chain server, in one place both import.

The operator writes these names into the pods it renders (environment variables, command-line
flags, ports, paths); the server reads them; autoscalers, alerts and the dashboard the operator
renders query the metrics the server exports. A name changed here changes on both sides.
This module depends on nothing, so importing it loads nothing of the server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

# -- the model build -------------------------------------------------------------------------
MODEL_BUILD_RECIPE: Final = "llmchain-model-build/4"
"""Version of what `llmchain model build` writes. Bumped when the build changes its output; it
is recorded in each model folder's manifest and is part of the operator's model digest, so a
bump rebuilds every app's model."""

INDEX_BUILD_RECIPE: Final = "llmchain-index-build/1"
"""Version of what `llmchain index build` writes: part of the operator's index digest."""

# -- environment variables of the server (the operator sets the first group) ------------------
ENV_MODEL_NAME: Final = "LLMCHAIN_MODEL_NAME"
"""The model id clients send (the app's name)."""
ENV_MODEL_DIGEST: Final = "LLMCHAIN_MODEL_DIGEST"
"""The model digest the pod was rendered for (informational: the folder's manifest is checked)."""
ENV_EXECUTION_PROVIDER: Final = "LLMCHAIN_EXECUTION_PROVIDER"
"""auto, cpu, cuda or tensorrt."""
ENV_MAX_BATCH_SIZE: Final = "LLMCHAIN_MAX_BATCH_SIZE"
"""Sequences the engine decodes together."""
ENV_CACHE_TTL_SECONDS: Final = "LLMCHAIN_CACHE_TTL_SECONDS"
ENV_CACHE_SAMPLED: Final = "LLMCHAIN_CACHE_SAMPLED"
"""true: cache sampled (temperature > 0) answers too."""
ENV_MEMORY_URL: Final = "LLMCHAIN_MEMORY_URL"
"""The shared Redis of conversation memory (its value may come from a Secret)."""
ENV_API_KEY_FILE: Final = "LLMCHAIN_API_KEY_FILE"
"""File holding the API key clients must send as a Bearer token."""
ENV_MAX_CONCURRENCY: Final = "LLMCHAIN_MAX_CONCURRENCY"
"""Requests in flight; beyond them a 429 with Retry-After."""
ENV_GRACE_SECONDS: Final = "LLMCHAIN_GRACE_SECONDS"
"""How long in-flight requests may run after SIGTERM."""
ENV_CPU_LIMIT: Final = "LLMCHAIN_CPU_LIMIT"
"""The container's CPU limit in whole cores (from the downward API): onnxruntime's threads."""

# The server's other knobs (defaults suit the pods the operator renders).
ENV_MAX_QUEUE: Final = "LLMCHAIN_MAX_QUEUE"
"""Requests that may wait for a batch slot."""
ENV_MAX_CONTEXT: Final = "LLMCHAIN_MAX_CONTEXT"
"""Context length the KV cache is sized for (at most the model's)."""
ENV_PREFILL_CHUNK: Final = "LLMCHAIN_PREFILL_CHUNK_TOKENS"
"""Prompt tokens prefilled between two decode steps while other streams run."""
ENV_PREFIX_CACHE_TOKENS: Final = "LLMCHAIN_PREFIX_CACHE_TOKENS"
"""Tokens of prompt prefixes whose keys and values the engine keeps for reuse (0: none)."""
ENV_GPU_DEVICE_ID: Final = "LLMCHAIN_GPU_DEVICE_ID"
ENV_GPU_MEMORY_BYTES: Final = "LLMCHAIN_GPU_MEMORY_BYTES"
ENV_GPU_MEMORY_FRACTION: Final = "LLMCHAIN_GPU_MEMORY_FRACTION"
ENV_MAX_BODY_BYTES: Final = "LLMCHAIN_MAX_BODY_BYTES"
ENV_MAX_PROMPT_TOKENS: Final = "LLMCHAIN_MAX_PROMPT_TOKENS"
ENV_MAX_PROMPT_CHARS: Final = "LLMCHAIN_MAX_PROMPT_CHARS"
"""The most characters a prompt may have, checked before tokenizing (default 16 per token of
LLMCHAIN_MAX_PROMPT_TOKENS)."""
ENV_HEADER_TIMEOUT_SECONDS: Final = "LLMCHAIN_HEADER_TIMEOUT_SECONDS"
"""How long a connection may take to send a request's line and headers; then it is closed."""
ENV_BODY_TIMEOUT_SECONDS: Final = "LLMCHAIN_BODY_TIMEOUT_SECONDS"
"""How long a request may take to send its body; then a 408."""
ENV_MAX_CONNECTIONS: Final = "LLMCHAIN_MAX_CONNECTIONS"
"""Open connections; beyond them a 503 and close (kept below the file-descriptor limit)."""
ENV_MAX_TOKENS_LIMIT: Final = "LLMCHAIN_MAX_TOKENS_LIMIT"
"""The most tokens one request may ask for."""
ENV_RETRY_AFTER_SECONDS: Final = "LLMCHAIN_RETRY_AFTER_SECONDS"
"""The Retry-After of 429 and 503 answers."""
ENV_SOURCE_CACHE_DIR: Final = "LLMCHAIN_CACHE_DIR"
"""Where `llmchain model build` caches downloaded sources."""
ENV_MAX_SOURCE_BYTES: Final = "LLMCHAIN_MAX_SOURCE_BYTES"
"""The most bytes `llmchain model build` downloads (default 64 GiB; FLAG_MAX_SOURCE_BYTES wins)."""

# -- command lines ---------------------------------------------------------------------------
COMMAND: Final = "llmchain"
SERVE: Final = ("serve",)
MODEL_BUILD: Final = ("model", "build")
MODEL_WAIT: Final = ("model", "wait")
INDEX_BUILD: Final = ("index", "build")
INDEX_WAIT: Final = ("index", "wait")

FLAG_MODEL: Final = "--model"
FLAG_CHAIN: Final = "--chain"
FLAG_HOST: Final = "--host"
FLAG_PORT: Final = "--port"
FLAG_REDIS_URL: Final = "--redis-url"
FLAG_MEMORY_URL: Final = "--memory-url"
FLAG_SOURCE: Final = "--source"
FLAG_SHA256: Final = "--sha256"
FLAG_MAX_SOURCE_BYTES: Final = "--max-source-bytes"
"""The download cap of `model build`; the operator passes the model volume's size."""
FLAG_QUANTIZATION: Final = "--quantization"
FLAG_ACCURACY: Final = "--accuracy"
FLAG_OUT: Final = "--out"
FLAG_DIGEST: Final = "--digest"
FLAG_DIR: Final = "--dir"
FLAG_TIMEOUT: Final = "--timeout"
FLAG_EMBEDDING_MODEL: Final = "--embedding-model"
FLAG_EMBEDDING_MODEL_NAME: Final = "--embedding-model-name"
FLAG_INDEX: Final = "--index"
FLAG_DOCUMENTS: Final = "--documents"
FLAG_CHUNK_SIZE: Final = "--chunk-size"
FLAG_CHUNK_OVERLAP: Final = "--chunk-overlap"
FLAG_KIND: Final = "--kind"
FLAG_CORPUS_DIGEST: Final = "--corpus-digest"
FLAG_REPORT: Final = "--report"
"""Where `index build` writes its summary as JSON (the operator passes the termination log,
which the kubelet copies into the container's status)."""

# -- ports and paths in the pod ----------------------------------------------------------------
HTTP_PORT: Final = 8000
"""The server's HTTP port (API, probes, metrics)."""
CACHE_PORT: Final = 6379
"""The Redis port of the cache sidecar (pod loopback) and of the managed memory store."""
MODEL_DIR: Final = "/models"
"""Where the model volume is mounted; each model folder is a sub-folder."""
RETRIEVAL_DIR: Final = "/retrieval"
"""Where each pod builds the embedding model and the index when there is no model volume."""
DOCUMENTS_DIR: Final = "/documents"
"""Where the index build reads the documents (ConfigMaps as sub-folders, or the PVC)."""
TERMINATION_LOG: Final = "/dev/termination-log"
CHAIN_DIR: Final = "/etc/llmchain/chain"
CHAIN_FILE: Final = "chain.yaml"
API_KEY_DIR: Final = "/etc/llmchain/api-key"

READY_PATH: Final = "/readyz"
LIVE_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"

# -- metrics the server exports (names as scraped) ---------------------------------------------
# Autoscalers, alerts and the dashboard the operator renders query these; the server declares its
# metrics from them. Counters are declared without `_total`: the client library appends it.
INFLIGHT: Final = "llmchain_requests_in_flight"
"""Gauge: requests being handled by this pod."""
REQUESTS: Final = "llmchain_requests_total"
"""Counter, labels REQUEST_LABELS: finished HTTP requests."""
LATENCY: Final = "llmchain_request_duration_seconds"
"""Histogram, label route: request latency."""
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
"""Bucket bounds (seconds) of LATENCY and TTFT: a p99 alert's threshold must fall inside them
(histogram_quantile never answers above the last bound, nor tells apart times in the first)."""
TTFT: Final = "llmchain_time_to_first_token_seconds"
"""Histogram: time from a request's arrival to its first generated token."""
TPOT: Final = "llmchain_time_per_output_token_seconds"
"""Histogram: time between generated tokens of one request."""
REJECTED: Final = "llmchain_requests_rejected_total"
"""Counter, label reason (concurrency, draining): requests refused for load or shutdown."""
GENERATED_TOKENS: Final = "llmchain_generated_tokens_total"
"""Counter: tokens generated."""
PROMPT_TOKENS: Final = "llmchain_prompt_tokens_total"
"""Counter: prompt tokens of admitted requests (computed, or from the prefix cache)."""
CACHE_HITS: Final = "llmchain_cache_hits_total"
CACHE_MISSES: Final = "llmchain_cache_misses_total"
CACHE_ERRORS: Final = "llmchain_cache_errors_total"
"""Counters: response cache lookups (errors: failed and answered without it)."""
MODEL_INFO: Final = "llmchain_model_info"
"""Gauge (1), labels MODEL_INFO_LABELS: the served model."""
BATCH_SIZE: Final = "llmchain_engine_batch_size"
QUEUE_DEPTH: Final = "llmchain_engine_queue_depth"
ENGINE_STEPS: Final = "llmchain_engine_steps_total"
PREFIX_LOOKUP_TOKENS: Final = "llmchain_prefix_cache_lookup_tokens_total"
"""Counter: prompt tokens looked up in the prefix cache (whole blocks a hit could cover)."""
PREFIX_HIT_TOKENS: Final = "llmchain_prefix_cache_hit_tokens_total"
"""Counter: prompt tokens whose keys and values came from the prefix cache (hit rate: this over
PREFIX_LOOKUP_TOKENS)."""
PREFIX_BLOCKS: Final = "llmchain_prefix_cache_blocks"
"""Gauge, label state (used, capacity): blocks of the prefix cache."""
PREFIX_EVICTIONS: Final = "llmchain_prefix_cache_evictions_total"
"""Counter: blocks evicted from the prefix cache to make room."""
CONSTRAINED_OUTPUTS: Final = "llmchain_constrained_outputs_total"
"""Counter, label outcome (complete, closed, cut): outputs under a grammar or JSON schema, by
whether they completed on their own, were closed early as max_tokens ran short, or were cut
incomplete."""
CONSTRAINT_SECONDS: Final = "llmchain_constraint_seconds_total"
"""Counter: seconds spent masking logits and advancing grammars (constrained decoding's cost)."""
TOOL_CALLS: Final = "llmchain_tool_calls_total"
"""Counter, labels TOOL_CALL_LABELS: tool calls made by chains (outcome: ok, error,
cancelled)."""
TOOL_CALL_DURATION: Final = "llmchain_tool_call_duration_seconds"
"""Histogram, label tool: tool call latency."""
TOOL_CALL_LABELS: Final = ("tool", "outcome")

REQUEST_LABELS: Final = ("route", "status")
LATENCY_LABELS: Final = ("route",)
REJECTED_LABELS: Final = ("reason",)
MODEL_INFO_LABELS: Final = ("digest", "quantization", "execution_provider", "kernels")

RENDERED_METRICS: Final = (
    INFLIGHT,
    REQUESTS,
    LATENCY,
    TTFT,
    GENERATED_TOKENS,
    CACHE_HITS,
    CACHE_MISSES,
)
"""The metrics the operator's autoscalers, alerts and dashboard use: the server must export
each (a test scrapes a running server for them)."""


def counter(name: str) -> str:
    """The name to declare a counter under (the client library appends `_total`)."""
    return name.removesuffix("_total")


def files_digest(checksums: Mapping[str, str]) -> str:
    """sha256 over the sorted `path sha256` lines of a folder's files: a model folder's digest
    and a corpus's. The operator computes the corpus digest of document ConfigMaps with it and
    `llmchain index build` refuses mounted files whose digest differs."""
    lines = "".join(f"{path} {checksums[path]}\n" for path in sorted(checksums))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
