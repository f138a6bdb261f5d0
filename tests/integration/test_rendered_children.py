"""What `llmchain render` prints is accepted by a real API server under the restricted Pod
Security Standard, rolls out on KWOK nodes, and its alert rules pass promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import ROOT, TOOLBIN, Cluster

EXAMPLES = sorted((ROOT / "examples").glob("*/app.yaml"))
LLMCHAIN = ROOT / ".venv" / "bin" / "llmchain"


def render(path: Path, namespace: str, *extra: str) -> str:
    return subprocess.run(
        [str(LLMCHAIN), "render", str(path), "-n", namespace, *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def restricted(cluster: Cluster, namespace: str) -> str:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / ".toolchain" / "crds")
    )
    return namespace


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_rendered_children_are_accepted_under_restricted_pod_security(
    cluster: Cluster, restricted: str, path: Path
) -> None:
    manifests = render(path, restricted)
    result = cluster.kubectl(
        "apply", "--server-side", "--field-manager=llmchain-operator", "-f", "-", input=manifests
    )
    applied = [line for line in result.stdout.splitlines() if "serverside-applied" in line]
    expected = [d for d in yaml.safe_load_all(manifests) if d]
    assert len(applied) == len(expected)
    assert "Warning" not in result.stderr, result.stderr


def test_rendered_cpu_app_rolls_out(cluster: Cluster, restricted: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=render(EXAMPLES[0], restricted))
    cluster.kubectl("-n", restricted, "rollout", "status", "deployment/qa-chain", "--timeout=90s")
    pod = cluster.get("-n", restricted, "pods", "-l", "app.kubernetes.io/instance=qa-chain")
    assert pod["items"][0]["status"]["phase"] == "Running"


def test_rendered_alert_rules_pass_promtool(tmp_path: Path) -> None:
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(render(path, "apps")):
            if doc and doc["kind"] == "PrometheusRule":
                rules = tmp_path / f"{doc['metadata']['name']}.yaml"
                rules.write_text(yaml.safe_dump(doc["spec"]))
                check = subprocess.run(
                    [str(TOOLBIN / "promtool"), "check", "rules", str(rules)],
                    capture_output=True,
                    text=True,
                )
                assert check.returncode == 0, check.stdout + check.stderr
                assert "SUCCESS" in check.stdout


def test_render_reports_an_invalid_app_naming_the_field(tmp_path: Path) -> None:
    bad = yaml.safe_load(EXAMPLES[0].read_text())
    bad["spec"]["chain"]["steps"][0]["prompt"] = "{{ question }} {{ context }}"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run([str(LLMCHAIN), "render", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "spec.chain.steps[0].prompt: uses undeclared variable 'context'" in result.stderr
