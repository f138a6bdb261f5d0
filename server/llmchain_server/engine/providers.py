"""Execution providers: which onnxruntime provider runs the model, and with what options.

`auto` takes TensorRT, then CUDA, when the installed onnxruntime offers them (the GPU image
installs `onnxruntime-gpu`), and the CPU otherwise; a provider asked for by name and missing is an
error that says what this onnxruntime offers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmchain_server import contract

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
CHOICES = ("auto", *NAMES)

ProviderList = list[tuple[str, dict[str, Any]]]


class ProviderError(RuntimeError):
    """The requested execution provider is not available here."""


@dataclass(frozen=True)
class DeviceOptions:
    """GPU settings from the pod's configuration (environment)."""

    device_id: int = 0
    memory_limit_bytes: int | None = None  # the pod's GPU memory; the arena stays inside it
    memory_fraction: float = 0.9

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeviceOptions:
        env = os.environ if env is None else env
        limit = env.get(contract.ENV_GPU_MEMORY_BYTES)
        return cls(
            device_id=int(env.get(contract.ENV_GPU_DEVICE_ID, "0")),
            memory_limit_bytes=int(limit) if limit else None,
            memory_fraction=float(env.get(contract.ENV_GPU_MEMORY_FRACTION, "0.9")),
        )

    def cuda(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "device_id": self.device_id,
            "arena_extend_strategy": "kSameAsRequested",
        }
        if self.memory_limit_bytes:
            options["gpu_mem_limit"] = int(self.memory_limit_bytes * self.memory_fraction)
        return options

    def tensorrt(self) -> dict[str, Any]:
        options: dict[str, Any] = {"device_id": self.device_id, "trt_fp16_enable": True}
        if self.memory_limit_bytes:
            options["trt_max_workspace_size"] = int(self.memory_limit_bytes * self.memory_fraction)
        return options


def select_providers(
    requested: str, available: Sequence[str], device: DeviceOptions | None = None
) -> ProviderList:
    """The provider list for an InferenceSession, best first, the CPU always last."""
    device = device or DeviceOptions()
    if requested not in CHOICES:
        raise ProviderError(f"execution provider {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "auto":
        wanted = [p for p in (TENSORRT, CUDA) if p in available]
    elif requested == "cpu":
        wanted = []
    else:
        name = NAMES[requested]
        if name not in available:
            offered = ", ".join(available) or "none"
            raise ProviderError(
                f"execution provider {requested!r} ({name}) was requested but this onnxruntime "
                f"offers only: {offered}. Use the GPU image (onnxruntime-gpu) on a GPU node, or "
                "set executionProvider to auto or cpu."
            )
        wanted = [name] if name == CUDA else [TENSORRT, CUDA]
        wanted = [p for p in wanted if p in available]
    chosen: ProviderList = []
    for p in wanted:
        chosen.append((p, device.tensorrt() if p == TENSORRT else device.cuda()))
    chosen.append((CPU, {}))
    return chosen


def short_name(provider: str) -> str:
    return {v: k for k, v in NAMES.items()}.get(provider, provider)
