"""The dataplane's core: requests into engine terms (prompts and their limits, sampling
parameters) and the answer back as a token stream with its metrics, replayed from the response
cache or generated and stored. Routes and chains go through it; neither touches the engine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from llmchain_server.dataplane.admission import Admission
from llmchain_server.dataplane.cache import ResponseCache
from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.dataplane.settings import ServerSettings
from llmchain_server.engine import Chunk, ContextLengthError, Engine, Grammar, SamplingParams
from llmchain_server.engine.constraints import Matcher
from llmchain_server.engine.tokenizer import ChatTemplateError, ModelTokenizer
from llmchain_server.errors import (
    Draining,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    PromptTooLong,
)

_T = TypeVar("_T")
PROMPT_THREADS = min(4, os.cpu_count() or 1)
"""Threads that render and tokenize prompts (the tokenizer releases the GIL while it works)."""


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
        self._engine = engine
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(settings.max_concurrency, metrics)
        self._prompt_threads = ThreadPoolExecutor(PROMPT_THREADS, "llmchain-prompt")

    @property
    def model_ready(self) -> bool:
        """The engine has loaded and warmed up the model."""
        return self._engine.ready

    # -- prompts -------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise ModelNotFound(
                f"model {name!r} is not served here; this server "
                f"serves {self.settings.model_name!r}",
                param="model",
            )

    def strip_special(self, text: str) -> str:
        """User text without special-token strings, so it cannot forge chat turns."""
        return self._engine.tokenizer.strip_special(text)

    def render_chat(self, messages: Sequence[Mapping[str, str]], field: str) -> str:
        """The model's chat template over `messages` (dicts of role and content)."""
        try:
            return self._engine.tokenizer.render_chat(messages)
        except ChatTemplateError as e:
            raise InvalidRequest(str(e), param=field) from None

    async def chat_prompt(
        self, messages: Sequence[tuple[str, str]], field: str = "messages"
    ) -> list[int]:
        """A chat request's prompt from its (role, text) messages: the texts lose their
        special-token strings, `developer` is the system role. Made off the event loop."""
        self._check_chars(sum(len(text) for _, text in messages), field)
        return await self.off_loop(self._chat_prompt, messages, field)

    async def text_prompt(self, text: str, field: str) -> list[int]:
        """The token ids of `text`, within the prompt limits; errors name the request `field`.
        Tokenized off the event loop."""
        self._check_chars(len(text), field)
        return await self.off_loop(self._encode, text, field)

    async def fitted_prompt(
        self,
        render: Callable[[Sequence[Any]], str],
        history: Sequence[Any],
        params: SamplingParams,
        field: str,
    ) -> tuple[list[int], int]:
        """The token ids of `render(turns)` for the newest turns of `history` that fit (the
        prompt limits and the context with max_tokens), and how many of the oldest turns were
        left out. Each turn is measured once; the prompt is rendered and tokenized again only
        when the estimate fell short, not once per turn left out. Off the event loop."""
        return await self.off_loop(self._fit_history, render, list(history), params, field)

    # -- the prompt threads ----------------------------------------------------------------------
    async def off_loop(self, work: Callable[..., _T], *args: Any) -> _T:
        """`work(*args)` in the prompt threads: rendering, tokenizing or cleaning a long text
        takes long enough (a second for 1 MB) to stall every request, and /healthz, on the
        loop. Callers hold an admission place, so at most max_concurrency of these are queued;
        callers check the character cap first, so none of them is unbounded."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prompt_threads, functools.partial(work, *args))

    def _check_chars(self, length: int, field: str) -> None:
        """The character cap, checked before anything is tokenized."""
        limit = self.settings.max_prompt_chars
        if length > limit:
            raise PromptTooLong(
                f"{field} has {length} characters; the limit is {limit}", param=field
            )

    def _chat_prompt(self, messages: Sequence[tuple[str, str]], field: str) -> list[int]:
        turns = [
            {
                "role": role if role != "developer" else "system",
                "content": self.strip_special(text),
            }
            for role, text in messages
        ]
        return self._encode(self.render_chat(turns, field), field)

    def _encode(self, text: str, field: str) -> list[int]:
        self._check_chars(len(text), field)
        return self._checked(self._engine.tokenizer.encode(text), field)

    def _checked(self, ids: list[int], field: str) -> list[int]:
        if not ids:
            raise InvalidRequest(f"{field} is empty", param=field)
        if len(ids) > self.settings.max_prompt_tokens:
            raise PromptTooLong(
                f"{field} has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                param=field,
            )
        return ids

    def _fit_history(
        self,
        render: Callable[[Sequence[Any]], str],
        history: list[Any],
        params: SamplingParams,
        field: str,
    ) -> tuple[list[int], int]:
        budget = min(self.settings.max_prompt_tokens, self._engine.context - params.max_tokens)
        costs: list[tuple[int, int]] | None = None  # (characters, tokens) of each turn
        dropped = 0
        while True:
            text = render(history[dropped:])
            excess_chars = len(text) - self.settings.max_prompt_chars
            excess = 0
            if excess_chars <= 0:
                ids = self._engine.tokenizer.encode(text)
                excess = len(ids) - budget
                if excess <= 0 or dropped == len(history):
                    self.fit(self._checked(ids, field), params, field)  # raises when too long
                    return ids, dropped
            elif dropped == len(history):
                self._check_chars(len(text), field)  # raises
            costs = costs or _turn_costs(self._engine.tokenizer, history)
            unit, needed = (0, excess_chars) if excess_chars > 0 else (1, excess)
            covered = 0
            while dropped < len(history) and (covered == 0 or covered < needed):
                covered += max(1, costs[dropped][unit])
                dropped += 1

    def fit(self, prompt: list[int], params: SamplingParams, field: str) -> None:
        """Raises PromptTooLong naming `field` when the prompt and max_tokens exceed the
        context: checked before a stream starts, so that is an error answer, not a cut stream."""
        try:
            self._engine.check(prompt, params)
        except ContextLengthError as e:
            raise PromptTooLong(str(e), param=field) from None

    # -- sampling ------------------------------------------------------------------------------
    def params(
        self,
        max_tokens: int | None = None,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        grammar: Grammar | None = None,
    ) -> SamplingParams:
        """A request's sampling; what it leaves unset comes from the model folder's defaults."""
        defaults = self._engine.defaults
        limit = self.settings.max_tokens_limit  # a default above it is clamped, not refused
        wanted = max_tokens if max_tokens is not None else min(defaults.max_tokens, limit)
        if wanted > self.settings.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens is {wanted}; the limit is {self.settings.max_tokens_limit}",
                param="max_tokens",
            )
        try:
            return SamplingParams(
                max_tokens=wanted,
                temperature=defaults.temperature if temperature is None else temperature,
                top_p=defaults.top_p if top_p is None else top_p,
                top_k=defaults.top_k if top_k is None else top_k,
                seed=seed,
                stop=stop,
                grammar=grammar,
            )
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    def check_constraint(self, params: SamplingParams) -> None:
        """Raises GrammarError when the request's grammar does not compile or cannot complete
        within max_tokens (at start: it may compile for a second)."""
        self._engine.constrain(params)

    async def constrain(self, params: SamplingParams) -> Matcher | None:
        """The matcher of a constrained request (None for a free one), compiled off the event
        loop. Raises GrammarError (an InvalidRequest) for a schema or grammar that does not
        compile or cannot complete within max_tokens: call it before a stream starts."""
        if params.grammar is None:
            return None
        return await self.off_loop(self._engine.constrain, params)

    # -- generation ----------------------------------------------------------------------------
    async def stream(
        self, prompt: Sequence[int], params: SamplingParams, matcher: Matcher | None = None
    ) -> AsyncIterator[Chunk]:
        """The answer's chunks: replayed from the response cache, or generated (and stored).
        `matcher`: a constrained request's, from `constrain` (made here when not given)."""
        cache = self.cache if self.cache is not None and self.cache.cacheable(params) else None
        if cache is None:
            async for chunk in self._generate(prompt, params, matcher):
                yield chunk
            return
        key = cache.key(prompt, params)
        cached = await cache.get(key)
        if cached is not None:
            for chunk in cached:
                yield chunk
            return
        produced: list[Chunk] = []
        async for chunk in self._generate(prompt, params, matcher):
            produced.append(chunk)
            yield chunk
        if produced and produced[-1].finish_reason in ("stop", "length"):
            await cache.put(key, produced)

    async def _generate(
        self, prompt: Sequence[int], params: SamplingParams, matcher: Matcher | None
    ) -> AsyncIterator[Chunk]:
        """The engine's chunks, timing the first token and the gaps between tokens."""
        started = time.monotonic()
        last = None
        if matcher is None:
            matcher = await self.constrain(params)
        generation = self._engine.generate_async(list(prompt), params, matcher)
        try:
            async for chunk in self._until_cut(aiter(generation)):
                now = time.monotonic()
                if chunk.token_id is not None:
                    if last is None:
                        self.metrics.ttft.observe(now - started)
                    else:
                        self.metrics.tpot.observe(now - last)
                    last = now
                if chunk.finish_reason == "error":
                    raise GenerationFailed("generation failed")
                yield chunk
        finally:
            generation.cancel()  # a consumer that stopped listening frees the engine's slot

    async def _until_cut(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """`chunks` until the server cuts what still runs at the end of its grace period; then
        `Draining`, which the routes answer as an error (in a stream: its error event)."""
        cut = asyncio.ensure_future(self.admission.cut.wait())
        try:
            while True:
                step = asyncio.ensure_future(anext(chunks))
                await asyncio.wait((step, cut), return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()  # the generation's own cleanup cancels it in the engine
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    raise Draining("the server shut down before the answer was complete")
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            cut.cancel()

    async def complete(
        self, prompt: Sequence[int], params: SamplingParams, matcher: Matcher | None = None
    ) -> Result:
        """The whole answer at once."""
        parts: list[str] = []
        final: Chunk | None = None
        async for chunk in self.stream(prompt, params, matcher):
            parts.append(chunk.text)
            final = chunk
        assert final is not None and final.finish_reason is not None
        return Result(
            "".join(parts), final.finish_reason, final.prompt_tokens, final.completion_tokens
        )


def _turn_costs(tokenizer: ModelTokenizer, history: Sequence[Any]) -> list[tuple[int, int]]:
    """What each remembered turn adds to a prompt, about: the characters and tokens of the
    texts in it (all turns tokenized in one batch)."""
    texts = ["\n".join(_strings(turn)) for turn in history]
    return [(len(t), len(ids)) for t, ids in zip(texts, tokenizer.encode_many(texts), strict=True)]


def _strings(value: Any) -> list[str]:
    """The strings (and numbers, as text) in a JSON value, without recursion."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif item is not None:
            found.append(str(item))
    return found
