"""The generation engine: loads a model folder and serves generations through the scheduler.
It knows nothing of HTTP, Redis or chains (see DESIGN.md, "Chain server")."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from llmchain_server.engine.cpu import cpu_kernels
from llmchain_server.engine.metrics import EngineCollector
from llmchain_server.engine.providers import DeviceOptions
from llmchain_server.engine.request import Generation
from llmchain_server.engine.runner import ModelRunner
from llmchain_server.engine.sampling import SamplingParams
from llmchain_server.engine.scheduler import EngineStats, QueueFull, Scheduler
from llmchain_server.engine.session import cpu_threads, create_session
from llmchain_server.engine.tokenizer import ModelTokenizer
from llmchain_server.errors import PromptTooLong
from llmchain_server.model.build import DEFAULT_GENERATION
from llmchain_server.model.manifest import verify

log = logging.getLogger(__name__)


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        return cls(
            provider=env.get("LLMCHAIN_EXECUTION_PROVIDER", "auto"),
            max_batch=int(env.get("LLMCHAIN_MAX_BATCH_SIZE", "8")),
            max_waiting=int(env.get("LLMCHAIN_MAX_QUEUE", "64")),
            context=int(env.get("LLMCHAIN_MAX_CONTEXT", "2048")),
            threads=cpu_threads(env),
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
        self.manifest = verify(folder, deep=self.settings.verify_checksums)
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        model = config["model"]
        self.tokenizer = ModelTokenizer(folder)
        self.session, self.provider = create_session(
            folder / "model.onnx",
            self.settings.provider,
            self.settings.threads,
            DeviceOptions.from_env(),
            available_providers,
        )
        self.context = min(self.settings.context, int(model["context"]))
        slots = self.settings.max_batch + 1  # one spare slot for the batch-invariance pad row
        self.runner = ModelRunner(
            self.session,
            model["layers"],
            model["kv_heads"],
            model["hidden"] // model["heads"],
            model["vocab"],
            slots,
            self.context,
        )
        # MatMulNBits computes one row with another kernel than several, at every accuracy
        # level (level 0's fused one-row kernel, level 4's on AVX2): quantized builds decode at
        # least two rows, so an output does not depend on the batch it ran in.
        quantized = config.get("quantization") in ("int4", "int8")
        min_batch = 2 if quantized else 1
        self.scheduler = Scheduler(
            self.runner,
            self.tokenizer.eos_ids,
            self.settings.max_batch,
            self.settings.max_waiting,
            min_batch,
        )
        generation = {**DEFAULT_GENERATION, **config.get("generation", {})}
        self.defaults = SamplingParams(
            max_tokens=max(1, min(int(generation["maxTokens"]), self.context // 2)),
            temperature=float(generation["temperature"]),
            top_p=float(generation["topP"]),
            top_k=int(generation["topK"]),
        )
        """Sampling for requests that set nothing (the model folder's generation defaults)."""
        self.digest: str = self.manifest["digest"]
        self.quantization: str = self.manifest.get("quantization", "unknown")
        self.kernels = cpu_kernels().family if self.provider == "cpu" else self.provider
        """The kernel family running the model: the CPU's MLAS family (avx2, avx512vnni, ...)
        on the CPU provider, else the provider; fidelity and speed depend on it."""
        self.load_seconds = time.monotonic() - started
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(
            EngineCollector(
                lambda: self.scheduler.stats,
                self.digest,
                self.quantization,
                self.provider,
                self.kernels,
            )
        )
        self._ready = False
        log.info(
            "Loaded model %s (%s, %s, %s kernels) in %.1f s; "
            "KV cache %.0f MiB for %d sequences of %d tokens",
            self.digest[:19],
            self.quantization,
            self.provider,
            self.kernels,
            self.load_seconds,
            self.runner.cache.nbytes / 2**20,
            self.settings.max_batch,
            self.context,
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

    def generate(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Submit a request; iterate the result for chunks. Raises QueueFull when full."""
        self.check(prompt, params)
        g = Generation(prompt, params, self.tokenizer)
        self.scheduler.submit(g)
        return g

    def generate_async(self, prompt: list[int], params: SamplingParams) -> Generation:
        """As generate, for `async for` inside an event loop."""
        self.check(prompt, params)
        g = Generation(prompt, params, self.tokenizer, asyncio.get_running_loop())
        self.scheduler.submit(g)
        return g


__all__ = ["ContextLengthError", "Engine", "EngineSettings", "QueueFull", "SamplingParams"]
