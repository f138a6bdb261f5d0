"""Fidelity against an implementation we did not write: llama.cpp's goldens
(tests/golden/llama_cpp.json, recorded by bench/llama_goldens.py) over a fixed 727-token text.

Thresholds come from measurement (see the issue note): llama.cpp itself computes Q4_1 dot products
with 8-bit activations, so even our fp32 build agrees with it on ~96% of next tokens; the int4 and
int8 builds run MatMulNBits with int8 activations (accuracy level 4), ~92%.
KL is measured on llama.cpp's top-8: sum over its top-8 tokens of p (log p - log q)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from llmchain_server.engine import Engine, EngineSettings, SamplingParams
from tests.support.cluster import ROOT

GOLDEN = ROOT / "tests" / "golden"
LLAMA = json.loads((GOLDEN / "llama_cpp.json").read_text())
TEXT = (GOLDEN / "fidelity_text.txt").read_text()
# quantization: (min top-1 agreement with llama.cpp, max mean top-8 KL against llama.cpp)
THRESHOLDS = {
    "none": (0.95, 0.005),
    "fp16": (0.95, 0.005),
    "int8": (0.90, 0.02),
    "int4": (0.90, 0.02),
}
Array = npt.NDArray[np.float64]


def log_softmax(x: npt.NDArray[np.float32]) -> Array:
    y = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


_cache: dict[str, Array] = {}


def text_logprobs(folder: Path) -> Array:
    key = str(folder)
    if key not in _cache:
        engine = Engine(folder, EngineSettings(provider="cpu", max_batch=1, context=1024))
        ids = engine.tokenizer.encode(TEXT)
        _cache[key] = log_softmax(engine.runner.prefill(0, [ids], all_logits=True)[0])
    return _cache[key]


def test_the_fixed_text_is_long_enough() -> None:
    assert len(LLAMA["tokenIds"]) >= 500


@pytest.mark.parametrize("quantization", ["int4", "none"])
def test_our_tokenizer_gives_llama_cpp_ids(
    model_dirs: Callable[[str], Path], quantization: str
) -> None:
    engine_tokenizer = Engine(
        model_dirs(quantization), EngineSettings(provider="cpu", max_batch=1, context=64)
    ).tokenizer
    assert engine_tokenizer.encode(TEXT) == LLAMA["tokenIds"]
    for c in LLAMA["continuations"]:
        assert engine_tokenizer.render_chat(c["messages"]) == c["prompt"]
        assert engine_tokenizer.encode(c["prompt"]) == c["promptIds"]


@pytest.mark.parametrize("quantization", list(THRESHOLDS))
def test_next_token_agreement_and_kl_against_llama_cpp(
    model_dirs: Callable[[str], Path], quantization: str
) -> None:
    ours = text_logprobs(model_dirs(quantization))
    top = np.array([[t for t, _ in row] for row in LLAMA["top8"]])
    theirs = np.array([[p for _, p in row] for row in LLAMA["top8"]])
    agreement = float((ours.argmax(-1) == top[:, 0]).mean())
    kl = float((np.exp(theirs) * (theirs - np.take_along_axis(ours, top, -1))).sum(-1).mean())
    print(f"{quantization}: top-1 agreement {agreement:.4f}, top-8 KL {kl:.4f}")
    min_agreement, max_kl = THRESHOLDS[quantization]
    assert agreement >= min_agreement
    assert kl <= max_kl


@pytest.mark.parametrize("quantization", ["fp16", "int8", "int4"])
def test_against_our_own_fp32_build(model_dirs: Callable[[str], Path], quantization: str) -> None:
    reference = text_logprobs(model_dirs("none"))
    ours = text_logprobs(model_dirs(quantization))
    kl = float((np.exp(reference) * (reference - ours)).sum(-1).mean())
    agreement = float((ours.argmax(-1) == reference.argmax(-1)).mean())
    print(f"{quantization} vs fp32: top-1 agreement {agreement:.4f}, KL {kl:.5f}")
    assert kl <= (1e-4 if quantization == "fp16" else 0.02)
    assert agreement >= (0.99 if quantization == "fp16" else 0.90)


def test_exact_repack_int4_continues_like_llama_cpp(model_dirs: Callable[[str], Path]) -> None:
    engine = Engine(model_dirs("int4"), EngineSettings(provider="cpu", max_batch=2, context=256))
    engine.start(warm_up=False)
    try:
        for c in LLAMA["continuations"]:
            expected = c["tokens"]
            got = [
                ch.token_id
                for ch in engine.generate(c["promptIds"], SamplingParams(max_tokens=len(expected)))
            ]
            assert got[:8] == expected[:8], c["messages"][-1]["content"]
    finally:
        engine.stop()
