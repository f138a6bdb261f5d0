"""Between the routes and the engine: admission (concurrency limit, draining), prompts and
their limits, sampling parameters, and the token stream with its metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

from llmchain_server.engine import Chunk, Engine, SamplingParams
from llmchain_server.engine.tokenizer import ChatTemplateError
from llmchain_server.http.cache import ResponseCache
from llmchain_server.http.errors import APIError
from llmchain_server.http.metrics import ServerMetrics
from llmchain_server.http.schemas import ChatRequest, CompletionRequest, Sampling
from llmchain_server.http.settings import ServerSettings


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class DataPlane:
    def __init__(
        self,
        engine: Engine,
        settings: ServerSettings,
        metrics: ServerMetrics,
        cache: ResponseCache | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self.in_flight = 0
        self.draining = False

    # -- admission ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def admitted(self, places: int = 1) -> Iterator[None]:
        """Holds `places` of max_concurrency places, or refuses at once: 429 with Retry-After."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise APIError(
                503,
                "the server is shutting down",
                "service_unavailable",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        if self.in_flight + places > self.settings.max_concurrency:
            self.metrics.rejected.labels("concurrency").inc()
            raise APIError(
                429,
                f"too many requests in flight (limit "
                f"{self.settings.max_concurrency}); retry shortly",
                "rate_limit_error",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        self.in_flight += places
        self.metrics.in_flight.inc(places)
        try:
            yield
        finally:
            self.in_flight -= places
            self.metrics.in_flight.dec(places)

    def hold(self) -> Callable[[], None]:
        """A place held past the handler (streams): the returned function releases it, once."""
        admission = self.admitted()
        admission.__enter__()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.__exit__(None, None, None)

        return release

    # -- requests into engine terms ------------------------------------------------------------
    def check_model(self, request: Sampling) -> None:
        if request.model != self.settings.model_name:
            raise APIError(
                404,
                f"model {request.model!r} is not served here; this server "
                f"serves {self.settings.model_name!r}",
                "invalid_request_error",
                "model",
            )

    def chat_prompt(self, request: ChatRequest) -> list[int]:
        messages = [
            {
                "role": m.role if m.role != "developer" else "system",
                "content": self.engine.tokenizer.strip_special(m.text()),
            }
            for m in request.messages
        ]
        try:
            text = self.engine.tokenizer.render_chat(messages)
        except ChatTemplateError as e:
            raise APIError(400, str(e), param="messages") from None
        return self.limited(self.engine.tokenizer.encode(text), "messages")

    def completion_prompt(self, request: CompletionRequest) -> list[int]:
        return self.limited(self.engine.tokenizer.encode(request.text()), "prompt")

    def limited(self, ids: list[int], field: str) -> list[int]:
        if not ids:
            raise APIError(400, f"{field} is empty", param=field)
        if len(ids) > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"{field} has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                param=field,
                headers={},
            )
        return ids

    def params(self, request: Sampling, max_tokens: int | None) -> SamplingParams:
        defaults = self.engine.defaults
        wanted = max_tokens if max_tokens is not None else defaults.max_tokens
        if wanted > self.settings.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {wanted}; the limit is {self.settings.max_tokens_limit}",
                param="max_tokens",
            )
        try:
            return SamplingParams(
                max_tokens=wanted,
                temperature=defaults.temperature
                if request.temperature is None
                else request.temperature,
                top_p=defaults.top_p if request.top_p is None else request.top_p,
                top_k=defaults.top_k if request.top_k is None else request.top_k,
                seed=request.seed,
                stop=request.stops(),
            )
        except ValueError as e:
            raise APIError(400, str(e)) from None

    # -- generation --------------------------------------------------------------------------
    async def stream(self, prompt: Sequence[int], params: SamplingParams) -> AsyncIterator[Chunk]:
        """The answer's chunks: replayed from the response cache, or generated (and stored)."""
        cache = self.cache if self.cache is not None and self.cache.cacheable(params) else None
        if cache is None:
            async for chunk in self._generate(prompt, params):
                yield chunk
            return
        key = cache.key(prompt, params)
        cached = await cache.get(key)
        if cached is not None:
            for chunk in cached:
                yield chunk
            return
        produced: list[Chunk] = []
        async for chunk in self._generate(prompt, params):
            produced.append(chunk)
            yield chunk
        if produced and produced[-1].finish_reason in ("stop", "length"):
            await cache.put(key, produced)

    async def _generate(
        self, prompt: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[Chunk]:
        """The engine's chunks, timing the first token and the gaps between tokens."""
        started = time.monotonic()
        last = None
        generation = self.engine.generate_async(list(prompt), params)
        async for chunk in generation:
            now = time.monotonic()
            if chunk.token_id is not None:
                if last is None:
                    self.metrics.ttft.observe(now - started)
                else:
                    self.metrics.tpot.observe(now - last)
                last = now
            if chunk.finish_reason == "error":
                raise APIError(500, "generation failed", "server_error")
            yield chunk

    async def complete(self, prompt: Sequence[int], params: SamplingParams) -> Result:
        parts: list[str] = []
        final: Chunk | None = None
        async for chunk in self.stream(prompt, params):
            parts.append(chunk.text)
            final = chunk
        assert final is not None and final.finish_reason is not None
        return Result(
            "".join(parts), final.finish_reason, final.prompt_tokens, final.completion_tokens
        )
