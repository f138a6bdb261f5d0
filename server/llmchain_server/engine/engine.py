"""The generation engine: loads a model folder and serves generations through the scheduler.
It knows nothing of HTTP, Redis or chains (see DESIGN.md, "Chain server")."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from prometheus_client import CollectorRegistry

from llmchain_server import contract
from llmchain_server.engine.constraints import Constraints, Matcher
from llmchain_server.engine.cpu import cpu_kernels
from llmchain_server.engine.metrics import EngineCollector
from llmchain_server.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from llmchain_server.engine.providers import DeviceOptions
from llmchain_server.engine.request import Generation
from llmchain_server.engine.runner import ModelRunner
from llmchain_server.engine.sampling import SamplingParams
from llmchain_server.engine.scheduler import EngineStats, QueueFull, Scheduler
from llmchain_server.engine.session import cpu_threads, create_session
from llmchain_server.engine.tokenizer import ModelTokenizer
from llmchain_server.errors import PromptTooLong
from llmchain_server.model.folder import GenerationDefaults, ModelConfig, open_folder

log = logging.getLogger(__name__)


_RECIPES_WITHOUT_CHUNK_LOGITS = frozenset({"llmchain-model-build/1", "llmchain-model-build/2"})
"""Build recipes whose graphs cannot return a prompt chunk's last logits alone."""
_RECIPES_WITH_ONE_HEAD_ROW = _RECIPES_WITHOUT_CHUNK_LOGITS | {"llmchain-model-build/3"}
"""Build recipes whose output head computes one row per sequence for last-only logits."""


class ContextLengthError(PromptTooLong, ValueError):
    """The prompt plus the requested tokens do not fit the context."""


