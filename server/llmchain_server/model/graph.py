"""The ONNX decoder graph: onnxruntime's contrib ops (GroupQueryAttention with rotary and a
shared past/present KV buffer, SkipSimplifiedLayerNormalization, MatMulNBits), so the CPU and CUDA
providers run it as is. Input and output names follow onnxruntime-genai's decoder convention
(`input_ids`, `attention_mask`, `past_key_values.N.key`, `logits`, `present.N.key`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llmchain_server.model.accuracy import MODES, accuracy_plan, role_of
from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.weights import BlockWeight, Floats, Weight

OPSET = 21
MS_DOMAIN = "com.microsoft"
LinearKind = str  # "float32", "float16" or "blocks"
WeightLookup = Callable[[str], Weight]  # a weight by its GGUF name


def _pack(w: BlockWeight) -> np.ndarray:
    """MatMulNBits' B: [N, blocks, block * bits / 8], element 2i low nibble, 2i+1 high."""
    rows, cols = w.shape
    q = w.q.reshape(rows, cols // w.block, w.block)
    if w.bits == 8:
        return q.copy()
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _zero_points(w: BlockWeight) -> np.ndarray:
    rows, cols = w.shape
    blocks = cols // w.block
    if w.bits == 8:
        return np.full(rows * blocks, w.zero, dtype=np.uint8)
    return np.full(rows * ((blocks + 1) // 2), w.zero | (w.zero << 4), dtype=np.uint8)


class GraphBuilder:
    """Accumulates nodes and initializers; one instance builds one model. `mode(layer)` says
    how a quantized linear layer computes (accuracy.MODES)."""

    def __init__(self, mode: Callable[[str], str]) -> None:
        self.mode = mode
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------
    def const(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        name: str,
        outputs: int = 1,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        outs = [f"{name}/out{i}" if outputs > 1 else f"{name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def one(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, name, 1, domain, **attrs)[0]

    # -- layers -----------------------------------------------------------------------------
    def linear(self, x: str, w: Weight, name: str, kind: LinearKind) -> str:
        """x @ w.T for a [N, K] weight, in the storage the build asked for."""
        if isinstance(w, BlockWeight) and self.mode(name) != "dense":
            return self._matmul_nbits(x, w, name)
        if isinstance(w, BlockWeight):  # dense: the blocks' exact values, in fp32
            w = w.dequantize()
        wt = np.ascontiguousarray(np.asarray(w, dtype=np.float32).T)
        if kind == "float16":
            stored = self.const(f"{name}.weight", wt.astype(np.float16))
            weight = self.one("Cast", [stored], f"{name}/cast", to=TensorProto.FLOAT)
        else:
            weight = self.const(f"{name}.weight", wt)
        return self.one("MatMul", [x, weight], name)

    def _matmul_nbits(self, x: str, w: BlockWeight, name: str) -> str:
        rows, cols = w.shape
        inputs = [
            x,
            self.const(f"{name}.qweight", _pack(w)),
            self.const(f"{name}.scales", w.scale.reshape(-1).astype(np.float32)),
            self.const(f"{name}.zero_points", _zero_points(w)),
        ]
        y = self.one(
            "MatMulNBits",
            inputs,
            name,
            domain=MS_DOMAIN,
            K=cols,
            N=rows,
            bits=w.bits,
            block_size=w.block,
            accuracy_level=MODES[self.mode(name)],
        )
        if w.offset is None:
            return y
        # Per-block offsets m: sum_k (d q + m) a_k = MatMulNBits(a) + sum_blocks m * sum_block(a).
        blocks = cols // w.block
        shape = self.const(f"{name}.block_shape", np.array([0, 0, blocks, w.block], np.int64))
        grouped = self.one("Reshape", [x, shape], f"{name}/blocks")
        sums = self.one("ReduceSum", [grouped, self.axis_last()], f"{name}/block_sums", keepdims=0)
        offsets = self.const(f"{name}.offsets", np.ascontiguousarray(w.offset.T))
        extra = self.one("MatMul", [sums, offsets], f"{name}/offset_term")
        return self.one("Add", [y, extra], f"{name}/with_offsets")

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        """The model of the nodes and initializers added so far (the opsets both graphs use)."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="llmchain",
            producer_version="1",
        )
        model.ir_version = 10
        return model

    def axis_last(self) -> str:
        if "axis_last" not in self._names:
            self.const("axis_last", np.array([-1], np.int64))
        return "axis_last"

    def embedding(self, ids: str, w: Weight, kind: LinearKind) -> str:
        if not isinstance(w, BlockWeight):
            table = np.asarray(w, dtype=np.float32)
            if kind == "float16":
                stored = self.const("embed.weight", table.astype(np.float16))
                rows = self.one("Gather", [stored, ids], "embed")
                return self.one("Cast", [rows], "embed/cast", to=TensorProto.FLOAT)
            return self.one("Gather", [self.const("embed.weight", table), ids], "embed")
        vocab, cols = w.shape
        blocks = cols // w.block
        q = self.const("embed.q", w.q.reshape(vocab, blocks, w.block))
        rows = self.one(
            "Cast", [self.one("Gather", [q, ids], "embed/q")], "embed/float", to=TensorProto.FLOAT
        )
        zero = self.const("embed.zero", np.array(w.zero, np.float32))
        centred = self.one("Sub", [rows, zero], "embed/centred")
        scales = self.one("Gather", [self.const("embed.scales", w.scale), ids], "embed/scales")
        x = self.one(
            "Mul",
            [centred, self.one("Unsqueeze", [scales, self.axis_last()], "embed/scales3")],
            "embed/scaled",
        )
        if w.offset is not None:
            offs = self.one("Gather", [self.const("embed.offsets", w.offset), ids], "embed/offs")
            x = self.one(
                "Add",
                [x, self.one("Unsqueeze", [offs, self.axis_last()], "embed/offs3")],
                "embed/offset",
            )
        shape = self.const("embed.shape", np.array([0, 0, cols], np.int64))
        return self.one("Reshape", [x, shape], "embed/out")


class DecoderGraph(GraphBuilder):
    """The decoder's builder: its shape and each layer role's accuracy mode."""

    def __init__(self, config: LlamaConfig, accuracy: Mapping[str, str]) -> None:
        self.accuracy = dict(accuracy)  # how each layer role computes (accuracy.MODES)
        super().__init__(lambda layer: self.accuracy[role_of(layer)])
        self.config = config


def build_graph(
    config: LlamaConfig,
    weight: WeightLookup,
    kind: LinearKind,
    accuracy: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The whole decoder. `weight(name)` returns weights by GGUF name, already in the storage
    wanted (BlockWeight for quantized builds, float arrays otherwise); `accuracy` says how each
    layer role computes (default: the recommended plan, accuracy.py)."""
    g = DecoderGraph(config, accuracy_plan() if accuracy is None else accuracy)
    inputs, outputs = _inputs_and_outputs(config)
    seqlens, total_len = _sequence_lengths(g)
    cos, sin = _rotary_caches(g)
    shared = _AttentionInputs(seqlens, total_len, cos, sin)
    hidden = g.embedding("input_ids", weight("token_embd.weight"), kind)
    normed = g.one(
        "SimplifiedLayerNormalization",
        [hidden, g.const("blk.0.attn_norm.weight", _vector(weight("blk.0.attn_norm.weight")))],
        "blk.0/attn_norm",
        epsilon=config.norm_eps,
        axis=-1,
        stash_type=1,
    )
    residual = hidden
    for i in range(config.layers):
        normed, residual = _layer(g, i, normed, residual, weight, kind, shared)
    _output_head(g, normed, shared, inputs, weight, kind)
    return g.model("llmchain-decoder", inputs, outputs)


@dataclass(frozen=True)
class _AttentionInputs:
    """What every layer's GroupQueryAttention takes besides its own QKV and KV cache."""

    seqlens: str
    total_len: str
    cos: str
    sin: str


def _inputs_and_outputs(
    c: LlamaConfig,
) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """The graph's inputs and outputs, named as onnxruntime-genai's decoders name them."""
    batch, seq, past, total, present = (
        "batch",
        "sequence",
        "past_sequence",
        "total_sequence",
        "present_sequence",
    )
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, seq, c.vocab])]
    for i in range(c.layers):
        for kv in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kv}",
                    TensorProto.FLOAT,
                    [batch, c.kv_heads, past, c.head_dim],
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kv}", TensorProto.FLOAT, [batch, c.kv_heads, present, c.head_dim]
                )
            )
    return inputs, outputs


