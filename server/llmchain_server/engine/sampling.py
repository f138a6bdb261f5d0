"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p,
from a per-request random generator (a seed makes a sampled request repeatable)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from llmchain_server.engine.constraints import Grammar

Logits = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of generation. temperature 0 means greedy (deterministic)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # generate max_tokens regardless (benchmarks)
    grammar: Grammar | None = None  # the output must match it (constraints.py)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not (self.temperature == 0.0 or 1e-3 <= self.temperature <= 10.0):
            raise ValueError("temperature must be 0 (greedy) or between 0.001 and 10")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be greater than 0 and at most 1")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (off) or positive")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            raise ValueError("stop takes at most 16 non-empty sequences")
        if self.grammar is not None and self.ignore_eos:
            raise ValueError("a constrained output ends with its grammar: no ignore_eos")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def sample(logits: Logits, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from one row of logits."""
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < scaled.size:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:  # degenerate logits or temperature: be greedy
        return int(np.argmax(logits))
    probs /= total
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))
