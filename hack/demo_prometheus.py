"""`make demo`'s live numbers, read from the cluster's Prometheus (hack/monitoring.sh), not from
the pod: the queries of the Grafana dashboard the operator rendered for the app, and its alerts.

    python hack/demo_prometheus.py PROMETHEUS_URL APP_FILE NAMESPACE [--first-scrape POD]

--first-scrape POD waits until Prometheus has scraped POD once (so the demo's requests grow
series Prometheus already has, which rate() can count) and prints nothing else.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.monitoring import alerts, panels

UNITS = {"s": " s", "reqps": " req/s", "percentunit": "", "short": ""}


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=30) as reply:
        result: list[dict[str, Any]] = json.load(reply)["data"]["result"]
    return result


def shown(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "no data yet"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    return f"{value:.3g}{UNITS.get(unit, '')}"


def wait(base: str, expr: str, what: str) -> None:
    print(f"waiting for {what}", end="", flush=True)
    for _ in range(100):
        if query(base, expr):
            break
        print(".", end="", flush=True)
        time.sleep(3)
    print()


def main() -> None:
    base, app_file, namespace = sys.argv[1:4]
    raw = yaml.safe_load(Path(app_file).read_text())
    raw["metadata"]["namespace"] = namespace
    app = LLMChainApp.model_validate(raw)
    target = f'namespace="{namespace}",service="{app.metadata["name"]}"'
    interval = app.spec.monitoring.scrape_interval
    if sys.argv[4:5] == ["--first-scrape"]:
        pod = sys.argv[5]
        scraped = f'llmchain_requests_total{{{target},pod="{pod}"}}'
        wait(base, scraped, f"Prometheus' first scrape of {pod} (every {interval})")
        return
    api = f'llmchain_requests_total{{{target},route=~"/v1/.*"}}'
    wait(
        base,
        f"sum(increase({api}[5m])) > 0",
        f"the scrape of the demo's requests (every {interval})",
    )
    print(f"Prometheus {base}: the dashboard's queries for {namespace}/{app.metadata['name']}")
    for panel in panels(app):
        for legend, expr in panel.targets:
            for sample in query(base, expr) or [{"metric": {}, "value": [0, "NaN"]}]:
                label = legend.replace("{{status}}", sample["metric"].get("status", ""))
                label = label.replace("{{pod}}", sample["metric"].get("pod", ""))
                value = shown(float(sample["value"][1]), panel.unit)
                print(f"  {panel.title:<32} {label:<34} {value}")
    firing = [
        a
        for a in json.load(urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=30))["data"][
            "alerts"
        ]
        if a["labels"].get("llmchain_app") == app.metadata["name"]
    ]
    names = ", ".join(a.name for a in alerts(app))
    print(f"  alert rules loaded: {names}; pending or firing: {len(firing)}")


if __name__ == "__main__":
    main()
