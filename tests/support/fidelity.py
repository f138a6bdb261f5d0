"""Fidelity measures shared by tests/integration/test_fidelity.py and bench/fidelity.py, against
llama.cpp's goldens (tests/golden/llama_cpp.json, recorded by bench/llama_goldens.py) and against
our own fp32 build.

Run as a module it writes one model folder's log-probabilities to a file, so a test or a
benchmark can run it under `qemu-x86_64 -cpu Haswell` (onnxruntime then takes its AVX2 kernels):

    python -m tests.support.fidelity MODEL_DIR OUT.npz
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
LLAMA: dict[str, Any] = json.loads((GOLDEN / "llama_cpp.json").read_text())
TEXT = (GOLDEN / "fidelity_text.txt").read_text()

DECISIVE = 0.5
"""Nats between llama.cpp's top two log-probabilities above which its choice counts as decisive:
below it, rounding alone (llama.cpp's own int8 activations, our kernels' summation order) may
reorder the two, and a disagreement says nothing about fidelity."""

CONFIDENT = 1.0
"""Nats by which our fp32 build must prefer llama.cpp's continuation token over every other for
that position to be compared (the goldens keep no log-probabilities for continuations, and the
fp32 build computes the GGUF's weights exactly)."""

Array = npt.NDArray[np.float64]
LogProbs = dict[str, npt.NDArray[np.float32]]


def log_softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    y = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return (y - np.log(np.exp(y).sum(axis=-1, keepdims=True))).astype(np.float32)


def logprobs(folder: Path) -> LogProbs:
    """Next-token log-probabilities of the fixed text (`text`: [727, vocab]) and, teacher-forced,
    of each golden continuation (`continuation.i`: one row per continuation token)."""
    from llmchain_server.engine import Engine, EngineSettings

    # Checksums are the build's business (tests/integration/test_model_build.py); skipping them
    # spares an emulated run minutes of hashing.
    settings = EngineSettings(provider="cpu", max_batch=1, context=1024, verify_checksums=False)
    engine = Engine(folder, settings)
    out = {"text": _all_positions(engine, engine.tokenizer.encode(TEXT))}
    for i, c in enumerate(LLAMA["continuations"]):
        rows = _all_positions(engine, c["promptIds"] + c["tokens"])
        out[f"continuation.{i}"] = rows[len(c["promptIds"]) - 1 : -1]
    return out


def _all_positions(engine: Any, ids: list[int]) -> npt.NDArray[np.float32]:
    return log_softmax(engine.runner.prefill(0, [ids], all_logits=True)[0])


def against_llama(ours: LogProbs) -> dict[str, float]:
    """Top-1 agreement with llama.cpp over the text, also over its decisive positions only, and
    the KL over llama.cpp's top-8: sum over its top-8 tokens of p (log p - log q)."""
    text = ours["text"].astype(np.float64)
    top = np.array([[t for t, _ in row] for row in LLAMA["top8"]])
    theirs = np.array([[p for _, p in row] for row in LLAMA["top8"]])
    agree = text.argmax(-1) == top[:, 0]
    decisive = theirs[:, 0] - theirs[:, 1] >= DECISIVE
    kl = (np.exp(theirs) * (theirs - np.take_along_axis(text, top, -1))).sum(-1)
    return {
        "agreement": float(agree.mean()),
        "decisiveAgreement": float(agree[decisive].mean()),
        "decisivePositions": int(decisive.sum()),
        "kl": float(kl.mean()),
    }


def against_fp32(ours: LogProbs, fp32: LogProbs) -> dict[str, float]:
    """Top-1 agreement and KL(fp32 || ours) over the text."""
    q, p = ours["text"].astype(np.float64), fp32["text"].astype(np.float64)
    return {
        "agreement": float((q.argmax(-1) == p.argmax(-1)).mean()),
        "kl": float((np.exp(p) * (p - q)).sum(-1).mean()),
    }


def confidence(fp32: LogProbs, i: int) -> Array:
    """For each token of golden continuation i: by how many nats our fp32 build prefers it over
    every other token (negative where fp32 would have chosen another)."""
    tokens = np.array(LLAMA["continuations"][i]["tokens"])
    rows = np.arange(len(tokens))
    exact = fp32[f"continuation.{i}"].astype(np.float64)
    others = exact.copy()
    others[rows, tokens] = -np.inf
    margins: Array = exact[rows, tokens] - others.max(-1)
    return margins


def continuation_misses(ours: LogProbs, fp32: LogProbs) -> dict[str, Any]:
    """Along each golden continuation (teacher-forced): the positions where our fp32 build is
    CONFIDENT of llama.cpp's token, and those of them where `ours` predicts another token."""
    compared, misses = 0, []
    for i, c in enumerate(LLAMA["continuations"]):
        confident = confidence(fp32, i) >= CONFIDENT
        wrong = ours[f"continuation.{i}"].argmax(-1) != np.array(c["tokens"])
        compared += int(confident.sum())
        misses += [f"{i}:{t}" for t in np.flatnonzero(confident & wrong)]
    return {"compared": compared, "misses": misses}


EMULATOR = ["qemu-x86_64", "-cpu", "Haswell"]
"""onnxruntime's AVX2 kernels on any x86-64 machine: qemu-user (Debian's qemu-user >= 7.2)."""


def require_avx2_emulation() -> None:
    """Skip where the emulator would only repeat what native runs measure (not x86, or the
    native kernels are the AVX2 ones); fail where qemu-user is missing."""
    import pytest  # here: this module also runs as a program under qemu

    from llmchain_server.engine.cpu import cpu_kernels

    native = cpu_kernels().family
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"onnxruntime's x86 kernels do not run on {platform.machine()}")
    if native in ("avx2", "avx2vnni"):
        pytest.skip(f"the native kernels ({native}) are the 256-bit ones the native tests measure")
    if shutil.which(EMULATOR[0]) is None:
        pytest.fail("qemu-x86_64 is missing: `make install` installs Debian's qemu-user")


def emulate(args: list[str], timeout: float) -> str:
    """`python ARGS` under EMULATOR from the repository root; its stdout. On failure, raises with
    the program's own stderr, without qemu's warning about every cpuid bit it cannot emulate."""
    cmd = [*EMULATOR, sys.executable, *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        errors = [ln for ln in done.stderr.splitlines() if "TCG doesn't support" not in ln]
        raise RuntimeError(f"{args} failed under qemu ({done.returncode}):\n" + "\n".join(errors))
    return done.stdout


def save(arrays: LogProbs, path: Path) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load(path: Path) -> LogProbs:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


if __name__ == "__main__":
    save(logprobs(Path(sys.argv[1])), Path(sys.argv[2]))
