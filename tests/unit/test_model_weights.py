"""Weights: GGUF blocks are carried over exactly, the seed's int8 formula, MatMulNBits packing."""

from __future__ import annotations

import gguf
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from llmchain_server.model.accuracy import accuracy_plan
from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.convert import convert, weights_for
from llmchain_server.model.gguf_source import _blocks
from llmchain_server.model.graph import DecoderGraph, _concat
from llmchain_server.model.weights import BlockWeight, quantize_offset

RNG = np.random.default_rng(7)
X = RNG.standard_normal((8, 128)).astype(np.float32)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_unpack_to_exactly_what_gguf_dequantizes(kind: str) -> None:
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(X, qtype)
    blocks = _blocks(raw, qtype)
    expected = gguf.quants.dequantize(raw, qtype)
    assert np.array_equal(blocks.dequantize(), expected)


def test_seed_int8_quantization_is_round_s_x_minus_z() -> None:
    w = quantize_offset(X, 8)
    blocks = X.reshape(8, 4, 32)
    low, high = blocks.min(-1), blocks.max(-1)
    s = 255 / (high - low)
    expected_q = np.rint(s[..., None] * (blocks - low[..., None])).reshape(8, 128)
    assert np.array_equal(w.q, expected_q.astype(np.uint8))
    assert np.abs(w.dequantize() - X).max() <= (1 / s).max() / 2 + 1e-6


def test_q4_to_int8_is_exact_and_to_int4_is_kept() -> None:
    q41 = _blocks(
        gguf.quants.quantize(X, gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1
    )
    kept = convert(q41, "int4", table=False)
    assert kept is q41
    widened = convert(q41, "int4", table=True)
    assert isinstance(widened, BlockWeight) and widened.bits == 8
    assert np.array_equal(widened.dequantize(), q41.dequantize())
    as_int8 = convert(q41, "int8", table=False)
    assert isinstance(as_int8, BlockWeight) and as_int8.bits == 8
    assert np.abs(as_int8.dequantize() - q41.dequantize()).max() < 1e-5


def test_norm_weights_stay_float() -> None:
    lookup = weights_for(lambda name: np.ones(16, np.float32), "int4")
    assert isinstance(lookup("blk.0.attn_norm.weight"), np.ndarray)


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="int3"):
        weights_for(lambda name: X, "int3")


def test_fusing_mixed_zero_points_keeps_values() -> None:
    q40 = _blocks(
        gguf.quants.quantize(X, gguf.GGMLQuantizationType.Q4_0), gguf.GGMLQuantizationType.Q4_0
    )
    q41 = _blocks(
        gguf.quants.quantize(X, gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1
    )
    fused = _concat([q40, q41])
    assert isinstance(fused, BlockWeight)
    expected = np.concatenate([q40.dequantize(), q41.dequantize()])
    assert np.abs(fused.dequantize() - expected).max() < 1e-6


@pytest.mark.parametrize(("kind", "bits"), [("Q4_1", 4), ("Q4_0", 4), ("Q8_0", 8)])
@pytest.mark.parametrize(("role", "op"), [("gate_up", "MatMulNBits"), ("qkv", "MatMul")])
def test_matmul_nbits_computes_with_the_carried_blocks(
    kind: str, bits: int, role: str, op: str
) -> None:
    """The graph's MatMulNBits (+ offset term) at accuracy level 0, and the dense MatMul the
    recommended plan gives the QKV projection, equal x @ W.T for the exact GGUF values."""
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    w = _blocks(gguf.quants.quantize(X, qtype), qtype)
    assert w.bits == bits
    config = LlamaConfig(1, 128, 128, 2, 2, 10, 16, 1e4, 1e-5, True)
    plan = {**accuracy_plan("exact"), "qkv": "dense"}
    g = DecoderGraph(config, plan)
    y = g.linear("x", w, f"blk.0/{role}", "blocks")
    assert g.nodes[0].op_type == op
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        g.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = RNG.standard_normal((1, 3, 128)).astype(np.float32)
    (out,) = session.run(None, {"x": a})
    assert y
    np.testing.assert_allclose(out, a @ w.dequantize().T, rtol=1e-4, atol=1e-4)
