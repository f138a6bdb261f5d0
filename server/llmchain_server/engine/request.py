"""One generation request as the scheduler sees it, and the stream of events it produces."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np

from llmchain_server.engine.constraints import Matcher
from llmchain_server.engine.sampling import SamplingParams
from llmchain_server.engine.stops import StopMatcher
from llmchain_server.engine.tokenizer import IncrementalDecoder, ModelTokenizer

_ids = itertools.count(1)


@dataclass(frozen=True)
class Chunk:
    """A piece of output. The last chunk of a request carries `finish_reason`
    ("stop", "length", "cancelled" or "error") and the final token counts; for a constrained
    output, `complete` says whether it matches its grammar whole (false: cut by max_tokens)."""

    text: str
    token_id: int | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    complete: bool | None = None


class Generation:
    """Handle on a submitted request: iterate it (sync or async) for chunks, or cancel it."""

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        tokenizer: ModelTokenizer,
        loop: asyncio.AbstractEventLoop | None = None,
        matcher: Matcher | None = None,
    ) -> None:
        """`matcher`: the grammar's state, when `params.grammar` constrains the output."""
        self.id = next(_ids)
        self.prompt = prompt
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.decoder = IncrementalDecoder(tokenizer, prompt[-4:])
        self.stops = StopMatcher(params.stop)
        self.matcher = matcher
        self.generated: list[int] = []
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self._cancelled = threading.Event()
        self._loop = loop
        self._async: asyncio.Queue[Chunk] | None = asyncio.Queue() if loop else None
        self._sync: queue.Queue[Chunk] = queue.Queue()

    # -- consumer side ---------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while True:
                chunk = self._sync.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self.cancel()  # a consumer that stops listening frees the slot

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        if self._async is None:
            raise RuntimeError("this generation was submitted without an event loop")
        try:
            while True:
                chunk = await self._async.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self.cancel()  # a consumer that stops listening frees the slot

    def text(self) -> str:
        return "".join(c.text for c in self)

    # -- scheduler side --------------------------------------------------------------------
    def emit(
        self, text: str, token: int | None, finish: str | None = None, error: str | None = None
    ) -> None:
        complete = None
        if finish is not None and self.matcher is not None:
            complete = self.matcher.accepting or self.matcher.done
        chunk = Chunk(text, token, finish, len(self.prompt), len(self.generated), error, complete)
        if finish is not None:
            self.finish_reason = finish
            self.finished_at = time.monotonic()
        if self._loop is not None and self._async is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancel()
        else:
            self._sync.put(chunk)
