"""The ONNX encoder graph (BERT family) on onnxruntime's contrib ops: MultiHeadAttention with a
key padding mask, SkipLayerNormalization (bias, residual and LayerNorm in one), BiasGelu (the
exact, erf GELU: the tanh approximation costs the fidelity sentence-transformers' outputs ask
for) and, in int8 builds, integer matrix products (MatMulInteger, see `EncoderGraph`). Pooling
and normalisation run inside the graph, so its one output is the sentence embedding.

Inputs `input_ids` and `attention_mask` ([batch, sequence], int64, right-padded); output
`sentence_embedding` [batch, hidden]. Token type ids are all 0 for one text, as
sentence-transformers encodes: the type-0 row is folded into the position table."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from llmchain_server.model.encoder_config import SENTENCE_EMBEDDING, BertConfig
from llmchain_server.model.graph import MS_DOMAIN, GraphBuilder
from llmchain_server.model.weights import Floats, quantize_offset

EncoderWeights = Callable[[str], Floats]
"""A float tensor by its Hugging Face name (`encoder.layer.0.attention.self.query.weight`)."""


def build_encoder(
    config: BertConfig,
    weight: EncoderWeights,
    quantization: str,
    pooling: str,
    normalize: bool,
    on_layer: Callable[[int], None] = lambda i: None,
) -> onnx.ModelProto:
    g = EncoderGraph(quantization)
    x = _embeddings(g, config, weight)
    mask = g.one("Cast", ["attention_mask"], "mask/int32", to=TensorProto.INT32)
    for i in range(config.layers):
        x = _layer(g, config, i, x, mask, weight)
        on_layer(i + 1)
    pooled = _pool(g, x, pooling)
    out = _normalized(g, pooled) if normalize else pooled
    g.nodes.append(helper.make_node("Identity", [out], [SENTENCE_EMBEDDING], name="output"))
    batch, seq = "batch", "sequence"
    return g.model(
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
    )


WEIGHT_LEVELS = 63
"""int8 builds store weights in 7 bits (-63..63): onnxruntime's u8 x s8 kernels on AVX2 without
VNNI sum pairs of products in saturating 16-bit lanes (255 * 127 * 2 overflows them; 255 * 63 * 2
does not). Measured under `qemu-x86_64 -cpu Haswell` with 127 levels: minimum cosine 0.897
against sentence-transformers where AVX-512 VNNI gave 0.992."""


class EncoderGraph(GraphBuilder):
    """The encoder's builder: `project` in the storage the quantization asks for.

    int8 (`_int8_linear`): each token's activations quantized by the seed's Q(x) = round(S(x - Z))
    with its own Z = min and S = 255 / (max - min) (uint8), the weights per output column
    symmetrically in 7 bits (int8), an integer product (MatMulInteger, u8 x s8: the VNNI kernels
    where the CPU has them), then rescaled, with the Z term added back exactly. Per token, so a
    text's vector does not depend on the texts batched with it (per-tensor dynamic
    quantization, DynamicQuantizeMatMul, did: one batch-mate's outlier coarsened everyone's
    steps, and its minimum cosine fell to 0.973). The attention's QKV projection stays fp32:
    quantized too, the minimum cosine fell from 0.9934 to 0.9898 (AMD EPYC, AVX-512 VNNI, and the
    same under AVX2 emulation)."""

    def __init__(self, quantization: str) -> None:
        super().__init__(lambda layer: "dense")
        self.quantization = quantization

    def project(self, x: str, w: Floats, name: str) -> str:
        """x @ w.T for a [N, K] float weight."""
        if self.quantization == "int8" and not name.endswith("/qkv"):
            return self._int8_linear(x, w, name)
        kind = "float16" if self.quantization == "fp16" else "float32"
        return self.linear(x, w, name, kind)

    def _int8_linear(self, x: str, w: Floats, name: str) -> str:
        wt = np.asarray(w, np.float64).T  # [K, N]
        scale = np.abs(wt).max(axis=0) / WEIGHT_LEVELS
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(wt / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
        column_sums = (q.astype(np.float64) * scale).sum(axis=0)  # sum_k of the stored weights
        axis = self.axis_last()
        low = self.one("ReduceMin", [x, axis], f"{name}/min", keepdims=1)
        high = self.one("ReduceMax", [x, axis], f"{name}/max", keepdims=1)
        span = self.one("Sub", [high, low], f"{name}/span")
        floor = self.const(f"{name}.tiny", np.array(1e-12, np.float32))
        step = self.one(
            "Div",
            [
                self.one("Max", [span, floor], f"{name}/span_floor"),
                self.const(f"{name}.levels", np.array(255, np.float32)),
            ],
            f"{name}/step",
        )
        shifted = self.one("Sub", [x, low], f"{name}/shifted")
        levels = self.one(
            "Round", [self.one("Div", [shifted, step], f"{name}/scaled")], f"{name}/q"
        )
        a = self.one("Cast", [levels], f"{name}/u8", to=TensorProto.UINT8)
        product = self.one(
            "MatMulInteger", [a, self.const(f"{name}.q", q)], f"{name}/integer_product"
        )
        y = self.one("Cast", [product], f"{name}/float", to=TensorProto.FLOAT)
        y = self.one("Mul", [y, step], f"{name}/row_scaled")
        y = self.one(
            "Mul", [y, self.const(f"{name}.scales", scale.astype(np.float32))], f"{name}/scaled_out"
        )
        zero_term = self.one(
            "Mul",
            [low, self.const(f"{name}.column_sums", column_sums.astype(np.float32))],
            f"{name}/zero_term",
        )
        return self.one("Add", [y, zero_term], name)


def _embeddings(g: EncoderGraph, c: BertConfig, weight: EncoderWeights) -> str:
    """LayerNorm(word + position + type-0 embeddings); in int8 builds the word table is stored
    in 8-bit blocks (a quarter of the folder's size otherwise), its rows dequantized exactly."""
    table = weight("embeddings.word_embeddings.weight")
    if g.quantization == "int8":
        words = g.embedding("input_ids", quantize_offset(table, 8), "blocks")
    else:
        kind = "float16" if g.quantization == "fp16" else "float32"
        words = g.embedding("input_ids", table, kind)
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
    g: EncoderGraph, c: BertConfig, i: int, x: str, mask: str, weight: EncoderWeights
) -> str:
    """One post-norm transformer layer: x1 = LN(x + attention(x)), LN(x1 + FFN(x1))."""
    p, hf = f"layer.{i}", f"encoder.layer.{i}"
    a = f"{hf}.attention"
    parts = ("query", "key", "value")
    w = np.concatenate([weight(f"{a}.self.{n}.weight") for n in parts])
    b = np.concatenate([weight(f"{a}.self.{n}.bias") for n in parts])
    qkv = g.one(
        "Add",
        [g.project(x, w, f"{p}/qkv"), g.const(f"{p}.qkv.bias", b)],
        f"{p}/qkv_bias",
    )
    split = g.const(f"{p}.split", np.array([c.hidden] * 3, np.int64))
    q, k, v = g.node("Split", [qkv, split], f"{p}/split", outputs=3, axis=-1)
    attended = g.one(
        "MultiHeadAttention", [q, k, v, "", mask], f"{p}/attn", domain=MS_DOMAIN, num_heads=c.heads
    )
    out = g.project(attended, weight(f"{a}.output.dense.weight"), f"{p}/attn_out")
    x1 = _skip_norm(g, c, out, x, weight, f"{a}.output", f"{p}/attn_norm")
    up = g.project(x1, weight(f"{hf}.intermediate.dense.weight"), f"{p}/ffn_up")
    act = g.one(
        "BiasGelu",
        [up, g.const(f"{p}.ffn_up.bias", weight(f"{hf}.intermediate.dense.bias"))],
        f"{p}/gelu",
        domain=MS_DOMAIN,
    )
    down = g.project(act, weight(f"{hf}.output.dense.weight"), f"{p}/ffn_down")
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
