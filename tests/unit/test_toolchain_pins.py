"""The wrapper modules in toolchain/ pin the toolchain consistently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOOLCHAIN = Path(__file__).resolve().parents[2] / "toolchain"
COMPONENTS = ("kubernetes", "etcd", "kwok", "helm", "promtool")


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
