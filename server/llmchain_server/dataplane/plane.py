"""The dataplane's core: requests into engine terms (prompts and their limits, sampling
parameters) and the answer back as a token stream with its metrics, replayed from the response
cache or generated and stored. Routes and chains go through it; neither touches the engine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from llmchain_server.dataplane.admission import Admission
from llmchain_server.dataplane.cache import ResponseCache
from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.dataplane.settings import ServerSettings
from llmchain_server.engine import Chunk, ContextLengthError, Engine, SamplingParams
from llmchain_server.engine.tokenizer import ChatTemplateError
from llmchain_server.errors import GenerationFailed, InvalidRequest, ModelNotFound, PromptTooLong


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

    def chat_prompt(
        self, messages: Sequence[tuple[str, str]], field: str = "messages"
    ) -> list[int]:
        """A chat request's prompt from its (role, text) messages: the texts lose their
        special-token strings, `developer` is the system role."""
        turns = [
            {
                "role": role if role != "developer" else "system",
                "content": self.strip_special(text),
            }
            for role, text in messages
        ]
        return self.text_prompt(self.render_chat(turns, field), field)

    def text_prompt(self, text: str, field: str) -> list[int]:
        """The token ids of `text`, within max_prompt_tokens; errors name the request `field`."""
        ids = self._engine.tokenizer.encode(text)
        if not ids:
            raise InvalidRequest(f"{field} is empty", param=field)
        if len(ids) > self.settings.max_prompt_tokens:
            raise PromptTooLong(
                f"{field} has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                param=field,
            )
        return ids

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
            )
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    # -- generation ----------------------------------------------------------------------------
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
        generation = self._engine.generate_async(list(prompt), params)
        async for chunk in generation:
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

    async def complete(self, prompt: Sequence[int], params: SamplingParams) -> Result:
        """The whole answer at once."""
        parts: list[str] = []
        final: Chunk | None = None
        async for chunk in self.stream(prompt, params):
            parts.append(chunk.text)
            final = chunk
        assert final is not None and final.finish_reason is not None
        return Result(
            "".join(parts), final.finish_reason, final.prompt_tokens, final.completion_tokens
        )
