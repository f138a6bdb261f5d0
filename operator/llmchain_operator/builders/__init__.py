"""Pure builders of an LLMChainApp's child objects: no I/O, no clock, no randomness.

`build_children` is the whole desired state; the per-object builders live in the modules named
after what they build.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.autoscaling import build_hpa, build_scaled_object
from llmchain_operator.builders.common import Manifest
from llmchain_operator.builders.memory import build_memory_deployment, build_memory_service
from llmchain_operator.builders.model import build_model_job, build_model_pvc
from llmchain_operator.builders.monitoring import (
    build_dashboard_configmap,
    build_prometheus_rule,
    build_service_monitor,
)
from llmchain_operator.builders.network import (
    build_network_policies,
    build_pdb,
    build_service,
    build_service_account,
)
from llmchain_operator.builders.retrieval import build_index_job
from llmchain_operator.builders.workload import build_chain_configmap, build_deployment
from llmchain_operator.kinds import OPTIONAL_API_GROUPS, kind_of
from llmchain_operator.settings import Settings


@dataclass(frozen=True)
class Children:
    """The desired child objects, and those left out because their API is not installed."""

    objects: list[Manifest]
    skipped: list[Manifest]


def build_children(
    app: LLMChainApp,
    settings: Settings,
    available_groups: Collection[str] = OPTIONAL_API_GROUPS,
    documents_digest: str | None = None,
) -> Children:
    """Every child object of `app`, in the order they are applied (dependencies first).
    `documents_digest`: the content digest of the retrieval ConfigMaps (configmaps_digest), when
    the app indexes ConfigMaps and they were read."""
    candidates = [
        build_service_account(app),
        build_chain_configmap(app),
        build_model_pvc(app),
        build_model_job(app, settings),
        build_index_job(app, settings, documents_digest),
        build_memory_deployment(app, settings),
        build_memory_service(app),
        build_deployment(app, settings, documents_digest),
        build_service(app),
        build_pdb(app),
        *build_network_policies(app),
        build_hpa(app),
        build_scaled_object(app),
        build_service_monitor(app),
        build_prometheus_rule(app),
        build_dashboard_configmap(app),
    ]
    objects, skipped = [], []
    for obj in candidates:
        if obj is None:
            continue
        kind = kind_of(obj["kind"])  # every child kind has its row in kinds.KINDS
        if kind.optional and kind.group not in available_groups:
            skipped.append(obj)
        else:
            objects.append(obj)
    return Children(objects=objects, skipped=skipped)


__all__ = ["OPTIONAL_API_GROUPS", "Children", "Manifest", "build_children"]
