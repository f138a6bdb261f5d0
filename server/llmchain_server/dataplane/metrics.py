"""The server's Prometheus metrics, declared under the names of the operator-server contract
(`llmchain_server.contract`: autoscalers, alerts and the dashboard query them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmchain_server import contract
from llmchain_server.contract import counter

LATENCY_BUCKETS = contract.LATENCY_BUCKETS
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.in_flight = Gauge(contract.INFLIGHT, "Requests being handled.", registry=registry)
        self.requests = Counter(
            counter(contract.REQUESTS),
            "Finished HTTP requests.",
            contract.REQUEST_LABELS,
            registry=registry,
        )
        self.latency = Histogram(
            contract.LATENCY,
            "Request latency.",
            contract.LATENCY_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            contract.TTFT,
            "Time from a request's arrival to its first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            contract.TPOT,
            "Time between generated tokens of one request.",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            counter(contract.REJECTED),
            "Requests refused for load (429) or shutdown (503).",
            contract.REJECTED_LABELS,
            registry=registry,
        )
        self.cache_hits = Counter(
            counter(contract.CACHE_HITS), "Response cache hits.", registry=registry
        )
        self.cache_misses = Counter(
            counter(contract.CACHE_MISSES), "Response cache misses.", registry=registry
        )
        self.tool_calls = Counter(
            counter(contract.TOOL_CALLS),
            "Tool calls made by chains, by outcome (ok, error, cancelled).",
            contract.TOOL_CALL_LABELS,
            registry=registry,
        )
        self.tool_seconds = Histogram(
            contract.TOOL_CALL_DURATION,
            "Tool call latency, redirects included.",
            ("tool",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_errors = Counter(
            counter(contract.CACHE_ERRORS),
            "Response cache lookups that failed (fail-open).",
            registry=registry,
        )