@dataclass(frozen=True)
class EngineSettings:
    provider: str = "auto"
    max_batch: int = 8
    max_waiting: int = 64
    context: int = 2048
    threads: int | None = None
    verify_checksums: bool = True
    prefill_chunk: int = 256
    """Prompt tokens prefilled between two decode steps while other streams run."""
    prefix_cache_tokens: int = 4096
    """Tokens of prompt prefixes kept for reuse (45 KiB each for SmolLM2-135M); 0 for none."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        chunk = int(env.get(contract.ENV_PREFILL_CHUNK, "256"))
        if chunk < 2:
            raise ValueError(f"{contract.ENV_PREFILL_CHUNK} must be at least 2 (got {chunk})")
        return cls(
            provider=env.get(contract.ENV_EXECUTION_PROVIDER, "auto"),
            max_batch=int(env.get(contract.ENV_MAX_BATCH_SIZE, "8")),
            max_waiting=int(env.get(contract.ENV_MAX_QUEUE, "64")),
            context=int(env.get(contract.ENV_MAX_CONTEXT, "2048")),
            threads=cpu_threads(env),
            prefill_chunk=chunk,
            prefix_cache_tokens=int(env.get(contract.ENV_PREFIX_CACHE_TOKENS, "4096")),
        )


class Engine:
    def __init__(
        self,
        folder: Path,
        settings: EngineSettings | None = None,
        available_providers: Sequence[str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """Load `folder`. Metrics go to `registry` (the server passes its own; default: one
        private to this engine, see `self.registry`)."""
        self.settings = settings or EngineSettings.from_env()
        started = time.monotonic()
        model = open_folder(folder, self.settings.verify_checksums)
        config = model.config
        self.manifest = model.manifest
        self.digest = model.manifest.digest
        self.quantization = config.quantization
        self.tokenizer = ModelTokenizer(model.tokenizer, config.special, model.chat_template)
        self.constraints = Constraints(
            model.tokenizer, config.model.vocab, self.tokenizer.eos_ids_end_of_turn_first()
        )
        """Grammars compiled against this tokenizer (constrained decoding)."""
        self.session, self.provider = self._open_session(model.model, available_providers)
        self.kernels = cpu_kernels().family if self.provider == "cpu" else self.provider
        """The kernel family running the model: the CPU's MLAS family (avx2, avx512vnni, ...)
        on the CPU provider, else the provider; fidelity and speed depend on it."""
        self.context = min(self.settings.context, config.model.context)
        self.runner = self._runner(config, model.manifest.builder)
        # A graph that cannot give a chunk's last logits alone would give them for a chunk's
        # every position (another output head kernel): whole prompts only, no reuse.
        chunks = self.runner.chunk_last_only
        self.prefix_cache = self._prefix_cache(config) if chunks else None
        self.scheduler = self._scheduler(config)
        self.defaults = _sampling_defaults(config.generation, self.context)
        """Sampling for requests that set nothing (the model folder's generation defaults)."""
        self.load_seconds = time.monotonic() - started
        self.registry = self._register_metrics(registry)
        self._ready = False
        self._log_loaded()

    def _open_session(
        self, model: Path, available_providers: Sequence[str] | None
    ) -> tuple[ort.InferenceSession, str]:
        return create_session(
            model,
            self.settings.provider,
            self.settings.threads,
            DeviceOptions.from_env(),
            available_providers,
        )

    def _runner(self, config: ModelConfig, builder: str) -> ModelRunner:
        """The decoder over a KV cache of `max_batch` sequences of the context's length."""
        shape = config.model
        slots = self.settings.max_batch + 1  # one spare slot for the batch-invariance pad row
        return ModelRunner(
            self.session,
            shape.layers,
            shape.kv_heads,
            shape.head_dim,
            shape.vocab,
            slots,
            self.context,
            last_only_chunks=builder not in _RECIPES_WITHOUT_CHUNK_LOGITS,
            head_rows=1 if builder in _RECIPES_WITH_ONE_HEAD_ROW else 2,
        )

    def _prefix_cache(self, config: ModelConfig) -> PrefixCache | None:
        blocks = self.settings.prefix_cache_tokens // BLOCK_TOKENS
        if blocks < 1:
            return None
        shape = config.model
        return PrefixCache(shape.layers, shape.kv_heads, shape.head_dim, blocks)

    def _scheduler(self, config: ModelConfig) -> Scheduler:
        # MatMulNBits computes one row with another kernel than several, at every accuracy
        # level (level 0's fused one-row kernel, level 4's on AVX2): quantized builds decode at
        # least two rows, so an output does not depend on the batch it ran in.
        min_batch = 2 if config.quantized else 1
        return Scheduler(
            self.runner,
            self.tokenizer.eos_ids,
            self.settings.max_batch,
            self.settings.max_waiting,
            min_batch,
            prefill_chunk=self.settings.prefill_chunk
            if self.runner.chunk_last_only
            else self.context,
            prefix_cache=self.prefix_cache,
        )

    def _register_metrics(self, registry: CollectorRegistry | None) -> CollectorRegistry:
        registry = registry if registry is not None else CollectorRegistry()
        registry.register(
            EngineCollector(
                lambda: self.scheduler.stats,
                lambda: None if self.prefix_cache is None else self.prefix_cache.stats,
                self.digest,
                self.quantization,
                self.provider,
                self.kernels,
            )
        )
        return registry

    def _log_loaded(self) -> None:
        log.info(
            "Loaded model %s (%s, %s, %s kernels) in %.1f s; "
            "KV cache %.0f MiB for %d sequences of %d tokens; prefix cache up to %.0f MiB",
            self.digest[:19],
            self.quantization,
            self.provider,
            self.kernels,
            self.load_seconds,
            self.runner.cache.nbytes / 2**20,
            self.settings.max_batch,
            self.context,
            0 if self.prefix_cache is None else self.prefix_cache.nbytes / 2**20,
        )

    def start(self, warm_up: bool = True) -> None:
        self.scheduler.start()
        if warm_up:
            chunks = list(
                self.generate(self.tokenizer.encode("Hello"), SamplingParams(max_tokens=2))
            )
            if chunks[-1].error:
                raise RuntimeError(f"the model failed its warm-up: {chunks[-1].error}")
        self._ready = True

    def stop(self) -> None:
        self._ready = False
        self.scheduler.stop()

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stats(self) -> EngineStats:
        return self.scheduler.stats

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise ValueError("the prompt is empty")
        vocab = self.runner.vocab
        if any(not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt token ids must be between 0 and {vocab - 1}")
        if len(prompt) + params.max_tokens > self.context:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens and max_tokens is {params.max_tokens}; "
                f"together they exceed the context of {self.context} tokens"
            )

    def constrain(self, params: SamplingParams) -> Matcher | None:
        """The grammar's matcher for a request `params.grammar` constrains (None when none
        does). Raises GrammarError (an InvalidRequest) when the grammar does not compile or
        cannot complete within max_tokens. Compiling a new grammar takes milliseconds to a
        second: off the event loop."""
        if params.grammar is None:
            return None
        return self.constraints.matcher(params.grammar, params.max_tokens)

    def generate(
        self, prompt: list[int], params: SamplingParams, matcher: Matcher | None = None
    ) -> Generation:
        """Submit a request; iterate the result for chunks. Raises QueueFull when full.
        `matcher`: from `constrain(params)`, made here when not given."""
        self.check(prompt, params)
        matcher = matcher if matcher is not None else self.constrain(params)
        g = Generation(prompt, params, self.tokenizer, matcher=matcher)
        self.scheduler.submit(g)
        return g

    def generate_async(
        self, prompt: list[int], params: SamplingParams, matcher: Matcher | None = None
    ) -> Generation:
        """As generate, for `async for` inside an event loop (make a constrained request's
        `matcher` off the loop first)."""
        self.check(prompt, params)
        if params.grammar is not None and matcher is None:
            raise ValueError("a constrained request needs its matcher (Engine.constrain)")
        loop = asyncio.get_running_loop()
        g = Generation(prompt, params, self.tokenizer, loop, matcher)
        self.scheduler.submit(g)
        return g


def _sampling_defaults(generation: GenerationDefaults, context: int) -> SamplingParams:
    """The folder's generation defaults as sampling parameters, `max_tokens` at most half the
    context."""
    return SamplingParams(
        max_tokens=max(1, min(generation.max_tokens, context // 2)),
        temperature=generation.temperature,
        top_p=generation.top_p,
        top_k=generation.top_k,
    )


__all__ = ["ContextLengthError", "Engine", "EngineSettings", "QueueFull", "SamplingParams"]
