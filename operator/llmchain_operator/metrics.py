"""Prometheus metrics of the operator itself, served on /metrics by prometheus-client."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "llmchain_operator_reconciles_total",
    "Reconciles of LLMChainApps, by result (success, invalid, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "llmchain_operator_reconcile_duration_seconds",
    "Time one reconcile of an LLMChainApp took.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ECHOES = Counter(
    "llmchain_operator_child_echoes_total",
    "Reconciles that children's watch events asked for and were skipped: every one of those"
    " events only reported the operator's own write.",
)
MANAGED_APPS = Gauge("llmchain_operator_managed_apps", "LLMChainApps the operator manages.")
IS_LEADER = Gauge("llmchain_operator_leader", "1 while this replica holds the leader lease.")


def record_reconcile(result: str, seconds: float) -> None:
    RECONCILES.labels(result=result).inc()
    RECONCILE_SECONDS.observe(seconds)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on a background thread."""
    start_http_server(port, addr=host)
