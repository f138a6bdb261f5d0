"""Prometheus Operator objects (ServiceMonitor, PrometheusRule) and the Grafana dashboard."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from llmchain_operator.api import LLMChainApp, duration_seconds
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
    LATENCY_BUCKETS,
    LIVE_PATH,
    METRICS_PATH,
    READY_PATH,
    REQUESTS,
    TOOL_CALL_DURATION,
    TOOL_CALLS,
    TTFT,
)


def _selector(app: LLMChainApp) -> str:
    return f'namespace="{app_namespace(app)}",service="{app_name(app)}"'


# Probes and scrapes are requests too (several a minute per pod, all fast and successful): the
# error rate, latency and request rate are of the API's requests only.
_NOT_API = "|".join((LIVE_PATH, READY_PATH, METRICS_PATH))


def _api_selector(app: LLMChainApp) -> str:
    return f'{_selector(app)},route!~"{_NOT_API}"'


# Endpoints of pods that are not Ready are not scraped, so `up` counts the ready replicas: the
# endpoint-ready label of either service discovery role (endpoints, endpointslice) is "false".
NOT_READY_RELABEL: Manifest = {
    "action": "drop",
    "sourceLabels": [
        "__meta_kubernetes_endpoint_ready",
        "__meta_kubernetes_endpointslice_endpoint_conditions_ready",
    ],
    "regex": ".*false.*",
}


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
                {
                    "port": "http",
                    "path": METRICS_PATH,
                    "interval": monitoring.scrape_interval,
                    "relabelings": [NOT_READY_RELABEL],
                }
            ],
        },
    }


@dataclass(frozen=True)
class Alert:
    """One alerting rule: `value op threshold` (then `suffix`), held for `for_` before firing."""

    name: str
    value: str
    """The PromQL the threshold applies to; it returns data whenever the app is scraped (a test
    evaluates it against the real Prometheus)."""
    op: str
    threshold: float
    for_: str
    severity: str
    summary: str
    suffix: str = ""

    @property
    def expr(self) -> str:
        return f"{self.value} {self.op} {number(self.threshold)}{self.suffix}"


def number(value: float) -> str:
    """A threshold as written: short when `:g` keeps it exact, else every digit (99.99999%
    must not become 100%, which no error rate exceeds)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def alerts(app: LLMChainApp) -> list[Alert]:
    """The app's alerts (LLMChainAppDown, LLMChainHighLatency, LLMChainHighErrorRate, and
    LLMChainLowCacheHitRate when a floor is set)."""
    spec = app.spec.monitoring.alerts
    name, sel, api = app_name(app), _selector(app), _api_selector(app)
    pending = spec.for_duration

    def rate(metric: str, window: str, extra: str = "") -> str:
        return f"sum(rate({metric}{{{sel}{extra}}}[{window}]))"

    api_routes = f',route!~"{_NOT_API}"'
    errors = rate(REQUESTS, "5m", f'{api_routes},status=~"5.."')
    found = [
        Alert(
            "LLMChainAppDown",
            f"sum(up{{{sel}}})",
            "==",
            0,
            pending or "5m",
            "critical",
            f"No ready replica of {name} is being scraped.",
            suffix=f" or absent(up{{{sel}}})",
        ),
        Alert(
            "LLMChainHighLatency",
            f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{api}}}[5m])))",
            ">",
            spec.p99_latency_seconds,
            pending or "10m",
            "warning",
            f"p99 latency of {name} is above {number(spec.p99_latency_seconds)}s.",
        ),
        Alert(
            "LLMChainHighErrorRate",
            # `or vector(0)`: no 5xx series exists before the first failure.
            f"({errors} or vector(0)) / {rate(REQUESTS, '5m', api_routes)}",
            ">",
            spec.error_rate_percent / 100,
            pending or "10m",
            "warning",
            f"More than {number(spec.error_rate_percent)}% of requests to {name} fail.",
        ),
    ]
    if spec.cache_hit_rate_percent:  # no rate is below a floor of 0: no rule
        hits, misses = rate(CACHE_HITS, "15m"), rate(CACHE_MISSES, "15m")
        found.append(
            Alert(
                "LLMChainLowCacheHitRate",
                f"{hits} / ({hits} + {misses})",
                "<",
                spec.cache_hit_rate_percent / 100,
                pending or "30m",
                "info",
                f"Cache hit rate of {name} is below {number(spec.cache_hit_rate_percent)}%.",
            )
        )
    if app.spec.tools:
        calls = rate(TOOL_CALLS, "5m")
        failed = rate(TOOL_CALLS, "5m", ',outcome="error"')
        found.append(
            Alert(
                "LLMChainToolErrors",
                # `or vector(0)`: no error series exists before the first failure.
                f"({failed} or vector(0)) / {calls}",
                ">",
                spec.tool_error_rate_percent / 100,
                pending or "10m",
                "warning",
                f"More than {number(spec.tool_error_rate_percent)}% of {name}'s tool calls fail.",
            )
        )
    return found


