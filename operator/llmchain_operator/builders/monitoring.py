"""Prometheus Operator objects (ServiceMonitor, PrometheusRule) and the Grafana dashboard."""

from __future__ import annotations

import json

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    app_namespace,
    metadata,
    selector_labels,
)
from llmchain_server.contract import (
    CACHE_HITS,
    CACHE_MISSES,
    GENERATED_TOKENS,
    INFLIGHT,
    LATENCY,
    METRICS_PATH,
    REQUESTS,
    TTFT,
)


def _selector(app: LLMChainApp) -> str:
    return f'namespace="{app_namespace(app)}",service="{app_name(app)}"'


def build_service_monitor(app: LLMChainApp) -> Manifest | None:
    monitoring = app.spec.monitoring
    if not monitoring.service_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "selector": {"matchLabels": selector_labels(app, "server")},
            "namespaceSelector": {"matchNames": [app_namespace(app)]},
            "endpoints": [
                {"port": "http", "path": METRICS_PATH, "interval": monitoring.scrape_interval}
            ],
        },
    }


def alert_rules(app: LLMChainApp) -> list[Manifest]:
    """The alerting rules, as a Prometheus rule group's `rules`."""
    alerts = app.spec.monitoring.alerts
    sel = _selector(app)
    labels = {"severity": "warning", "llmchain_app": app_name(app)}
    ratio = alerts.error_rate_percent / 100
    rules: list[Manifest] = [
        {
            "alert": "LLMChainAppDown",
            "expr": f"sum(up{{{sel}}}) == 0 or absent(up{{{sel}}})",
            "for": "5m",
            "labels": {**labels, "severity": "critical"},
            "annotations": {"summary": f"No replica of {app_name(app)} is being scraped."},
        },
        {
            "alert": "LLMChainHighLatency",
            "expr": (
                f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{sel}}}[5m])))"
                f" > {alerts.p99_latency_seconds:g}"
            ),
            "for": "10m",
            "labels": labels,
            "annotations": {
                "summary": f"p99 latency of {app_name(app)} is above "
                f"{alerts.p99_latency_seconds:g}s."
            },
        },
        {
            "alert": "LLMChainHighErrorRate",
            "expr": (
                f'sum(rate({REQUESTS}{{{sel},status=~"5.."}}[5m])) / '
                f"sum(rate({REQUESTS}{{{sel}}}[5m])) > {ratio:g}"
            ),
            "for": "10m",
            "labels": labels,
            "annotations": {
                "summary": f"More than {alerts.error_rate_percent:g}% of requests "
                f"to {app_name(app)} fail."
            },
        },
    ]
    if alerts.cache_hit_rate_percent is not None:
        floor = alerts.cache_hit_rate_percent / 100
        rules.append(
            {
                "alert": "LLMChainLowCacheHitRate",
                "expr": (
                    f"sum(rate({CACHE_HITS}{{{sel}}}[15m])) / (sum(rate({CACHE_HITS}{{{sel}}}"
                    f"[15m])) + sum(rate({CACHE_MISSES}{{{sel}}}[15m]))) < {floor:g}"
                ),
                "for": "30m",
                "labels": {**labels, "severity": "info"},
                "annotations": {
                    "summary": f"Cache hit rate of {app_name(app)} is below "
                    f"{alerts.cache_hit_rate_percent:g}%."
                },
            }
        )
    return rules


def build_prometheus_rule(app: LLMChainApp) -> Manifest | None:
    if not app.spec.monitoring.alerts.enabled:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {"groups": [{"name": f"llmchain.{app_name(app)}", "rules": alert_rules(app)}]},
    }


def _panel(index: int, title: str, expr: str, unit: str) -> Manifest:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}},
        "targets": [{"expr": expr, "refId": "A"}],
    }


def build_dashboard_configmap(app: LLMChainApp) -> Manifest | None:
    """A ConfigMap the Grafana dashboard sidecar discovers by its grafana_dashboard label."""
    if not app.spec.monitoring.dashboard:
        return None
    sel = _selector(app)
    panels = [
        (
            "Requests per second by status",
            f"sum by (status) (rate({REQUESTS}{{{sel}}}[5m]))",
            "reqps",
        ),
        (
            "Latency p50 / p99",
            f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{sel}}}[5m])))",
            "s",
        ),
        (
            "Time to first token p99",
            f"histogram_quantile(0.99, sum by (le) (rate({TTFT}_bucket{{{sel}}}[5m])))",
            "s",
        ),
        ("Generated tokens per second", f"sum(rate({GENERATED_TOKENS}{{{sel}}}[5m]))", "short"),
        ("In-flight requests per pod", f"{INFLIGHT}{{{sel}}}", "short"),
        (
            "Cache hit rate",
            f"sum(rate({CACHE_HITS}{{{sel}}}[5m])) / (sum(rate({CACHE_HITS}"
            f"{{{sel}}}[5m])) + sum(rate({CACHE_MISSES}{{{sel}}}[5m])))",
            "percentunit",
        ),
    ]
    dashboard = {
        "title": f"LLM chain: {app_namespace(app)}/{app_name(app)}",
        "uid": f"llmchain-{app_namespace(app)}-{app_name(app)}"[:40],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(i, *panel) for i, panel in enumerate(panels)],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            app, f"{app_name(app)}-dashboard", "monitoring", labels={"grafana_dashboard": "1"}
        ),
        "data": {f"{app_name(app)}.json": json.dumps(dashboard, indent=2, sort_keys=True)},
    }
