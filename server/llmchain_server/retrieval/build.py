"""`llmchain index build`: documents → chunks → vectors (the embedding model) → a Faiss index
and a BM25 index, in an index folder (index_folder.py). The folder appears under its final name
only when complete, and a folder already built from the same corpus, model, chunking and kind
is reused, not rebuilt: the operator's Job runs this once per corpus digest."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np
from tokenizers import Tokenizer

from llmchain_server.engine.embedder import Embedder
from llmchain_server.model.locks import locked
from llmchain_server.model.manifest import content_digest, file_digest
from llmchain_server.model.progress import Progress
from llmchain_server.retrieval.chunking import Chunking, chunk_spans
from llmchain_server.retrieval.documents import Corpus, read_corpus
from llmchain_server.retrieval.index_folder import (
    BM25,
    CHUNKS,
    FORMAT,
    KINDS,
    MANIFEST,
    VECTORS,
    intact,
    read_index_manifest,
)

FLAT_UP_TO = 50_000
"""`auto` builds a flat (exact) index up to this many chunks, IVF above. Measured by
bench/retrieval.py (one query, one thread, AMD EPYC): flat at 100,000 vectors answers in 6.3 ms
(NumPy brute force 9.3 ms), IVF in 0.96 ms with recall@10 1.000 (a 12 s build), HNSW (M 32,
efSearch 128) in 0.35 ms but with recall@10 0.54 on the same clustered vectors."""
EMBED_BATCH = 256
DEFAULT_CHUNKING = Chunking()


class IndexBuildError(RuntimeError):
    """The index cannot be built; the message names the problem."""


def build_index(
    documents: Path,
    embedding_model: Path,
    out: Path,
    chunking: Chunking = DEFAULT_CHUNKING,
    kind: str = "auto",
    build_digest: str | None = None,
    expected_corpus: str | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the index folder `out`; returns its manifest. `expected_corpus`: the
    corpus digest the caller (the operator, from the ConfigMaps it read) built `build_digest`
    from; documents with another digest are refused, never indexed under that build digest."""
    progress = Progress("build", label="index")
    if kind not in KINDS:
        raise IndexBuildError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    embedder = Embedder(embedding_model, provider="cpu")
    try:
        chunking.check(embedder.max_tokens)
        corpus = read_corpus(documents)
    except ValueError as e:
        raise IndexBuildError(str(e)) from None
    if expected_corpus is not None and corpus.digest != expected_corpus:
        raise IndexBuildError(
            f"the documents in {documents} have the corpus digest {corpus.digest}, not "
            f"{expected_corpus}: they changed after the build was asked for (the operator asks "
            "for a build of the new ones)"
        )
    for skipped in corpus.skipped:
        progress.say(f"skipped {skipped.source}: it {skipped.reason}")
    if not corpus.documents:
        raise IndexBuildError(f"no usable document in {documents} ({len(corpus.skipped)} skipped)")
    wanted = {
        "corpusDigest": corpus.digest,
        "embeddingModelDigest": embedder.digest,
        "chunking": {"size": chunking.size, "overlap": chunking.overlap},
        "requestedKind": kind,
        "buildDigest": build_digest,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".{out.name}.lock"):
        old = read_index_manifest(out)
        if (
            old is not None
            and all(old.data.get(k) == v for k, v in wanted.items())
            and intact(out, old)
        ):
            progress.say(f"reused {out} ({old.digest}): same corpus, model, chunking and kind")
            return old.data
        if out.exists() and (out.is_file() or (any(out.iterdir()) and old is None)):
            raise IndexBuildError(f"--out {out} exists and is not an index folder; choose another")
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            manifest = _build_into(tmp, corpus, embedder, embedding_model, chunking, kind, progress)
            manifest.update(wanted)
            _write_manifest(tmp, manifest)
            previous = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(previous, ignore_errors=True)  # a crash's leftover (Jobs run as pid 1)
            if out.exists():
                os.replace(out, previous)
            os.replace(tmp, out)
            shutil.rmtree(previous, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    progress.say(
        f"wrote {out}: {manifest['documents']} documents, {manifest['chunks']} chunks, "
        f"{manifest['kind']} index, {manifest['digest']}"
    )
    return manifest


def _build_into(
    tmp: Path,
    corpus: Corpus,
    embedder: Embedder,
    model: Path,
    chunking: Chunking,
    kind: str,
    progress: Progress,
) -> dict[str, Any]:
    splitter = Tokenizer.from_file(str(model / "tokenizer.json"))
    splitter.no_truncation()
    chunks: list[dict[str, Any]] = []
    for document in corpus.documents:
        for start, end in chunk_spans(document.text, splitter, chunking):
            chunks.append(
                {
                    "source": document.source,
                    "start": start,
                    "end": end,
                    "text": document.text[start:end],
                }
            )
    if not chunks:
        raise IndexBuildError("the documents hold no text to index (no token in any of them)")
    progress.say(f"{len(corpus.documents)} documents, {len(chunks)} chunks; embedding them")
    vectors = np.empty((len(chunks), embedder.dimensions), np.float32)
    started = time.monotonic()
    for first in range(0, len(chunks), EMBED_BATCH):
        batch = chunks[first : first + EMBED_BATCH]
        tokens = embedder.tokenize([c["text"] for c in batch])
        vectors[first : first + len(batch)] = embedder.embed([t.ids for t in tokens])
        progress.step(first + len(batch), len(chunks), "embedded chunks")
    seconds = time.monotonic() - started
    faiss.normalize_L2(vectors)  # inner product is cosine whether the model normalises or not
    chosen = kind if kind != "auto" else ("flat" if len(chunks) <= FLAT_UP_TO else "ivf")
    index = make_index(vectors, chosen)
    faiss.write_index(index, str(tmp / VECTORS))
    with (tmp / CHUNKS).open("w") as f:
        for chunk in chunks:
            f.write(json.dumps(chunk, ensure_ascii=False) + "\n")
    keywords = bm25s.BM25()
    keywords.index(
        bm25s.tokenize([c["text"] for c in chunks], stopwords="en", show_progress=False),
        show_progress=False,
    )
    keywords.save(str(tmp / BM25))
    return {
        "format": FORMAT,
        "kind": chosen,
        "documents": len(corpus.documents),
        "chunks": len(chunks),
        "dimensions": embedder.dimensions,
        "skipped": [{"source": s.source, "reason": s.reason} for s in corpus.skipped],
        "embeddingSeconds": round(seconds, 3),
    }


def make_index(vectors: np.ndarray, kind: str) -> Any:
    """A Faiss index of normalised vectors under inner product (cosine similarity)."""
    n, d = vectors.shape
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:  # ivf: 4 sqrt(n) lists, at least 39 training points each (Faiss' minimum)
        lists = max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, lists // 8)
    index.add(vectors)
    return index


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    files = {
        str(p.relative_to(folder)): {"sha256": file_digest(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest["files"] = files
    manifest["digest"] = content_digest(files)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


__all__ = ["FLAT_UP_TO", "IndexBuildError", "build_index", "make_index"]
