"""MatMulNBits accuracy levels, per kind of linear layer.

Level 4 quantizes each layer's input activations to int8 in blocks of 32 (max|a|/127) and runs
integer dot products: fast, and the main source of the int4/int8 builds' error. Level 0 keeps the
activations in fp32 and dequantizes the weights: exact, but slower, most where onnxruntime has no
fused kernel (several rows at once, and 8-bit weights, which have none on x86). The int8 rounding
is the same on every CPU family; the families sum the blocks in another order, and the int8
rounding of every later layer amplifies that into flipped near-ties (README, "Fidelity across
CPUs").

The recommended plan keeps the attention's fused QKV projection at level 0. Measured on the fixed
fidelity text (`bench/fidelity.py`, int4, AMD EPYC with AVX-512 VNNI native and AVX2 under
qemu-user), against level 4 everywhere: top-1 agreement with llama.cpp 0.9065 -> 0.9298
(AVX-512 VNNI) and 0.9037 -> 0.9202 (AVX2), top-8 KL 0.0101 -> 0.0075 and 0.0107 -> 0.0080. It
was the cheapest layer to move (`bench/engine.py --accuracy`, same machine: single-stream decode
0.75x, 8 streams 0.95x of level 4 everywhere); the FFN's down projection helps as much and costs
more, the output head at level 0 costs ~10x (8-bit, no fused kernel).
"""

from __future__ import annotations

from collections.abc import Mapping

ROLES = ("qkv", "attn_output", "gate_up", "ffn_down", "lm_head")
"""The linear layers of the decoder, by the name they carry in the graph."""

INT8_ACTIVATIONS = 4
FP32_ACTIVATIONS = 0

RECOMMENDED: Mapping[str, int] = {
    "qkv": FP32_ACTIVATIONS,
    "attn_output": INT8_ACTIVATIONS,
    "gate_up": INT8_ACTIVATIONS,
    "ffn_down": INT8_ACTIVATIONS,
    "lm_head": INT8_ACTIVATIONS,
}

PLANS = ("recommended", "int8", "exact")
"""Named plans: `recommended` (above), `int8` (level 4 everywhere), `exact` (level 0 everywhere)."""


def accuracy_plan(name: str = "recommended") -> dict[str, int]:
    """The accuracy level of each linear layer kind for a named plan."""
    if name == "recommended":
        return dict(RECOMMENDED)
    if name == "int8":
        return dict.fromkeys(ROLES, INT8_ACTIVATIONS)
    if name == "exact":
        return dict.fromkeys(ROLES, FP32_ACTIVATIONS)
    raise ValueError(f"accuracy plan {name!r} is not one of {', '.join(PLANS)}")


def role_of(layer: str) -> str:
    """The role of a linear layer from its graph name (`blk.3/qkv` -> `qkv`)."""
    role = layer.rsplit("/", 1)[-1]
    if role not in ROLES:
        raise ValueError(f"linear layer {layer!r} has no accuracy role")
    return role
