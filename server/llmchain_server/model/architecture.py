"""The decoder architecture a model folder describes (Llama family), read from GGUF metadata or a
Hugging Face `config.json`, and written into the model folder as `config.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmchain_server.model.fields import Fields


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-style decoder (RMSNorm, rotary attention, SwiGLU MLP)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    rope_base: float
    norm_eps: float
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_json(self) -> dict[str, Any]:
        return {"architecture": "llama", **asdict(self)}

    @classmethod
    def read(cls, f: Fields) -> LlamaConfig:
        """From the object `to_json` wrote; an error names the field."""
        if (architecture := f.text("architecture", "llama")) != "llama":
            raise f.error("architecture", f"{architecture!r} is not supported (only 'llama')")
        config = cls(
            layers=f.integer("layers"),
            hidden=f.integer("hidden"),
            ffn=f.integer("ffn"),
            heads=f.integer("heads"),
            kv_heads=f.integer("kv_heads"),
            vocab=f.integer("vocab"),
            context=f.integer("context"),
            rope_base=f.number("rope_base"),
            norm_eps=f.number("norm_eps"),
            tied_embeddings=f.flag("tied_embeddings"),
        )
        try:
            config.check()
        except ValueError as e:
            raise f.invalid(str(e)) from None
        return config

    def check(self) -> None:
        """Refuse shapes the graph cannot express, naming the field."""
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of {self.heads} heads")
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.heads} heads are not a multiple of {self.kv_heads} KV heads")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} is odd; rotary embedding needs pairs")
