"""An embedding model folder's `config.json`: the encoder's shape (BERT family), how token vectors
become one sentence vector (pooling, normalisation) and the longest input it reads. The embedder
reads embedding folders only through this module, which loads no builder (no onnx)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmchain_server.model.fields import Fields, FolderError

KIND = "embedding"
"""`config.json`'s `kind` in an embedding model folder (decoder folders have none)."""
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")
"""sentence-transformers' pooling modes the graph computes."""
EMBEDDING_QUANTIZATIONS = ("int8", "fp16", "none")
SENTENCE_EMBEDDING = "sentence_embedding"
"""The graph's output: one vector per input row, pooled (and normalised when configured)."""


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-style encoder (post-norm LayerNorm, absolute positions, exact
    GELU)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab: int
    positions: int
    norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def check(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of {self.heads} heads")

    def to_json(self) -> dict[str, Any]:
        return {"architecture": "bert", **asdict(self)}

    @classmethod
    def read(cls, f: Fields) -> BertConfig:
        if (architecture := f.text("architecture")) != "bert":
            raise f.error("architecture", f"{architecture!r} is not supported (only 'bert')")
        config = cls(
            layers=f.integer("layers"),
            hidden=f.integer("hidden"),
            ffn=f.integer("ffn"),
            heads=f.integer("heads"),
            vocab=f.integer("vocab"),
            positions=f.integer("positions"),
            norm_eps=f.number("norm_eps"),
        )
        try:
            config.check()
        except ValueError as e:
            raise f.invalid(str(e)) from None
        return config


@dataclass(frozen=True)
class EncoderConfig:
    """`config.json` of an embedding model folder."""

    model: BertConfig
    quantization: str
    pooling: str
    normalize: bool
    max_tokens: int
    """The longest input, in tokens with the special ones (sentence-transformers' max_seq_length;
    longer inputs are truncated)."""
    pad_id: int

    @property
    def dimensions(self) -> int:
        return self.model.hidden

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "model": self.model.to_json(),
            "quantization": self.quantization,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "maxTokens": self.max_tokens,
            "padTokenId": self.pad_id,
        }

    def write(self, folder: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        (folder / "config.json").write_text(text)

    @classmethod
    def read(cls, f: Fields) -> EncoderConfig:
        if (kind := f.text("kind", "")) != KIND:
            raise f.error("kind", f"is {kind or 'absent'!r}: this is not an embedding model folder")
        quantization = f.text("quantization")
        if quantization not in EMBEDDING_QUANTIZATIONS:
            raise f.error(
                "quantization", f"{quantization!r} is not one of {EMBEDDING_QUANTIZATIONS}"
            )
        pooling = f.text("pooling")
        if pooling not in POOLINGS:
            raise f.error("pooling", f"{pooling!r} is not one of {POOLINGS}")
        model = BertConfig.read(f.section("model"))
        max_tokens = f.integer("maxTokens")
        if not 2 < max_tokens <= model.positions:
            raise f.error("maxTokens", f"{max_tokens} is not within 3..{model.positions}")
        return cls(
            model=model,
            quantization=quantization,
            pooling=pooling,
            normalize=f.flag("normalize"),
            max_tokens=max_tokens,
            pad_id=f.integer("padTokenId", 0),
        )


def is_embedding_folder(folder: Path) -> bool:
    """Whether `folder`'s config.json says it holds an embedding model."""
    try:
        return bool(json.loads((folder / "config.json").read_text()).get("kind") == KIND)
    except (OSError, ValueError, AttributeError):
        return False


def read_encoder_config(folder: Path) -> EncoderConfig:
    """The folder's `config.json`; a FolderError names the bad field."""
    return EncoderConfig.read(Fields.load(folder / "config.json"))


__all__ = [
    "EMBEDDING_QUANTIZATIONS",
    "KIND",
    "POOLINGS",
    "SENTENCE_EMBEDDING",
    "BertConfig",
    "EncoderConfig",
    "FolderError",
    "is_embedding_folder",
    "read_encoder_config",
]
