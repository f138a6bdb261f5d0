"""`llmchain rule-tests`: per app, `promtool test rules` unit tests in which every generated alert
fires on synthetic series and stays quiet on others; run here with the real promtool, for every
example and for thresholds at their edges."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import ROOT, TOOLBIN

EXAMPLES = sorted((ROOT / "examples").glob("*/app.yaml"))
LLMCHAIN = ROOT / ".venv" / "bin" / "llmchain"
ALERTS = {"LLMChainAppDown", "LLMChainHighLatency", "LLMChainHighErrorRate"}


def write_tests(app: dict[str, Any], out: Path) -> tuple[Path, Path]:
    source = out / "app.yaml"
    source.write_text(yaml.safe_dump(app))
    subprocess.run(
        [str(LLMCHAIN), "rule-tests", str(source), "-n", "apps", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    name = app["metadata"]["name"]
    return out / f"apps-{name}.rules.yaml", out / f"apps-{name}.test.yaml"


def promtool_test(test_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLBIN / "promtool"), "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def with_alerts(path: Path, **alerts: object) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(path.read_text())
    monitoring = app["spec"].setdefault("monitoring", {})
    monitoring.setdefault("alerts", {}).update(alerts)
    return app


def alerts_enabled(path: Path) -> bool:
    spec = yaml.safe_load(path.read_text())["spec"]
    return bool(spec.get("monitoring", {}).get("alerts", {}).get("enabled", True))


# Examples with alerts disabled (03-edge-cpu) have none to test; a test below checks so.
CASES = {
    **{p.parent.name: with_alerts(p) for p in EXAMPLES if alerts_enabled(p)},
    "short-for-and-cache-floor": with_alerts(
        EXAMPLES[0], forDuration="30s", cacheHitRatePercent=50, p99LatencySeconds=0.25
    ),
    "long-for": with_alerts(EXAMPLES[0], forDuration="1h30m"),
    # The ends of each field's range (api.py): a threshold `:g` would round (99.99999% is not
    # 100%), the histogram's last and first bucket bounds, a cache floor of 0 (no rule).
    "highest": with_alerts(
        EXAMPLES[0], errorRatePercent=99.99999, cacheHitRatePercent=0, p99LatencySeconds=127.5
    ),
    "lowest": with_alerts(
        EXAMPLES[0], errorRatePercent=0.001, cacheHitRatePercent=100, p99LatencySeconds=0.05
    ),
    "between-buckets": with_alerts(EXAMPLES[0], p99LatencySeconds=3, forDuration="0"),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_generated_alert_fires_and_stays_quiet_in_promtool(tmp_path: Path, case: str) -> None:
    app = CASES[case]
    _, tests = write_tests(app, tmp_path)
    names = {
        t["alert_rule_test"][0]["alertname"] for t in yaml.safe_load(tests.read_text())["tests"]
    }
    cache_floor = app["spec"]["monitoring"]["alerts"].get("cacheHitRatePercent")
    tools = app["spec"].get("tools")
    assert names == (
        ALERTS
        | ({"LLMChainLowCacheHitRate"} if cache_floor else set())
        | ({"LLMChainToolErrors"} if tools else set())
    )
    result = promtool_test(tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_an_app_without_alerts_gets_no_rule_tests(tmp_path: Path) -> None:
    write_tests(with_alerts(EXAMPLES[0], enabled=False), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml"]


@pytest.mark.parametrize(
    ("alert", "original", "broken"),
    [
        ("LLMChainHighErrorRate", " > 0.05", " > 0.5"),
        ("LLMChainHighLatency", " > 5", " > 50"),
        ("LLMChainAppDown", " == 0 or absent", " == 1 or absent"),
        # Probes and scrapes counted as requests: their many fast 200s hide the failures.
        ("LLMChainHighErrorRate", ',route!~"/healthz|/readyz|/metrics"', ""),
    ],
)
def test_the_generated_tests_fail_when_a_rule_is_broken(
    tmp_path: Path, alert: str, original: str, broken: str
) -> None:
    rules, tests = write_tests(with_alerts(EXAMPLES[0]), tmp_path)
    text = rules.read_text()
    assert original in text
    rules.write_text(text.replace(original, broken))
    result = promtool_test(tests)
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr
