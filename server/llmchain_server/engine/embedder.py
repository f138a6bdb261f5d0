"""The embedding model: an encoder folder (`llmchain model build` from a sentence-transformers
model) on an onnxruntime session. Texts or token ids in, one vector per input out.

Inputs are tokenized with the model's tokenizer (truncated to its longest input, the count of
truncated inputs reported), sorted by length and run in batches of at most `batch_tokens` padded
tokens, so short texts are not padded to a long one's length; the graph pools and normalises."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from llmchain_server.engine.providers import DeviceOptions
from llmchain_server.engine.session import create_session
from llmchain_server.model.encoder_config import (
    SENTENCE_EMBEDDING,
    EncoderConfig,
    read_encoder_config,
)
from llmchain_server.model.fields import FolderError
from llmchain_server.model.manifest import Manifest, check

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tokens:
    """One input, tokenized: its ids with the special tokens, and whether it was cut."""

    ids: list[int]
    truncated: bool


class Embedder:
    """An embedding model folder, loaded. `embed` is thread-safe (one run at a time)."""

    def __init__(
        self,
        folder: Path,
        provider: str = "auto",
        threads: int | None = None,
        batch_tokens: int = 1024,
    ) -> None:
        started = time.monotonic()
        self.folder = folder
        self.manifest: Manifest = check(folder, deep=True)
        self.config: EncoderConfig = read_encoder_config(folder)
        for name in ("model.onnx", "tokenizer.json"):
            if name not in self.manifest.files:
                raise FolderError(f"{folder}: manifest.json lists no {name}")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.config.max_tokens)
        self.prefix, self.suffix = _specials(folder / "tokenizer.json")
        self.vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.batch_tokens = max(batch_tokens, self.config.max_tokens)
        self.session, self.provider = create_session(
            folder / "model.onnx", provider, threads, DeviceOptions.from_env()
        )
        self._lock = threading.Lock()
        log.info(
            "Loaded embedding model %s (%s, %d dimensions, %s) in %.1f s",
            folder.name,
            self.manifest.digest,
            self.dimensions,
            self.config.quantization,
            time.monotonic() - started,
        )

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def dimensions(self) -> int:
        return self.config.dimensions

    @property
    def max_tokens(self) -> int:
        return self.config.max_tokens

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Each text's ids with the special tokens, cut to the model's longest input."""
        encodings = self.tokenizer.encode_batch(texts)
        return [Tokens(e.ids, bool(e.overflowing)) for e in encodings]

    def wrap(self, ids: list[int]) -> Tokens:
        """Token ids given by a client (the text's tokens, without special ones), with the
        special tokens, cut to the model's longest input. A ValueError names an id out of
        the vocabulary."""
        for i in ids:
            if not 0 <= i < self.vocab:
                raise ValueError(f"token id {i} is not in the vocabulary (0..{self.vocab - 1})")
        room = self.max_tokens - len(self.prefix) - len(self.suffix)
        return Tokens([*self.prefix, *ids[:room], *self.suffix], len(ids) > room)

    def embed(self, inputs: list[list[int]]) -> Vectors:
        """One vector per input (ids with special tokens), in input order."""
        out = np.empty((len(inputs), self.dimensions), np.float32)
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        with self._lock:
            for batch in _batches(order, inputs, self.batch_tokens):
                out[batch] = self._run([inputs[i] for i in batch])
        return out

    def _run(self, rows: list[list[int]]) -> Vectors:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.config.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        (vectors,) = self.session.run(
            [SENTENCE_EMBEDDING], {"input_ids": ids, "attention_mask": mask}
        )
        return np.asarray(vectors, np.float32)


def _batches(order: list[int], inputs: list[list[int]], budget: int) -> list[list[int]]:
    """`order` (shortest first) cut into runs whose padded size (rows x longest) fits `budget`."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = len(inputs[i])  # the longest so far: the order is by length
        if current and (len(current) + 1) * width > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _specials(tokenizer_json: Path) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer's post-processor puts before and after one text
    (BERT: [CLS] and [SEP]), for inputs given as token ids."""
    processor = json.loads(tokenizer_json.read_text()).get("post_processor") or {}
    kind = processor.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [int(processor["cls"][1])], [int(processor["sep"][1])]
    if kind != "TemplateProcessing":
        return [], []
    ids = {name: list(token["ids"]) for name, token in processor.get("special_tokens", {}).items()}
    before: list[int] = []
    after: list[int] = []
    seen_sequence = False
    for piece in processor.get("single", []):
        if "Sequence" in piece:
            seen_sequence = True
        elif "SpecialToken" in piece:
            (after if seen_sequence else before).extend(ids[piece["SpecialToken"]["id"]])
    return before, after
