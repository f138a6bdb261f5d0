"""Read a Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`): Llama
architecture, float weights renamed to GGUF's names, Q/K rows permuted into GGUF's interleaved
rotary order (what llama.cpp's converter does), so one graph serves both sources."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.folder import GenerationDefaults
from llmchain_server.model.weights import Floats, Weight

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def gguf_name(hf: str) -> str | None:
    if hf in _TOP_NAMES:
        return _TOP_NAMES[hf]
    m = _LAYER.fullmatch(hf)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def to_interleaved(w: Floats, heads: int) -> Floats:
    """Hugging Face's rotate-half row order → GGUF's interleaved pairs (per head)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_safetensors(
    path: Path, skip: Callable[[str], bool] = lambda name: False
) -> dict[str, Floats]:
    """All tensors of one file as float32, but those `skip` names (BERT's int64 position_ids
    buffer). (The `safetensors` package's numpy API cannot load bfloat16, the usual dtype on the
    Hub; the format is a JSON header and raw arrays.)"""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    tensors: dict[str, Floats] = {}
    for name, info in header.items():
        if name == "__metadata__" or skip(name):
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[start:end], dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float32).reshape(info["shape"])
    return tensors


class HFSource:
    def __init__(self, path: Path) -> None:
        if not is_hf_folder(path):
            raise ValueError(
                f"{path} is not a Hugging Face model folder "
                "(config.json and *.safetensors expected)"
            )
        self.path = path
        self.raw = json.loads((path / "config.json").read_text())
        arch = self.raw.get("model_type")
        if arch != "llama":
            raise ValueError(
                f"{path}/config.json: model_type {arch!r} is not supported (only 'llama')"
            )
        self._tensors: dict[str, Floats] = {}
        for file in sorted(path.glob("*.safetensors")):
            for name, array in read_safetensors(file).items():
                if (target := gguf_name(name)) is not None:
                    self._tensors[target] = array
        self._config = self.config()  # validated once; weight() needs the head counts

    def config(self) -> LlamaConfig:
        r = self.raw
        heads = int(r["num_attention_heads"])
        scaling = r.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"{self.path}/config.json: rope_scaling {scaling} is not supported")
        if r.get("head_dim") not in (None, int(r["hidden_size"]) // heads):
            raise ValueError(
                f"{self.path}/config.json: head_dim {r['head_dim']} other than "
                "hidden_size / num_attention_heads is not supported"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if r.get(flag):
                raise ValueError(f"{self.path}/config.json: {flag} is not supported")
        return LlamaConfig(
            layers=int(r["num_hidden_layers"]),
            hidden=int(r["hidden_size"]),
            ffn=int(r["intermediate_size"]),
            heads=heads,
            kv_heads=int(r.get("num_key_value_heads", heads)),
            vocab=int(r["vocab_size"]),
            context=int(r.get("max_position_embeddings", 2048)),
            rope_base=float(r.get("rope_theta", 10000.0)),
            norm_eps=float(r.get("rms_norm_eps", 1e-6)),
            tied_embeddings=bool(r.get("tie_word_embeddings", False))
            or "output.weight" not in self._tensors,
        )

    def weight(self, name: str) -> Weight:
        w = self._tensors[name]
        c = self._config
        if name.endswith("attn_q.weight"):
            return to_interleaved(w, c.heads)
        if name.endswith("attn_k.weight"):
            return to_interleaved(w, c.kv_heads)
        return w

    def tokenizer_json(self) -> str:
        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{self.path} has no tokenizer.json")
        return path.read_text()

    def chat_template(self) -> str | None:
        path = self.path / "tokenizer_config.json"
        if path.is_file():
            template = json.loads(path.read_text()).get("chat_template")
            if isinstance(template, str):
                return template
        jinja = self.path / "chat_template.jinja"
        return jinja.read_text() if jinja.is_file() else None

    def _tokenizer_config(self) -> dict[str, Any]:
        path = self.path / "tokenizer_config.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        return data if isinstance(data, dict) else {}

    def special_words(self) -> dict[str, str]:
        """The BOS and EOS token texts the chat template may use."""
        config = self._tokenizer_config()
        words = {}
        for key in ("bos", "eos"):
            value = config.get(f"{key}_token")
            if isinstance(value, dict):  # AddedToken serialised
                value = value.get("content")
            words[key] = value if isinstance(value, str) else ""
        return words

    def add_bos(self) -> bool:
        """Llama tokenizers prepend BOS (add_bos_token, default true for Llama's tokenizer)."""
        value = self._tokenizer_config().get("add_bos_token")
        return bool(value) if value is not None else False

    def generation(self, defaults: GenerationDefaults) -> GenerationDefaults:
        """`defaults` with the sampling settings of generation_config.json (greedy when
        do_sample is false)."""
        path = self.path / "generation_config.json"
        if not path.is_file():
            return defaults
        raw = json.loads(path.read_text())
        if not raw.get("do_sample", False):  # Hugging Face decodes greedily unless told
            return replace(defaults, temperature=0.0)

        def given(key: str, default: float) -> float:
            value = raw.get(key)
            return value if isinstance(value, int | float) else default

        return GenerationDefaults(
            max_tokens=int(given("max_new_tokens", defaults.max_tokens)),
            temperature=float(given("temperature", defaults.temperature)),
            top_p=float(given("top_p", defaults.top_p)),
            top_k=int(given("top_k", defaults.top_k)),
        )

    def eos_ids(self) -> list[int]:
        for file in ("generation_config.json", "config.json"):
            path = self.path / file
            if path.is_file():
                eos = json.loads(path.read_text()).get("eos_token_id")
                if eos is not None:
                    return list(eos) if isinstance(eos, list) else [int(eos)]
        return []
