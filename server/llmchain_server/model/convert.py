"""From source weights to the storage a quantization asks for (see weights.py for the forms)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmchain_server.model.folder import QUANTIZATIONS
from llmchain_server.model.weights import BlockWeight, Weight, as_float, quantize_offset

LM_HEAD = "#lm_head"


def linear_kind(quantization: str) -> str:
    return {"int4": "blocks", "int8": "blocks", "fp16": "float16", "none": "float32"}[quantization]


def _widen(w: BlockWeight) -> BlockWeight:
    """4-bit blocks stored as 8-bit: the same values, exactly."""
    return BlockWeight(q=w.q, scale=w.scale, zero=w.zero, offset=w.offset, bits=8, block=w.block)


def convert(w: Weight, quantization: str, table: bool) -> Weight:
    """One weight for the target. `table`: the embedding / output head, kept at 8 bits in
    quantized builds (4-bit vocab tables cost much quality for little size)."""
    if quantization in ("none", "fp16"):
        return as_float(w)
    bits = 8 if (table or quantization == "int8") else 4
    if isinstance(w, BlockWeight):
        if w.bits == bits:
            return w  # GGUF blocks carried over exactly
        if w.bits < bits:
            return _widen(w)
    return quantize_offset(as_float(w), bits)


def weights_for(source: Callable[[str], Weight], quantization: str) -> Callable[[str], Weight]:
    """A weight lookup for build_graph: norms stay float, matrices are converted."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    cache: dict[str, Weight] = {}

    def lookup(name: str) -> Weight:
        if name in cache:
            return cache[name]
        base = name.removesuffix(LM_HEAD)
        w = source(base)
        if not isinstance(w, BlockWeight) and np.ndim(w) == 1:
            return as_float(w)
        table = name.endswith(LM_HEAD) or base == "token_embd.weight"
        cache[name] = convert(w, quantization, table)
        if name.endswith(LM_HEAD) and base == "token_embd.weight":
            cache[name] = lookup(base)  # tied: one conversion serves both
        return cache[name]

    return lookup
