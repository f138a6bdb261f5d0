"""The local cluster's Prometheus (hack/monitoring.sh) as the tests see it: its HTTP API at its
pod's address, which this host reaches through the real node's route."""

from __future__ import annotations

import json
import math
import subprocess
import urllib.parse
import urllib.request
from typing import Any

from tests.support.cluster import ROOT

MONITORING_SCRIPT = ROOT / "hack" / "monitoring.sh"


def install_monitoring() -> None:
    """`hack/monitoring.sh up`: idempotent; it re-creates what a test deleting the upstream CRDs
    (tests/e2e/test_optional_apis.py) took with them."""
    subprocess.run([str(MONITORING_SCRIPT), "up"], check=True, timeout=900)


def remove_monitoring() -> None:
    subprocess.run([str(MONITORING_SCRIPT), "down"], check=True, timeout=600)


class Prometheus:
    def url(self) -> str:
        return subprocess.run(
            [str(MONITORING_SCRIPT), "url"], check=True, capture_output=True, text=True
        ).stdout.strip()

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url()}/api/v1/{path}?{query}", timeout=30) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes back as one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def finite(self, expr: str) -> list[float]:
        """The query's finite values (NaN, as 0/0 gives, is no data for a dashboard)."""
        return [v for v in self.values(expr) if math.isfinite(v)]

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """Alerts of this name (pending or firing) whose labels include `labels`."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [
            a
            for a in found
            if a["labels"].get("alertname") == name
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active
