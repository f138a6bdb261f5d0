"""The ONNX encoder graph (BERT family) on onnxruntime's contrib ops: MultiHeadAttention with a
key padding mask, SkipLayerNormalization (bias, residual and LayerNorm in one), BiasGelu (the
exact, erf GELU: the tanh approximation costs the fidelity sentence-transformers' outputs ask
for) and, in int8 builds, MatMulNBits over 8-bit blocks. Pooling and normalisation run inside
the graph, so its one output is the sentence embedding.

Inputs `input_ids` and `attention_mask` ([batch, sequence], int64, right-padded); output
`sentence_embedding` [batch, hidden]. Token type ids are all 0 for one text, as
sentence-transformers encodes: the type-0 row is folded into the position table."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from llmchain_server.model.encoder_config import SENTENCE_EMBEDDING, BertConfig
from llmchain_server.model.graph import MS_DOMAIN, OPSET, GraphBuilder, LinearKind
from llmchain_server.model.weights import Floats, Weight

EncoderWeights = Callable[[str], Floats]
"""A float tensor by its Hugging Face name (`encoder.layer.0.attention.self.query.weight`)."""
Convert = Callable[[Floats], Weight]
"""A matrix in the storage the build wants (8-bit blocks for int8, the floats otherwise)."""


def build_encoder(
    config: BertConfig,
    weight: EncoderWeights,
    convert: Convert,
    kind: LinearKind,
    pooling: str,
    normalize: bool,
    on_layer: Callable[[int], None] = lambda i: None,
) -> onnx.ModelProto:
    g = GraphBuilder(_mode)
    x = _embeddings(g, config, weight, convert, kind)
    mask = g.one("Cast", ["attention_mask"], "mask/int32", to=TensorProto.INT32)
    for i in range(config.layers):
        x = _layer(g, config, i, x, mask, weight, convert, kind)
        on_layer(i + 1)
    pooled = _pool(g, x, pooling)
    out = _normalized(g, pooled) if normalize else pooled
    g.nodes.append(helper.make_node("Identity", [out], [SENTENCE_EMBEDDING], name="output"))
    batch, seq = "batch", "sequence"
    graph = helper.make_graph(
        g.nodes,
        "llmchain-encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq]),
        ],
        [
            helper.make_tensor_value_info(
                SENTENCE_EMBEDDING, TensorProto.FLOAT, [batch, config.hidden]
            )
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="llmchain",
        producer_version="1",
    )
    model.ir_version = 10
    return model


def _mode(layer: str) -> str:
    """How an int8 build's linear layers compute (accuracy.py): int8 activations (the fast
    kernel) but for the attention's QKV projection, a dense fp32 MatMul over the 8-bit blocks'
    exact values. Against sentence-transformers (tests/golden/embeddings.json; AMD EPYC, AVX-512
    VNNI), int8 activations everywhere reached a minimum cosine of 0.9884 (a 2-token input),
    this plan 0.9982 (mean 0.9995)."""
    return "dense" if layer.endswith("/qkv") else "int8"


def _embeddings(
    g: GraphBuilder, c: BertConfig, weight: EncoderWeights, convert: Convert, kind: LinearKind
) -> str:
    """LayerNorm(word + position + type-0 embeddings)."""
    words = g.embedding("input_ids", convert(weight("embeddings.word_embeddings.weight")), kind)
    table = weight("embeddings.position_embeddings.weight")
    table = table + weight("embeddings.token_type_embeddings.weight")[0]
    positions = g.const("embed.positions", table.astype(np.float32))
    shape = g.one("Shape", ["input_ids"], "positions/shape")
    length = g.one("Gather", [shape, g.const("index1", np.array([1], np.int64))], "positions/len")
    start = g.const("zero1", np.array([0], np.int64))
    rows = g.one("Slice", [positions, start, length, start], "positions/rows")
    summed = g.one("Add", [words, rows], "embed/sum")
    return g.one(
        "LayerNormalization",
        [
            summed,
            g.const("embed.norm.weight", weight("embeddings.LayerNorm.weight")),
            g.const("embed.norm.bias", weight("embeddings.LayerNorm.bias")),
        ],
        "embed/norm",
        axis=-1,
        epsilon=c.norm_eps,
    )


def _layer(
    g: GraphBuilder,
    c: BertConfig,
    i: int,
    x: str,
    mask: str,
    weight: EncoderWeights,
    convert: Convert,
    kind: LinearKind,
) -> str:
    """One post-norm transformer layer: x1 = LN(x + attention(x)), LN(x1 + FFN(x1))."""
    p, hf = f"layer.{i}", f"encoder.layer.{i}"
    a = f"{hf}.attention"
    parts = ("query", "key", "value")
    w = np.concatenate([weight(f"{a}.self.{n}.weight") for n in parts])
    b = np.concatenate([weight(f"{a}.self.{n}.bias") for n in parts])
    qkv = g.one(
        "Add",
        [g.linear(x, convert(w), f"{p}/qkv", kind), g.const(f"{p}.qkv.bias", b)],
        f"{p}/qkv_bias",
    )
    split = g.const(f"{p}.split", np.array([c.hidden] * 3, np.int64))
    q, k, v = g.node("Split", [qkv, split], f"{p}/split", outputs=3, axis=-1)
    attended = g.one(
        "MultiHeadAttention", [q, k, v, "", mask], f"{p}/attn", domain=MS_DOMAIN, num_heads=c.heads
    )
    out = g.linear(attended, convert(weight(f"{a}.output.dense.weight")), f"{p}/attn_out", kind)
    x1 = _skip_norm(g, c, out, x, weight, f"{a}.output", f"{p}/attn_norm")
    up = g.linear(x1, convert(weight(f"{hf}.intermediate.dense.weight")), f"{p}/ffn_up", kind)
    act = g.one(
        "BiasGelu",
        [up, g.const(f"{p}.ffn_up.bias", weight(f"{hf}.intermediate.dense.bias"))],
        f"{p}/gelu",
        domain=MS_DOMAIN,
    )
    down = g.linear(act, convert(weight(f"{hf}.output.dense.weight")), f"{p}/ffn_down", kind)
    return _skip_norm(g, c, down, x1, weight, f"{hf}.output", f"{p}/ffn_norm")


def _skip_norm(
    g: GraphBuilder,
    c: BertConfig,
    x: str,
    residual: str,
    weight: EncoderWeights,
    hf: str,
    name: str,
) -> str:
    """LayerNorm(x + bias + residual), the dense layer's bias and the norm named by `hf`."""
    return g.node(
        "SkipLayerNormalization",
        [
            x,
            residual,
            g.const(f"{name}.weight", weight(f"{hf}.LayerNorm.weight")),
            g.const(f"{name}.bias", weight(f"{hf}.LayerNorm.bias")),
            g.const(f"{name}.dense_bias", weight(f"{hf}.dense.bias")),
        ],
        name,
        outputs=1,
        domain=MS_DOMAIN,
        epsilon=c.norm_eps,
    )[0]


