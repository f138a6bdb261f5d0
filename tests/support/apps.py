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

    def check() -> dict[str, Any] | None:
        cond = conditions(cluster, namespace, name).get(type_)
        return cond if cond and cond["status"] == status else None

    result: dict[str, Any] = wait_for(
        check, timeout=timeout, what=f"{type_}={status} on {namespace}/{name}"
    )
    return result


def wait_reason(
    cluster: Cluster, namespace: str, name: str, type_: str, reason: str, timeout: float = 90
) -> dict[str, Any]:
    """Wait until condition `type_` has `reason`; return it."""

    def check() -> dict[str, Any] | None:
        cond = conditions(cluster, namespace, name).get(type_)
        return cond if cond and cond["reason"] == reason else None

    result: dict[str, Any] = wait_for(
        check, timeout=timeout, what=f"{type_} reason {reason} on {namespace}/{name}"
    )
    return result
