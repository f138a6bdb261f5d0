"""Execution-provider selection. The provider lists here are a FAKE (injected names): this
machine's onnxruntime has only the CPU provider, and onnxruntime-gpu cannot be installed here."""

from __future__ import annotations

import pytest

from llmchain_server.engine.providers import (
    CPU,
    CUDA,
    TENSORRT,
    DeviceOptions,
    ProviderError,
    select_providers,
)
from llmchain_server.engine.session import cpu_threads

FAKE_GPU_ONNXRUNTIME = [TENSORRT, CUDA, CPU]
FAKE_CUDA_ONLY = [CUDA, CPU]
CPU_ONLY = [CPU]


def names(chosen: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [name for name, _ in chosen]


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert names(select_providers("auto", FAKE_GPU_ONNXRUNTIME)) == [TENSORRT, CUDA, CPU]
    assert names(select_providers("auto", FAKE_CUDA_ONLY)) == [CUDA, CPU]
    assert names(select_providers("auto", CPU_ONLY)) == [CPU]


def test_named_providers() -> None:
    assert names(select_providers("cuda", FAKE_GPU_ONNXRUNTIME)) == [CUDA, CPU]
    assert names(select_providers("tensorrt", FAKE_GPU_ONNXRUNTIME)) == [TENSORRT, CUDA, CPU]
    assert names(select_providers("cpu", FAKE_GPU_ONNXRUNTIME)) == [CPU]


@pytest.mark.parametrize("requested", ["cuda", "tensorrt"])
def test_a_missing_provider_is_a_clear_error(requested: str) -> None:
    with pytest.raises(ProviderError) as e:
        select_providers(requested, CPU_ONLY)
    assert requested in str(e.value)
    assert "offers only: CPUExecutionProvider" in str(e.value)
    assert "onnxruntime-gpu" in str(e.value)


def test_an_unknown_provider_is_refused() -> None:
    with pytest.raises(ProviderError, match="rocm"):
        select_providers("rocm", FAKE_GPU_ONNXRUNTIME)


def test_cuda_options_come_from_configuration() -> None:
    device = DeviceOptions.from_env(
        {
            "LLMCHAIN_GPU_DEVICE_ID": "1",
            "LLMCHAIN_GPU_MEMORY_BYTES": str(16 * 2**30),
            "LLMCHAIN_GPU_MEMORY_FRACTION": "0.5",
        }
    )
    chosen = dict(select_providers("cuda", FAKE_CUDA_ONLY, device))
    assert chosen[CUDA]["device_id"] == 1
    assert chosen[CUDA]["gpu_mem_limit"] == 8 * 2**30
    assert chosen[CPU] == {}
    trt = dict(select_providers("auto", FAKE_GPU_ONNXRUNTIME, device))[TENSORRT]
    assert trt["device_id"] == 1 and trt["trt_max_workspace_size"] == 8 * 2**30


def test_no_memory_limit_sets_no_arena_cap() -> None:
    chosen = dict(select_providers("cuda", FAKE_CUDA_ONLY, DeviceOptions.from_env({})))
    assert "gpu_mem_limit" not in chosen[CUDA]


def test_threads_follow_the_cpu_limit_but_not_beyond_the_cores() -> None:
    assert cpu_threads({"LLMCHAIN_CPU_LIMIT": "1"}) == 1
    assert cpu_threads({"LLMCHAIN_CPU_LIMIT": "100000"}) == cpu_threads({})
    assert cpu_threads({"LLMCHAIN_CPU_LIMIT": "junk"}) == cpu_threads({})