def _pool(g: GraphBuilder, x: str, pooling: str) -> str:
    """sentence-transformers' Pooling over the real (unmasked) tokens."""
    axis1 = g.const("axis1", np.array([1], np.int64))
    if pooling == "cls":
        first = g.one("Gather", [x, g.const("index0", np.array(0, np.int64))], "pool/cls", axis=1)
        return first
    mask = g.one("Cast", ["attention_mask"], "pool/mask", to=TensorProto.FLOAT)
    mask3 = g.one("Unsqueeze", [mask, g.axis_last()], "pool/mask3")
    if pooling == "max":  # masked positions set to -1e9, as sentence-transformers does
        hidden = g.one(
            "Mul",
            [
                g.one("Sub", [mask3, g.const("one_f", np.array(1, np.float32))], "pool/inverted"),
                g.const("big", np.array(1e9, np.float32)),
            ],
            "pool/fill",
        )
        return g.one(
            "ReduceMax", [g.one("Add", [x, hidden], "pool/masked"), axis1], "pool/max", keepdims=0
        )
    summed = g.one(
        "ReduceSum", [g.one("Mul", [x, mask3], "pool/masked"), axis1], "pool/sum", keepdims=0
    )
    count = g.one("ReduceSum", [mask3, axis1], "pool/count", keepdims=0)
    count = g.one("Max", [count, g.const("tiny", np.array(1e-9, np.float32))], "pool/clamped")
    if pooling == "mean_sqrt_len":
        count = g.one("Sqrt", [count], "pool/sqrt")
    return g.one("Div", [summed, count], "pool/mean")


def _normalized(g: GraphBuilder, x: str) -> str:
    """x / max(|x|, 1e-12), torch's F.normalize."""
    norm = g.one("ReduceL2", [x, g.axis_last()], "norm/l2", keepdims=1)
    norm = g.one("Max", [norm, g.const("eps", np.array(1e-12, np.float32))], "norm/clamped")
    return g.one("Div", [x, norm], "norm/out")
