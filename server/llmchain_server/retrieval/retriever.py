"""Search an index folder: the query embedded by the served embedding model (batched with other
requests' inputs), the nearest chunks by cosine similarity (Faiss), by BM25 keywords (bm25s), or
both fused by reciprocal rank. An index built by another embedding model is refused at load: its
vectors would mean nothing to this model's queries."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np

from llmchain_server.dataplane.embeddings import Embeddings
from llmchain_server.retrieval.index_folder import BM25, CHUNKS, VECTORS, IndexManifest, intact

log = logging.getLogger(__name__)

MODES = ("dense", "bm25", "hybrid")
RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack et al.): a chunk scores sum 1 / (60 + rank)."""
CANDIDATES = 4
"""Hybrid search fuses each ranking's top `CANDIDATES * k`."""


class IndexMismatch(ValueError):
    """The index was built by another embedding model, or its files are not what it lists."""


@dataclass(frozen=True)
class Passage:
    text: str
    source: str
    score: float
    """What ranked it: cosine similarity (dense), BM25 (bm25) or the fused rank score (hybrid)."""
    similarity: float
    """Cosine similarity to the query, whatever the mode."""

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 6),
        }


@dataclass(frozen=True)
class Found:
    passages: list[Passage]
    query_truncated: bool
    """The query was longer than the embedding model's longest input: its beginning was used."""


class Retriever:
    def __init__(self, folder: Path, embeddings: Embeddings) -> None:
        self.folder = folder
        self.manifest = IndexManifest.read(folder)
        if self.manifest.model_digest != embeddings.embedder.digest:
            raise IndexMismatch(
                f"index {folder} was built with embedding model {self.manifest.model_digest}; "
                f"this server's is {embeddings.embedder.digest}: rebuild the index with it"
            )
        if not intact(folder, self.manifest):
            raise IndexMismatch(f"index {folder}: its files do not match its manifest")
        self.embeddings = embeddings
        faiss.omp_set_num_threads(1)  # one query at a time: threads only cost it (bench)
        self.index = faiss.read_index(str(folder / VECTORS))
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()  # reconstruct() for similarities of BM25 hits
        with (folder / CHUNKS).open() as f:
            self.chunks: list[dict[str, Any]] = [json.loads(line) for line in f]
        self.keywords = bm25s.BM25.load(str(folder / BM25))
        self._lock = asyncio.Lock()  # Faiss and bm25s searches, one at a time, off the loop
        log.info(
            "Loaded index %s (%s): %d chunks of %d documents, %s",
            folder.name,
            self.manifest.digest,
            len(self.chunks),
            self.manifest.documents,
            self.manifest.kind,
        )

    async def search(
        self, query: str, k: int, threshold: float | None = None, mode: str = "dense"
    ) -> Found:
        embedded = await self.embeddings.embed([query])
        vector = np.array(embedded.vectors[:1], np.float32)
        faiss.normalize_L2(vector)  # as the index's vectors: inner product is cosine
        async with self._lock:
            passages = await asyncio.to_thread(self._search, query, vector, k, mode)
        if threshold is not None:
            passages = [p for p in passages if p.similarity >= threshold]
        return Found(passages, bool(embedded.truncated))

    def _search(self, query: str, vector: np.ndarray, k: int, mode: str) -> list[Passage]:
        k = min(k, len(self.chunks))
        wide = min(len(self.chunks), k * CANDIDATES)
        if mode == "dense":
            ranked = [(i, s) for i, s in self._dense(vector, k)]
        elif mode == "bm25":
            ranked = self._bm25(query, k)
        else:
            fused: dict[int, float] = {}
            for ranking in (self._dense(vector, wide), self._bm25(query, wide)):
                for rank, (i, _) in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
        return [self._passage(i, score, vector) for i, score in ranked]

    def _dense(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        scores, ids = self.index.search(vector, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not any(tokens.ids):
            return []
        ids, scores = self.keywords.retrieve(tokens, k=k, show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def _passage(self, i: int, score: float, vector: np.ndarray) -> Passage:
        chunk = self.chunks[i]
        similarity = float(np.dot(self.index.reconstruct(i), vector[0]))
        return Passage(chunk["text"], chunk["source"], score, similarity)
