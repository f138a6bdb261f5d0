"""Build an embedding model folder from a BERT-family encoder (encoder_source.py): the graph
(encoder_graph.py), the tokenizer set to the model's longest input, `config.json`
(encoder_config.py). build.py calls this for encoder sources and writes the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from llmchain_server.model.encoder_config import EMBEDDING_QUANTIZATIONS, EncoderConfig
from llmchain_server.model.encoder_graph import build_encoder
from llmchain_server.model.encoder_source import EncoderSource
from llmchain_server.model.manifest import content_digest, file_digest
from llmchain_server.model.progress import Progress


def build_encoder_into(
    tmp: Path, source_path: Path, quantization: str, progress: Progress
) -> tuple[Any, dict[str, Any]]:
    """The encoder's graph (not yet saved) with its tokenizer and config.json written into
    `tmp`, and the manifest's source and parameter fields."""
    if quantization not in EMBEDDING_QUANTIZATIONS:
        raise ValueError(
            f"quantization {quantization!r} is not offered for embedding models "
            f"(one of {', '.join(EMBEDDING_QUANTIZATIONS)})"
        )
    source = EncoderSource(source_path)
    config = source.config()
    max_tokens = source.max_tokens(config.positions)
    pooling, normalize = source.pooling(), source.normalize()
    progress.say(
        f"encoder: {config.layers} layers, {config.hidden} wide, {pooling} pooling"
        f"{', normalised' if normalize else ''}, inputs up to {max_tokens} tokens"
    )

    model = build_encoder(
        config,
        source.weight,
        quantization,
        pooling,
        normalize,
        on_layer=lambda i: progress.step(i, config.layers, "converted layer"),
    )
    tokenizer = Tokenizer.from_str(source.tokenizer_json())
    tokenizer.no_padding()  # the embedder pads each batch to its longest row
    tokenizer.enable_truncation(max_tokens)
    tokenizer.save(str(tmp / "tokenizer.json"))
    EncoderConfig(
        model=config,
        quantization=quantization,
        pooling=pooling,
        normalize=normalize,
        max_tokens=max_tokens,
        pad_id=source.pad_id(),
    ).write(tmp)
    files = {
        str(p.relative_to(source_path)): {"sha256": file_digest(p)}
        for p in sorted(source_path.rglob("*"))
        if p.is_file()
    }
    parameters = sum(int(np.prod(t.shape)) for t in source.tensors())
    return model, {
        "source": {"kind": "sentence-transformers", "sha256": content_digest(files)},
        "parameters": parameters,
    }
