"""Read a GGUF file: architecture, tokenizer, chat template and weights, keeping Q4_0, Q4_1 and
Q8_0 blocks as they are (see weights.py) and dequantizing every other type."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.weights import BlockWeight, Floats, Weight

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_T = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class GGUFVocab:
    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool

    def token(self, index: int | None) -> str:
        """The text of a token id ("" for none or out of range)."""
        return self.tokens[index] if index is not None and 0 <= index < len(self.tokens) else ""


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


class GGUFSource:
    """One GGUF file opened for reading (memory-mapped by gguf's reader)."""

    def __init__(self, path: Path) -> None:
        if not is_gguf(path):
            raise ValueError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as e:  # gguf's reader fails with bare errors on cut or corrupt files
            raise ValueError(
                f"{path.name} is not a readable GGUF file (truncated or corrupt: {e})"
            ) from None
        arch = _field(self.reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
        self.tensors = {t.name: t for t in self.reader.tensors}

    def config(self) -> LlamaConfig:
        r = self.reader
        self._refuse_unsupported()
        heads = int(_field(r, "llama.attention.head_count"))
        vocab = _field(r, "llama.vocab_size") or len(_field(r, "tokenizer.ggml.tokens"))
        return LlamaConfig(
            layers=int(_field(r, "llama.block_count")),
            hidden=int(_field(r, "llama.embedding_length")),
            ffn=int(_field(r, "llama.feed_forward_length")),
            heads=heads,
            kv_heads=int(_field(r, "llama.attention.head_count_kv", heads)),
            vocab=int(vocab),
            context=int(_field(r, "llama.context_length")),
            rope_base=float(_field(r, "llama.rope.freq_base", 10000.0)),
            norm_eps=float(_field(r, "llama.attention.layer_norm_rms_epsilon")),
            tied_embeddings="output.weight" not in self.tensors,
        )

    def _refuse_unsupported(self) -> None:
        """Features the graph does not implement would give wrong outputs, not errors."""
        r = self.reader
        scaling = _field(r, "llama.rope.scaling.type")
        if "rope_freqs.weight" in self.tensors or scaling not in (None, "none"):
            raise ValueError(
                f"{self.path.name}: scaled rotary embeddings (Llama 3.1+ style) are not supported"
            )
        key_length = _field(r, "llama.attention.key_length")
        hidden, heads = _field(r, "llama.embedding_length"), _field(r, "llama.attention.head_count")
        if key_length is not None and hidden and heads and int(key_length) != hidden // heads:
            raise ValueError(
                f"{self.path.name}: a head size other than hidden/heads is not supported"
            )
        if any(name.endswith(".bias") for name in self.tensors):
            raise ValueError(f"{self.path.name}: bias tensors are not supported")

    def vocab(self) -> GGUFVocab:
        r = self.reader
        bos = _field(r, "tokenizer.ggml.bos_token_id")
        eos = _field(r, "tokenizer.ggml.eos_token_id")
        return GGUFVocab(
            model=str(_field(r, "tokenizer.ggml.model")),
            pre=str(_field(r, "tokenizer.ggml.pre", "default")),
            tokens=list(_field(r, "tokenizer.ggml.tokens")),
            token_types=[int(t) for t in _field(r, "tokenizer.ggml.token_type")],
            merges=list(_field(r, "tokenizer.ggml.merges", [])),
            bos_id=None if bos is None else int(bos),
            eos_id=None if eos is None else int(eos),
            add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        )

    def chat_template(self) -> str | None:
        template = _field(self.reader, "tokenizer.chat_template")
        return None if template is None else str(template)

    def names(self) -> list[str]:
        return list(self.tensors)

    def weight(self, name: str) -> Weight:
        """A weight in GGUF's naming (`blk.0.attn_q.weight`), rows = output features."""
        t = self.tensors[name]
        data: npt.NDArray[Any] = np.asarray(t.data)
        kind = t.tensor_type
        if kind == _T.F32:
            return data.astype(np.float32)
        if kind in (_T.F16, _T.BF16):
            return gguf.quants.dequantize(data, kind).astype(np.float32)
        if kind in (_T.Q4_0, _T.Q4_1, _T.Q8_0):
            return _blocks(data, kind)
        log.info("Dequantized %s from %s (no exact carry-over for that type)", name, kind.name)
        floats: Floats = gguf.quants.dequantize(data, kind).astype(np.float32)
        return floats


def _blocks(data: npt.NDArray[Any], kind: Any) -> BlockWeight:
    """Q4_0 / Q4_1 / Q8_0 rows of raw bytes → a BlockWeight with the same values."""
    rows = data.shape[0]
    if kind == _T.Q8_0:
        raw = data.reshape(rows, -1, 34)
        scale = raw[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        signed = raw[..., 2:].copy().view(np.int8).astype(np.int16)
        q = (signed + 128).astype(np.uint8).reshape(rows, -1)
        return BlockWeight(q=q, scale=scale, zero=128, offset=None, bits=8)
    head = 4 if kind == _T.Q4_1 else 2
    raw = data.reshape(rows, -1, head + 16)
    scale = raw[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset = None
    if kind == _T.Q4_1:
        offset = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = raw[..., head:]
    # GGUF packs element j in the low nibble and element j + 16 in the high nibble of byte j.
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.uint8).reshape(rows, -1)
    zero = 0 if kind == _T.Q4_1 else 8
    return BlockWeight(q=q, scale=scale, zero=zero, offset=offset, bits=4)