def alert_rules(app: LLMChainApp) -> list[Manifest]:
    """The alerting rules, as a Prometheus rule group's `rules`."""
    return [
        {
            "alert": alert.name,
            "expr": alert.expr,
            "for": alert.for_,
            "labels": {"severity": alert.severity, "llmchain_app": app_name(app)},
            "annotations": {"summary": alert.summary},
        }
        for alert in alerts(app)
    ]


def build_prometheus_rule(app: LLMChainApp) -> Manifest | None:
    if not app.spec.monitoring.alerts.enabled:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {"groups": [{"name": f"llmchain.{app_name(app)}", "rules": alert_rules(app)}]},
    }


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]
    """(legend, PromQL) per line of the panel."""


def panels(app: LLMChainApp) -> list[Panel]:
    """The dashboard's panels; each query returns data once the app has served a little load
    (a test evaluates them all against the real Prometheus)."""
    sel, api = _selector(app), _api_selector(app)

    def quantile(q: float, metric: str, selector: str) -> str:
        return f"histogram_quantile({q:g}, sum by (le) (rate({metric}_bucket{{{selector}}}[5m])))"

    hits, misses = (f"sum(rate({m}{{{sel}}}[5m]))" for m in (CACHE_HITS, CACHE_MISSES))
    return [
        Panel(
            "Requests per second by status",
            "reqps",
            (("{{status}}", f"sum by (status) (rate({REQUESTS}{{{api}}}[5m]))"),),
        ),
        Panel(
            "Latency p50 / p99",
            "s",
            (("p50", quantile(0.5, LATENCY, api)), ("p99", quantile(0.99, LATENCY, api))),
        ),
        Panel("Time to first token p99", "s", (("p99", quantile(0.99, TTFT, sel)),)),
        Panel(
            "Generated tokens per second",
            "short",
            (("tokens/s", f"sum(rate({GENERATED_TOKENS}{{{sel}}}[5m]))"),),
        ),
        Panel("In-flight requests per pod", "short", (("{{pod}}", f"{INFLIGHT}{{{sel}}}"),)),
        Panel("Cache hit rate", "percentunit", (("hits", f"{hits} / ({hits} + {misses})"),)),
        *(tool_panels(sel) if app.spec.tools else []),
    ]


def tool_panels(sel: str) -> list[Panel]:
    """The dashboard's tool row: calls per second by tool and outcome, p99 latency by tool."""
    buckets = f"rate({TOOL_CALL_DURATION}_bucket{{{sel}}}[5m])"
    by_tool = f"histogram_quantile(0.99, sum by (le, tool) ({buckets}))"
    return [
        Panel(
            "Tool calls per second by tool and outcome",
            "reqps",
            (
                (
                    "{{tool}} {{outcome}}",
                    f"sum by (tool, outcome) (rate({TOOL_CALLS}{{{sel}}}[5m]))",
                ),
            ),
        ),
        Panel("Tool call latency p99 by tool", "s", (("{{tool}}", by_tool),)),
    ]


def _panel(index: int, panel: Panel) -> Manifest:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": panel.unit}},
        "targets": [
            {"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (legend, expr) in enumerate(panel.targets)
        ],
    }


def build_dashboard_configmap(app: LLMChainApp) -> Manifest | None:
    """A ConfigMap the Grafana dashboard sidecar discovers by its grafana_dashboard label."""
    if not app.spec.monitoring.dashboard:
        return None
    dashboard = {
        "title": f"LLM chain: {app_namespace(app)}/{app_name(app)}",
        "uid": f"llmchain-{app_namespace(app)}-{app_name(app)}"[:40],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(i, panel) for i, panel in enumerate(panels(app))],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            app, f"{app_name(app)}-dashboard", "monitoring", labels={"grafana_dashboard": "1"}
        ),
        "data": {f"{app_name(app)}.json": json.dumps(dashboard, indent=2, sort_keys=True)},
    }


# --- promtool unit tests of the alerts ------------------------------------------------------


def _series(metric: str, labels: dict[str, str], values: str) -> Manifest:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


@dataclass(frozen=True)
class _Case:
    series: list[Manifest]
    fires: bool
    labels: dict[str, str]
    """Labels the alert carries beyond the rule's own (absent() keeps its matchers)."""


