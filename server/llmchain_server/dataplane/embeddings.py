"""Embeddings for `/v1/embeddings` (and, later, retrieval steps): inputs checked and tokenized,
then run by the engine's Embedder. Inputs of concurrent requests are coalesced: while one batch
runs, the requests that arrive queue up, and the next run takes them all (up to `max_batch`
inputs), so many small requests cost few model runs."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from llmchain_server.contract import counter
from llmchain_server.engine.embedder import Embedder, Tokens, Vectors
from llmchain_server.errors import InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)

MAX_INPUTS = 2048
"""Inputs per request (OpenAI's limit too)."""
MAX_BATCH = 256
"""Inputs per model run, across requests."""
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EmbeddingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.inputs = Counter(
            counter("llmchain_embedding_inputs_total"), "Inputs embedded.", registry=registry
        )
        self.tokens = Counter(
            counter("llmchain_embedding_tokens_total"),
            "Tokens embedded, special tokens included.",
            registry=registry,
        )
        self.truncated = Counter(
            counter("llmchain_embedding_truncated_inputs_total"),
            "Inputs longer than the embedding model's longest input, cut to it.",
            registry=registry,
        )
        self.batch = Histogram(
            "llmchain_embedding_batch_inputs",
            "Inputs per embedding model run (concurrent requests share runs).",
            buckets=BATCH_SIZES,
            registry=registry,
        )


@dataclass
class Embedded:
    """A request's vectors (input order), its token count and which inputs were truncated."""

    vectors: Vectors
    tokens: int
    truncated: list[int]


@dataclass
class _Job:
    rows: list[list[int]]
    done: asyncio.Future[Vectors] = field(repr=False)


class Embeddings:
    """The served embedding model: `name` is what requests ask for."""

    def __init__(self, embedder: Embedder, name: str, metrics: EmbeddingMetrics) -> None:
        self.embedder = embedder
        self.name = name
        self.metrics = metrics
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ModelNotFound(
                f"model {name!r} is not served here; this server's embedding model is "
                f"{self.name!r}",
                "model",
            )

    async def embed(
        self,
        texts: list[str] | None = None,
        token_lists: list[list[int]] | None = None,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embedded:
        """Vectors for texts or token id lists (the texts' tokens without special ones)."""
        count = len(texts if texts is not None else token_lists or [])
        if not 0 < count <= MAX_INPUTS:
            raise InvalidRequest(f"input must hold 1 to {MAX_INPUTS} items, not {count}", "input")
        if dimensions is not None and not 0 < dimensions <= self.dimensions:
            raise InvalidRequest(
                f"dimensions must be within 1..{self.dimensions} for {self.name}, not {dimensions}",
                "dimensions",
            )
        tokens = await asyncio.to_thread(self._tokens, texts, token_lists)
        cut = [i for i, t in enumerate(tokens) if t.truncated]
        if cut and not truncate:
            raise InvalidRequest(
                f"input[{cut[0]}] is longer than {self.name}'s {self.embedder.max_tokens} "
                "tokens (send truncate: true to embed its beginning)",
                "input",
            )
        vectors = await self._run([t.ids for t in tokens])
        if dimensions is not None and dimensions < self.dimensions:
            vectors = _shortened(vectors, dimensions, self.embedder.config.normalize)
        used = sum(len(t.ids) for t in tokens)
        self.metrics.inputs.inc(count)
        self.metrics.tokens.inc(used)
        self.metrics.truncated.inc(len(cut))
        return Embedded(vectors, used, cut)

    def _tokens(self, texts: list[str] | None, token_lists: list[list[int]] | None) -> list[Tokens]:
        if texts is not None:
            for i, text in enumerate(texts):
                if not text.strip():
                    raise InvalidRequest(f"input[{i}] is empty", "input")
            return self.embedder.tokenize(texts)
        tokens = []
        for i, ids in enumerate(token_lists or []):
            if not ids:
                raise InvalidRequest(f"input[{i}] is an empty list of tokens", "input")
            try:
                tokens.append(self.embedder.wrap(ids))
            except ValueError as e:
                raise InvalidRequest(f"input[{i}]: {e}", "input") from None
        return tokens

    async def _run(self, rows: list[list[int]]) -> Vectors:
        if self._worker is None or self._worker.done():  # first use, or after close()
            self._worker = asyncio.create_task(self._serve(), name="embeddings")
        job = _Job(rows, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.done

    def _next_jobs(self) -> list[_Job]:
        """The queued jobs that fit one run (at least one), callers gone skipped."""
        jobs: list[_Job] = []
        size = 0
        while self._pending and (not jobs or size + len(self._pending[0].rows) <= MAX_BATCH):
            job = self._pending.popleft()
            if not job.done.cancelled():
                jobs.append(job)
                size += len(job.rows)
        return jobs

    async def _serve(self) -> None:
        """Run queued jobs, as many together as fit one batch, until cancelled; then every job
        it holds or that waits fails instead of waiting forever."""
        jobs: list[_Job] = []
        try:
            while True:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                jobs = self._next_jobs()
                if jobs:
                    await self._run_jobs(jobs)
        except BaseException:
            for job in [*jobs, *self._pending]:
                if not job.done.done():
                    job.done.set_exception(RuntimeError("the embedding worker stopped"))
            self._pending.clear()
            raise

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        rows = [r for j in jobs for r in j.rows]
        self.metrics.batch.observe(len(rows))
        try:
            vectors = await asyncio.to_thread(self.embedder.embed, rows)
        except Exception as e:  # every waiting request gets the failure, the worker goes on
            log.exception("Embedding run failed")
            for j in jobs:
                if not j.done.done():
                    j.done.set_exception(e)
            return
        start = 0
        for j in jobs:
            if not j.done.done():
                j.done.set_result(vectors[start : start + len(j.rows)])
            start += len(j.rows)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker


def _shortened(vectors: Vectors, dimensions: int, normalize: bool) -> Vectors:
    """The first `dimensions` components, normalised again when the model normalises."""
    short = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        norms = np.linalg.norm(short, axis=1, keepdims=True)
        short = short / np.maximum(norms, 1e-12)
    return short.astype(np.float32)
