"""The wrapper modules in toolchain/ pin the toolchain consistently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOOLCHAIN = Path(__file__).resolve().parents[2] / "toolchain"
COMPONENTS = ("kubernetes", "etcd", "kwok", "helm", "prometheus", "prometheus-operator", "keda")


def requires(go_mod: str) -> dict[str, str]:
    found = re.findall(r"^\s*(?:require\s+)?([\w./-]+)\s+(v[\w.+-]+)\s*(?://.*)?$", go_mod, re.M)
    return dict(found)


def test_kubernetes_staging_modules_follow_the_pinned_release() -> None:
    go_mod = (TOOLCHAIN / "kubernetes" / "go.mod").read_text()
    kube = requires(go_mod)["k8s.io/kubernetes"]
    staging = re.findall(r"^\s*(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$", go_mod, re.M)
    assert len(staging) >= 25
    expected = "v0." + kube.removeprefix("v1.")
    for source, target, version in staging:
        assert source == target
        assert version == expected, f"{source} is at {version}, not {expected}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_binary_component_has_tools_and_a_go_sum(component: str) -> None:
    go_mod = (TOOLCHAIN / component / "go.mod").read_text()
    assert re.search(r"^tool\b", go_mod, re.M), f"{component}/go.mod names no tool"
    assert (TOOLCHAIN / component / "go.sum").stat().st_size > 0


def test_etcd_is_3_6() -> None:
    go_mod = (TOOLCHAIN / "etcd" / "go.mod").read_text()
    assert requires(go_mod)["go.etcd.io/etcd/server/v3"].startswith("v3.6.")


@pytest.mark.parametrize(
    ("component", "module"),
    [
        ("prometheus-operator", "github.com/prometheus-operator/prometheus-operator"),
        ("keda", "github.com/kedacore/keda/v2"),
    ],
)
def test_the_operators_built_are_the_releases_whose_crds_are_applied(
    component: str, module: str
) -> None:
    built = requires((TOOLCHAIN / component / "go.mod").read_text())[module]
    crds = requires((TOOLCHAIN / "crds" / "go.mod").read_text())[module]
    assert built == crds, f"{component} is built at {built} but its CRDs come from {crds}"


def test_prometheus_and_promtool_come_from_one_module() -> None:
    go_mod = (TOOLCHAIN / "prometheus" / "go.mod").read_text()
    assert "github.com/prometheus/prometheus/cmd/prometheus\n" in go_mod
    assert "github.com/prometheus/prometheus/cmd/promtool\n" in go_mod
