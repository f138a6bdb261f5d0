"""Which of onnxruntime's CPU kernel families this process runs, so every fidelity and speed
figure can be attributed to one.

onnxruntime's MLAS library picks the kernels of MatMulNBits (the int4/int8 builds' linear layers)
once per process from cpuid (`MLAS_PLATFORM::MLAS_PLATFORM` in `onnxruntime/core/mlas/lib/
platform.cpp`), each later check overriding the earlier one: AVX2+FMA3, then AVX-VNNI, then
AVX-512 F/BW/DQ/VL, then AVX-512 VNNI. AMX is used only by MatMulInteger's QGEMM, not by
MatMulNBits, so an AMX CPU runs the AVX-512 VNNI family. The families quantize activations the
same way (blocks of 32, max|a|/127, round to nearest even) and differ in the order of their float
accumulation, which is enough to move near-ties (see README, "Fidelity across CPUs").

The features come from numpy's own cpuid/xgetbv probe, which, unlike /proc/cpuinfo, sees what
this process sees: under `qemu-x86_64 -cpu Haswell` it reports AVX2 and no AVX-512, as
onnxruntime does. numpy does not probe AVX-VNNI; that one flag is read from /proc/cpuinfo, and
only when /proc/cpuinfo agrees with the probe (an emulated process sees the host's
/proc/cpuinfo).
"""

from __future__ import annotations

import functools
import importlib
import platform
from dataclasses import dataclass
from pathlib import Path

AVX512 = ("AVX512F", "AVX512BW", "AVX512DQ", "AVX512VL")


@dataclass(frozen=True)
class CpuKernels:
    # x86-64: avx512vnni | avx512 | avx2vnni | avx2 | generic (no MatMulNBits kernels) | unknown
    # (numpy's probe is missing); elsewhere the machine's name (aarch64, ...)
    family: str
    model: str  # the CPU's model name, as /proc/cpuinfo gives it ("" when unknown)
    amx: bool  # AMX tiles present (reported for attribution; MatMulNBits does not use them)
    emulated: bool  # the probe and /proc/cpuinfo disagree: an emulator (qemu-user) runs us

    def to_json(self) -> dict[str, str | bool]:
        return {
            "kernels": self.family,
            "model": self.model,
            "amx": self.amx,
            "emulated": self.emulated,
        }


def _probed_features() -> dict[str, bool]:
    try:  # the table numpy.show_runtime() prints; numpy has no public accessor for it
        probe = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    except (ImportError, AttributeError):  # pragma: no cover - numpy moved its probe
        return {}
    return {str(k): bool(v) for k, v in probe.items()}


def _proc_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def family(features: dict[str, bool], proc_flags: set[str], machine: str) -> str:
    """MLAS's dispatch order for MatMulNBits, from the features this process sees. `proc_flags`
    (for AVX-VNNI, which numpy does not probe) must be empty when they may not be this
    process's (under an emulator)."""
    if machine.lower() not in ("x86_64", "amd64"):
        return machine.lower() or "unknown"
    if not features:
        return "unknown"
    if all(features.get(f) for f in AVX512):
        return "avx512vnni" if features.get("AVX512VNNI") else "avx512"
    if features.get("AVX2") and features.get("FMA3"):
        return "avx2vnni" if "avx_vnni" in proc_flags else "avx2"
    return "generic"


# Features numpy probes and /proc/cpuinfo lists: a disagreement on any means an emulator (say
# qemu-user with -cpu Haswell, which lacks all of them but AVX2) runs this process.
_CROSS_CHECKED = (
    ("AVX2", "avx2"),
    ("AVX512F", "avx512f"),
    ("GFNI", "gfni"),
    ("VAES", "vaes"),
    ("VPCLMULQDQ", "vpclmulqdq"),
)


@functools.cache
def cpu_kernels() -> CpuKernels:
    model, flags = _proc_cpuinfo()
    features = _probed_features()
    emulated = bool(features) and any(
        features.get(probed, False) != (listed in flags) for probed, listed in _CROSS_CHECKED
    )
    trusted = set() if emulated else flags
    return CpuKernels(
        family=family(features, trusted, platform.machine()),
        model=model,
        amx="amx_tile" in trusted,
        emulated=emulated,
    )
