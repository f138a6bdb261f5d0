"""Reading an LLMChainApp's status conditions in tests."""

from __future__ import annotations

from typing import Any

from tests.support.cluster import Cluster, wait_for


def conditions(cluster: Cluster, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    status = cluster.get("-n", namespace, "lca", name).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


def wait_condition(
    cluster: Cluster, namespace: str, name: str, type_: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    """Wait until condition `type_` has `status`; return it."""
    return _wait_field(cluster, namespace, name, type_, "status", status, timeout)


def wait_reason(
    cluster: Cluster, namespace: str, name: str, type_: str, reason: str, timeout: float = 90
) -> dict[str, Any]:
    """Wait until condition `type_` has `reason`; return it."""
    return _wait_field(cluster, namespace, name, type_, "reason", reason, timeout)


def _wait_field(
    cluster: Cluster,
    namespace: str,
    name: str,
    type_: str,
    field: str,
    value: str,
    timeout: float,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = conditions(cluster, namespace, name).get(type_)
        return cond if cond and cond[field] == value else None

    what = f"{type_} {field} {value} on {namespace}/{name}"
    result: dict[str, Any] = wait_for(check, timeout=timeout, what=what)
    return result
