"""The server's Prometheus metrics. The names autoscalers and alerts rely on come from the
operator's contract (llmchain_operator.builders.metrics_contract; a test compares the lists)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.in_flight = Gauge(
            "llmchain_requests_in_flight", "Requests being handled.", registry=registry
        )
        self.requests = Counter(
            "llmchain_requests", "Finished HTTP requests.", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "llmchain_request_duration_seconds",
            "Request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "llmchain_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "llmchain_time_per_output_token_seconds",
            "Time between generated tokens of one request.",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "llmchain_requests_rejected",
            "Requests refused for load (429) or shutdown (503).",
            ["reason"],
            registry=registry,
        )
        self.cache_hits = Counter("llmchain_cache_hits", "Response cache hits.", registry=registry)
        self.cache_misses = Counter(
            "llmchain_cache_misses", "Response cache misses.", registry=registry
        )
        self.cache_errors = Counter(
            "llmchain_cache_errors",
            "Response cache lookups that failed (fail-open).",
            registry=registry,
        )