def _sequence_lengths(g: DecoderGraph) -> tuple[str, str]:
    """GroupQueryAttention's `seqlens_k` (each row's last position) and total sequence length,
    from the attention mask (as onnxruntime-genai computes them)."""
    axis1 = g.const("axis1", np.array([1], np.int64))
    lengths = g.one("ReduceSum", ["attention_mask", axis1], "seqlens/sum", keepdims=0)
    last = g.one("Sub", [lengths, g.const("one", np.array(1, np.int64))], "seqlens/last")
    seqlens = g.one("Cast", [last], "seqlens_k", to=TensorProto.INT32)
    mask_shape = g.one("Shape", ["attention_mask"], "mask_shape")
    width = g.one("Gather", [mask_shape, g.const("index1", np.array(1, np.int64))], "total/len")
    total_len = g.one("Cast", [width], "total_sequence_length", to=TensorProto.INT32)
    return seqlens, total_len


def _rotary_caches(g: DecoderGraph) -> tuple[str, str]:
    """The cos and sin tables of rotary embedding, one row per position of the context."""
    c = g.config
    d = c.head_dim
    inv_freq = 1.0 / (c.rope_base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.outer(np.arange(c.context, dtype=np.float64), inv_freq)
    cos = g.const("cos_cache", np.cos(angles).astype(np.float32))
    sin = g.const("sin_cache", np.sin(angles).astype(np.float32))
    return cos, sin


def _layer(
    g: DecoderGraph,
    i: int,
    normed: str,
    residual: str,
    weight: WeightLookup,
    kind: LinearKind,
    shared: _AttentionInputs,
) -> tuple[str, str]:
    """Decoder layer `i` on its normalised input: attention, then the MLP, each added to the
    residual stream. Returns the next layer's normalised input (after the last layer, the
    output norm's) and the residual stream."""
    p = f"blk.{i}"
    attended = _attention(g, i, normed, weight, kind, shared)
    normed, residual = _skip_norm(
        g, attended, residual, weight, f"{p}.ffn_norm.weight", f"{p}/ffn_norm"
    )
    down = _mlp(g, p, normed, weight, kind)
    last = i + 1 == g.config.layers
    norm = "output_norm.weight" if last else f"blk.{i + 1}.attn_norm.weight"
    return _skip_norm(g, down, residual, weight, norm, f"{p}/next_norm")


def _attention(
    g: DecoderGraph,
    i: int,
    normed: str,
    weight: WeightLookup,
    kind: LinearKind,
    shared: _AttentionInputs,
) -> str:
    """Fused QKV projection, GroupQueryAttention (rotary inside, KV cache in and out as
    `past_key_values.i.*` / `present.i.*`), output projection."""
    c = g.config
    p = f"blk.{i}"
    projections = [weight(f"{p}.attn_{x}.weight") for x in ("q", "k", "v")]
    qkv = g.linear(normed, _concat(projections), f"{p}/qkv", kind)
    past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    attn = g.node(
        "GroupQueryAttention",
        [qkv, "", "", *past, shared.seqlens, shared.total_len, shared.cos, shared.sin],
        f"{p}/attn",
        outputs=3,
        domain=MS_DOMAIN,
        num_heads=c.heads,
        kv_num_heads=c.kv_heads,
        do_rotary=1,
        rotary_interleaved=1,
    )
    g.nodes[-1].output[1] = f"present.{i}.key"
    g.nodes[-1].output[2] = f"present.{i}.value"
    return g.linear(attn[0], weight(f"{p}.attn_output.weight"), f"{p}/attn_output", kind)


def _mlp(g: DecoderGraph, p: str, normed: str, weight: WeightLookup, kind: LinearKind) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused into one projection."""
    ffn = g.config.ffn
    gate_up = g.linear(
        normed,
        _concat([weight(f"{p}.ffn_gate.weight"), weight(f"{p}.ffn_up.weight")]),
        f"{p}/gate_up",
        kind,
    )
    gate, up = g.node(
        "Split",
        [gate_up, g.const(f"{p}.split", np.array([ffn, ffn], np.int64))],
        f"{p}/split",
        outputs=2,
        axis=-1,
    )
    sigmoid = g.one("Sigmoid", [gate], f"{p}/sigmoid")
    silu = g.one("Mul", [gate, sigmoid], f"{p}/silu")
    act = g.one("Mul", [silu, up], f"{p}/swiglu")
    return g.linear(act, weight(f"{p}.ffn_down.weight"), f"{p}/ffn_down", kind)


def _skip_norm(
    g: DecoderGraph, x: str, residual: str, weight: WeightLookup, norm: str, name: str
) -> tuple[str, str]:
    """RMS norm of x + residual with the weight named `norm`, as node `name`: the normalised
    sum and the sum (the residual stream from here on)."""
    normed, _, _, total = g.node(
        "SkipSimplifiedLayerNormalization",
        [x, residual, g.const(norm, _vector(weight(norm)))],
        name,
        outputs=4,
        domain=MS_DOMAIN,
        epsilon=g.config.norm_eps,
    )
    return normed, total


def _output_head(
    g: DecoderGraph,
    normed: str,
    shared: _AttentionInputs,
    inputs: list[onnx.ValueInfoProto],
    weight: WeightLookup,
    kind: LinearKind,
) -> None:
    """The logits: the output head (the embedding table when tied) over the final norm's
    output, of the last positions only when `last_token_logits` asks."""
    head = "token_embd.weight" if g.config.tied_embeddings else "output.weight"
    g.linear(
        _last_token_rows(g, normed, shared, inputs), weight(f"{head}#lm_head"), "lm_head", kind
    )
    g.nodes[-1].output[0] = "logits"  # the last node of the head (MatMul, or the offset Add)


def _last_token_rows(
    g: DecoderGraph,
    hidden: str,
    shared: _AttentionInputs,
    inputs: list[onnx.ValueInfoProto],
) -> str:
    """Optional input `last_token_logits` (default false): when true, keep only each row's last
    real position (in a right-padded first prompt, or in a chunk that extends one row's cached
    past), twice, before the output head, so a prefill computes [batch, 2, vocab] logits (the
    same row twice) instead of [batch, sequence, vocab]. Callers that do not know the input
    (onnxruntime-genai) get every position, as before."""
    seqlens, total_len = shared.seqlens, shared.total_len
    flag = "last_token_logits"
    inputs.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
    g.const(flag, np.array(False))
    # Row i's last position in this run is seqlens_k[i] - past, past = total - sequence: 0 for
    # a first prompt, the cached length when a chunk extends a single row's past.
    shape = helper.make_node("Shape", [hidden], ["last/shape"])
    parts = helper.make_node(
        "Split", ["last/shape"], ["last/b", "last/s", "last/h"], axis=0, num_outputs=3
    )
    last = helper.make_node("Cast", [seqlens], ["last/absolute"], to=TensorProto.INT64)
    total = helper.make_node("Cast", [total_len], ["last/total"], to=TensorProto.INT64)
    past = helper.make_node("Sub", ["last/total", "last/s"], ["last/past"])
    index = helper.make_node("Sub", ["last/absolute", "last/past"], ["last/index"])
    rows = helper.make_node("Unsqueeze", ["last/index", "last/axes"], ["last/index3"])
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "last/axes")
    # Two copies of each row's last position: the output head then computes two rows or more
    # even for one sequence, the MatMulNBits kernel a batch of several takes, so a prompt's
    # first token does not depend on how many prompts ran with it (the caller keeps the last).
    width = numpy_helper.from_array(np.array([2], np.int64), "last/two")
    target = helper.make_node("Concat", ["last/b", "last/two", "last/h"], ["last/target"], axis=0)
    expand = helper.make_node("Expand", ["last/index3", "last/target"], ["last/indices"])
    gather = helper.make_node("GatherElements", [hidden, "last/indices"], ["last/rows"], axis=1)
    then_branch = helper.make_graph(
        [shape, parts, last, total, past, index, rows, target, expand, gather],
        "last_rows",
        [],
        [helper.make_tensor_value_info("last/rows", TensorProto.FLOAT, None)],
        [axes, width],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [hidden], ["all/rows"])],
        "all_rows",
        [],
        [helper.make_tensor_value_info("all/rows", TensorProto.FLOAT, None)],
    )
    return g.one("If", [flag], "head_rows", then_branch=then_branch, else_branch=else_branch)


def _vector(w: Weight) -> Floats:
    if isinstance(w, BlockWeight):
        raise ValueError("a norm weight cannot be quantized")
    return np.asarray(w, dtype=np.float32).reshape(-1)


def _concat(parts: list[Weight]) -> Weight:
    """Stack [N_i, K] weights into one [sum N_i, K] (fused QKV, fused gate/up)."""
    if not all(isinstance(p, BlockWeight) for p in parts):
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=0)
    blocks = [p for p in parts if isinstance(p, BlockWeight)]
    first = blocks[0]
    if any(b.bits != first.bits or b.block != first.block for b in blocks):
        raise ValueError("cannot fuse weights of different bit widths")
    same_zero = all(b.zero == first.zero for b in blocks)
    offsets = [b.offset is not None for b in blocks]
    if same_zero and (all(offsets) or not any(offsets)):
        offset = None if not any(offsets) else np.concatenate([b.offset for b in blocks])
        return BlockWeight(
            q=np.concatenate([b.q for b in blocks]),
            scale=np.concatenate([b.scale for b in blocks]),
            zero=first.zero,
            offset=offset,
            bits=first.bits,
            block=first.block,
        )
    # Mixed zero points: fold each zero into an offset (x = s q + (m - s z)) and fuse those.
    folded = [
        BlockWeight(
            q=b.q,
            scale=b.scale,
            zero=0,
            bits=b.bits,
            block=b.block,
            offset=(b.offset if b.offset is not None else 0) - b.scale * b.zero,
        )
        for b in blocks
    ]
    return _concat(list(folded))
