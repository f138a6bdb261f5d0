"""The onnxruntime session: providers, threads sized to the pod's CPU limit, and the model
folder's manifest checked before loading."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnxruntime as ort

from llmchain_server import contract
from llmchain_server.engine.providers import DeviceOptions, select_providers, short_name

log = logging.getLogger(__name__)


def cpu_threads(env: Mapping[str, str] | None = None) -> int:
    """Threads for the CPU provider: the container's CPU limit (LLMCHAIN_CPU_LIMIT, whole cores,
    set by the operator from limits.cpu), never more than the cores this process may run on."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    limit = env.get(contract.ENV_CPU_LIMIT, "")
    try:
        wanted = math.ceil(float(limit)) if limit else cores
    except ValueError:
        wanted = cores
    return max(1, min(wanted, cores))


def create_session(
    model: Path,
    requested: str = "auto",
    threads: int | None = None,
    device: DeviceOptions | None = None,
    available: Sequence[str] | None = None,
) -> tuple[ort.InferenceSession, str]:
    """The session and the short name of the provider actually running it."""
    offered = list(ort.get_available_providers()) if available is None else list(available)
    providers = select_providers(requested, offered, device or DeviceOptions.from_env())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    # Errors only: onnxruntime warns at every load that the overridable `last_token_logits`
    # initializer is not constant-folded, which is the point of it.
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(model),
        options,
        providers=[p for p, _ in providers],
        provider_options=[o for _, o in providers],
    )
    running = short_name(session.get_providers()[0])
    log.info(
        "Loaded %s on the %s execution provider (%d threads)",
        model.name,
        running,
        options.intra_op_num_threads,
    )
    return session, running