class _Synthetic:
    """Series of one app's metrics for `promtool test rules`, one sample a minute."""

    def __init__(self, app: LLMChainApp, alert: Alert) -> None:
        self.ns, self.name = app_namespace(app), app_name(app)
        self.target = {"namespace": self.ns, "service": self.name, "pod": f"{self.name}-0"}
        self.route = {**self.target, "route": "/v1/chat/completions"}
        self.probes = {**self.target, "route": READY_PATH}  # many, fast, successful: not counted
        # Evaluated once the condition has held past `for` and the 15m rate windows are full.
        self.eval_minutes = int(duration_seconds(alert.for_) // 60) + 20
        self.samples = self.eval_minutes + 5

    def grow(self, per_minute: int) -> str:
        return f"0+{per_minute}x{self.samples}"

    def down(self, alert: Alert) -> list[_Case]:
        other = {**self.target, "namespace": f"{self.ns}-other"}  # another app's target only
        return [
            _Case([_series("up", self.target, f"0x{self.samples}")], True, {}),
            _Case(
                [_series("up", other, f"1x{self.samples}")],
                True,
                {"namespace": self.ns, "service": self.name},
            ),
            _Case([_series("up", self.target, f"1x{self.samples}")], False, {}),
        ]

    def latency(self, alert: Alert) -> list[_Case]:
        """The server's own buckets: all requests just above the threshold (the first bucket
        whose lower bound is at or above it, or +Inf), then all in the first bucket."""
        bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
        above = next(
            (i + 1 for i, b in enumerate(LATENCY_BUCKETS) if b >= alert.threshold), len(bounds) - 1
        )

        def buckets(first_filled: int) -> list[Manifest]:
            return [
                *(
                    _series(f"{LATENCY}_bucket", {**self.route, "le": le}, self.grow(count))
                    for le, count in (
                        (le, 10 if i >= first_filled else 0) for i, le in enumerate(bounds)
                    )
                ),
                *(
                    _series(f"{LATENCY}_bucket", {**self.probes, "le": le}, self.grow(1000))
                    for le in bounds
                ),
            ]

        return [_Case(buckets(above), True, {}), _Case(buckets(0), False, {})]

    def error_rate(self, alert: Alert) -> list[_Case]:
        r = alert.threshold

        def requests(failed: int, ok: int) -> list[Manifest]:
            return [
                _series(REQUESTS, {**self.route, "status": "500"}, self.grow(failed)),
                _series(REQUESTS, {**self.route, "status": "200"}, self.grow(ok)),
                _series(REQUESTS, {**self.probes, "status": "200"}, self.grow(100_000)),
            ]

        cases = []
        if r < 1:  # a failing share above the threshold (none can be above 100%)
            cases.append(_Case(requests(100, int(100 * (1 - r) / r / 2)), True, {}))
        cases.append(_Case(requests(100, math.ceil(100 * (1 - r) / r * 2) + 1), False, {}))
        cases.append(
            _Case([_series(REQUESTS, {**self.route, "status": "200"}, self.grow(100))], False, {})
        )
        return cases

    def cache(self, alert: Alert) -> list[_Case]:
        def lookups(hits: int, misses: int) -> list[Manifest]:
            return [
                _series(CACHE_HITS, self.target, self.grow(hits)),
                _series(CACHE_MISSES, self.target, self.grow(misses)),
            ]

        cases = []
        if alert.threshold > 0:  # nothing is below a floor of 0
            cases.append(_Case(lookups(0, 100), True, {}))
        cases.append(_Case(lookups(100, 0), False, {}))
        return cases


def _tool_errors(self: _Synthetic, alert: Alert) -> list[_Case]:
    r = alert.threshold
    tool = {**self.target, "tool": "lookup"}

    def calls(failed: int, ok: int) -> list[Manifest]:
        return [
            _series(TOOL_CALLS, {**tool, "outcome": "error"}, self.grow(failed)),
            _series(TOOL_CALLS, {**tool, "outcome": "ok"}, self.grow(ok)),
        ]

    return [
        _Case(calls(100, int(100 * (1 - r) / r / 2)), True, {}),
        _Case(calls(100, math.ceil(100 * (1 - r) / r * 2) + 1), False, {}),
        _Case([_series(TOOL_CALLS, {**tool, "outcome": "ok"}, self.grow(100))], False, {}),
    ]


_CASES = {
    "LLMChainAppDown": _Synthetic.down,
    "LLMChainHighLatency": _Synthetic.latency,
    "LLMChainHighErrorRate": _Synthetic.error_rate,
    "LLMChainLowCacheHitRate": _Synthetic.cache,
    "LLMChainToolErrors": _tool_errors,
}


def rule_tests(app: LLMChainApp, rule_file: str) -> Manifest:
    """A `promtool test rules` file for the app's alerts: for each, synthetic series on which it
    fires (held past its `for`) and series on which it stays quiet. `rule_file` is the path of
    the rule groups (the PrometheusRule's spec) as promtool will read it."""
    tests = []
    for alert in alerts(app):
        synthetic = _Synthetic(app, alert)
        for i, case in enumerate(_CASES[alert.name](synthetic, alert)):
            expected = []
            if case.fires:
                labels = {"severity": alert.severity, "llmchain_app": app_name(app), **case.labels}
                expected = [{"exp_labels": labels, "exp_annotations": {"summary": alert.summary}}]
            verdict = "fires" if case.fires else "stays quiet"
            tests.append(
                {
                    "name": f"{alert.name} {verdict} ({i + 1})",
                    "interval": "1m",
                    "input_series": case.series,
                    "alert_rule_test": [
                        {
                            "eval_time": f"{synthetic.eval_minutes}m",
                            "alertname": alert.name,
                            "exp_alerts": expected,
                        }
                    ],
                }
            )
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}
