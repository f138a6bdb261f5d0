"""Accuracy plans: how each kind of linear layer of an int4/int8 build computes.

MatMulNBits at accuracy level 4 quantizes each layer's input activations to int8 in blocks of 32
(max|a|/127, round to nearest even) and runs integer dot products: fast, and the main source of
the quantized builds' error. Level 0 keeps the activations in fp32 and dequantizes the weights on
every call: exact, but slow for more than one row, and 8-bit weights have no fused kernel on x86
at all. The int8 rounding is the same on every CPU family; the families sum the blocks in another
order, and the int8 rounding of every later layer amplifies that into flipped near-ties (README,
"Fidelity across CPUs", and `bench/kernels.py`).

The recommended plan computes the attention's fused QKV projection in fp32 as a dense MatMul over
the blocks' exact values (dequantized once, at build time: model.onnx grows by 51 MiB for int4,
43 MiB for int8) and every other layer at level 4. Measured on the fixed fidelity text
(`bench/fidelity.py`; AMD EPYC, 2 cores, AVX-512 VNNI native, AVX2 under qemu-user), against
level 4 everywhere: top-1 agreement with llama.cpp 0.9065 -> 0.9257 (AVX-512 VNNI) and
0.9037 -> 0.9216 (AVX2), top-8 KL 0.0101 -> 0.0079 and 0.0107 -> 0.0084. The QKV projection was
the layer whose int8 activations cost the most fidelity for the least compute; as MatMulNBits at
level 0 it cost int8 builds half their single-stream speed, as a dense MatMul 0.9-1.0x
(`bench/engine.py --accuracy int8 recommended --rounds 3`). The 8-bit output head at level 0 (no
fused kernel) decoded 8-11x slower in a one-off run on a loaded machine.
"""

from __future__ import annotations

from collections.abc import Mapping

ROLES = ("qkv", "attn_output", "gate_up", "ffn_down", "lm_head")
"""The linear layers of the decoder, by the name they carry in the graph."""

MODES = {"int8": 4, "fp32": 0, "dense": None}
"""How a quantized linear layer computes: MatMulNBits with int8 activations (accuracy level 4) or
fp32 ones (level 0), or `dense`: a plain fp32 MatMul over the blocks dequantized exactly at build
time (fp32 activations too, with 4 or 8 times the weight bytes)."""

RECOMMENDED: Mapping[str, str] = {
    "qkv": "dense",
    "attn_output": "int8",
    "gate_up": "int8",
    "ffn_down": "int8",
    "lm_head": "int8",
}

PLANS = ("recommended", "int8", "exact")
"""Named plans: `recommended` (above), `int8` (int8 activations everywhere), `exact` (fp32
activations everywhere, the weights staying in their blocks)."""


def accuracy_plan(name: str = "recommended") -> dict[str, str]:
    """The mode of each linear layer role for a named plan."""
    if name == "recommended":
        return dict(RECOMMENDED)
    if name == "int8":
        return dict.fromkeys(ROLES, "int8")
    if name == "exact":
        return dict.fromkeys(ROLES, "fp32")
    raise ValueError(f"accuracy plan {name!r} is not one of {', '.join(PLANS)}")


def role_of(layer: str) -> str:
    """The role of a linear layer from its graph name (`blk.3/qkv` -> `qkv`)."""
    role = layer.rsplit("/", 1)[-1]
    if role not in ROLES:
        raise ValueError(f"linear layer {layer!r} has no accuracy role")
    return role
