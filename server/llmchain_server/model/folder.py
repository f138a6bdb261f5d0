"""The served model folder's format and its typed reader: the file names, `config.json` (the
decoder's shape, special tokens, quantization, accuracy plan and generation defaults), and
`open_folder`, which checks the folder against its manifest and reads it into dataclasses whose
errors name the file and the field.

`llmchain model build` writes folders with these definitions; the engine reads them only through
this module, which loads no builder (no onnx, no gguf)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.fields import Fields, FolderError
from llmchain_server.model.manifest import MANIFEST, Manifest, check

MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"
"""The weights of a graph too big for one protobuf message (2 GiB), beside it."""
TOKENIZER = "tokenizer.json"
CHAT_TEMPLATE = "chat_template.jinja"
"""Absent when the source has no chat template."""
CONFIG = "config.json"
REQUIRED = (MODEL, TOKENIZER, CONFIG)

QUANTIZATIONS = ("int4", "int8", "fp16", "none")
QUANTIZED = ("int4", "int8")
"""The quantizations built with MatMulNBits layers, hence with an accuracy plan."""


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling for requests that set none."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "maxTokens": self.max_tokens,
            "temperature": self.temperature,
            "topP": self.top_p,
            "topK": self.top_k,
        }

    def updated(self, f: Fields) -> GenerationDefaults:
        """These defaults with the fields `f` sets (named as `to_json` writes them)."""
        return GenerationDefaults(
            max_tokens=f.integer("maxTokens", self.max_tokens),
            temperature=f.number("temperature", self.temperature),
            top_p=f.number("topP", self.top_p),
            top_k=f.integer("topK", self.top_k),
        )


DEFAULT_GENERATION = GenerationDefaults()
"""Greedy (deterministic, so cacheable) unless the source says otherwise (a Hugging Face
`generation_config.json`)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The tokens the tokenizer, the chat template and the scheduler treat specially."""

    bos_id: int | None = None
    bos: str = ""
    """BOS as text, for chat templates that write it (so is `eos`)."""
    eos: str = ""
    add_bos: bool = False
    """Prepend BOS to every encoded prompt."""
    eos_ids: tuple[int, ...] = ()
    """Every token that ends a generation: the EOS and the chat's end-of-turn tokens."""

    def to_json(self) -> dict[str, Any]:
        return {
            "bosTokenId": self.bos_id,
            "bosToken": self.bos,
            "eosToken": self.eos,
            "addBos": self.add_bos,
            "eosTokenIds": list(self.eos_ids),
        }

    @classmethod
    def read(cls, f: Fields) -> SpecialTokens:
        return cls(
            bos_id=f.optional_integer("bosTokenId"),
            bos=f.text("bosToken", ""),
            eos=f.text("eosToken", ""),
            add_bos=f.flag("addBos", False),
            eos_ids=f.integers("eosTokenIds"),
        )


@dataclass(frozen=True)
class AccuracyPlan:
    """How the linear layers of a quantized build compute: the plan's name and each layer
    role's mode (see accuracy.py)."""

    name: str
    modes: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.name, "modes": dict(self.modes)}

    @classmethod
    def read(cls, f: Fields) -> AccuracyPlan:
        return cls(name=f.text("plan"), modes=f.texts("modes"))


@dataclass(frozen=True)
class ModelConfig:
    """`config.json`: what the engine needs besides the graph and the tokenizer."""

    model: LlamaConfig
    quantization: str
    special: SpecialTokens = SpecialTokens()
    accuracy: AccuracyPlan | None = None
    """The accuracy plan of a quantized build (None otherwise)."""
    generation: GenerationDefaults = DEFAULT_GENERATION

    @property
    def quantized(self) -> bool:
        return self.quantization in QUANTIZED

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            **self.special.to_json(),
            "quantization": self.quantization,
            "accuracy": self.accuracy.to_json() if self.accuracy else None,
            "generation": self.generation.to_json(),
        }

    def write(self, folder: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        (folder / CONFIG).write_text(text)

    @classmethod
    def read(cls, f: Fields) -> ModelConfig:
        quantization = f.text("quantization")
        if quantization not in QUANTIZATIONS:
            raise f.error("quantization", f"{quantization!r} is not one of {QUANTIZATIONS}")
        accuracy = f.optional_section("accuracy")
        generation = f.optional_section("generation")
        return cls(
            model=LlamaConfig.read(f.section("model")),
            quantization=quantization,
            special=SpecialTokens.read(f),
            accuracy=AccuracyPlan.read(accuracy) if accuracy else None,
            generation=DEFAULT_GENERATION.updated(generation) if generation else DEFAULT_GENERATION,
        )


def read_config(folder: Path) -> ModelConfig:
    """The folder's `config.json`; a FolderError names the bad field."""
    return ModelConfig.read(Fields.load(folder / CONFIG))


@dataclass(frozen=True)
class ModelFolder:
    """A built model folder, checked against its manifest and read."""

    path: Path
    manifest: Manifest
    config: ModelConfig
    chat_template: str | None = field(default=None, repr=False)
    """The Jinja chat template, when the source had one."""

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def tokenizer(self) -> Path:
        return self.path / TOKENIZER


def open_folder(path: Path, verify_checksums: bool = True) -> ModelFolder:
    """The model folder at `path`, after checking each file the manifest lists (its size, and
    its checksum when `verify_checksums`). A FolderError names what is missing or wrong."""
    manifest = check(path, deep=verify_checksums)
    for name in REQUIRED:
        if name not in manifest.files:
            raise FolderError(
                f"{path}: {MANIFEST} lists no {name}; build the folder with `llmchain model build`"
            )
    template = path / CHAT_TEMPLATE
    return ModelFolder(
        path=path,
        manifest=manifest,
        config=read_config(path),
        chat_template=template.read_text() if CHAT_TEMPLATE in manifest.files else None,
    )


__all__ = [
    "CHAT_TEMPLATE",
    "CONFIG",
    "DEFAULT_GENERATION",
    "MODEL",
    "MODEL_DATA",
    "QUANTIZATIONS",
    "QUANTIZED",
    "REQUIRED",
    "TOKENIZER",
    "AccuracyPlan",
    "FolderError",
    "GenerationDefaults",
    "ModelConfig",
    "ModelFolder",
    "SpecialTokens",
    "open_folder",
    "read_config",
]
