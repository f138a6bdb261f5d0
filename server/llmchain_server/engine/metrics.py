"""The engine's Prometheus metrics, read from its counters at scrape time (nothing on the hot
path). Names come from the contract (llmchain_server.contract), which the operator's autoscalers,
alerts and dashboard query too; README ("Engine metrics") documents them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmchain_server.contract import (
    BATCH_SIZE,
    CONSTRAINED_OUTPUTS,
    CONSTRAINT_SECONDS,
    ENGINE_STEPS,
    GENERATED_TOKENS,
    MODEL_INFO,
    MODEL_INFO_LABELS,
    PREFIX_BLOCKS,
    PREFIX_EVICTIONS,
    PREFIX_HIT_TOKENS,
    PREFIX_LOOKUP_TOKENS,
    PROMPT_TOKENS,
    QUEUE_DEPTH,
    counter,
)
from llmchain_server.engine.prefix_cache import PrefixStats
from llmchain_server.engine.scheduler import EngineStats


class EngineCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], EngineStats],
        prefix: Callable[[], PrefixStats | None],
        digest: str,
        quantization: str,
        provider: str,
        kernels: str,
    ) -> None:
        self._stats = stats
        self._prefix = prefix
        self._info = (digest, quantization, provider, kernels)  # as MODEL_INFO_LABELS

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        info = GaugeMetricFamily(
            MODEL_INFO, "The served model (value 1).", labels=list(MODEL_INFO_LABELS)
        )
        info.add_metric(list(self._info), 1.0)
        yield info
        yield GaugeMetricFamily(
            BATCH_SIZE, "Sequences decoded together in the latest step.", value=s.running
        )
        yield GaugeMetricFamily(
            QUEUE_DEPTH, "Requests waiting for a slot in the running batch.", value=s.waiting
        )
        yield CounterMetricFamily(
            counter(GENERATED_TOKENS), "Tokens generated.", value=s.generated_tokens
        )
        yield CounterMetricFamily(
            counter(PROMPT_TOKENS),
            "Prompt tokens of admitted requests (computed, or from the prefix cache).",
            value=s.prompt_tokens,
        )
        yield CounterMetricFamily(counter(ENGINE_STEPS), "Decode steps run.", value=s.steps)
        outcomes = CounterMetricFamily(
            counter(CONSTRAINED_OUTPUTS),
            "Outputs under a grammar or JSON schema, by outcome: complete on their own, closed "
            "early as max_tokens ran short, or cut incomplete.",
            labels=["outcome"],
        )
        complete = s.constrained - s.constrained_closed - s.constrained_cut
        outcomes.add_metric(["complete"], complete)
        outcomes.add_metric(["closed"], s.constrained_closed)
        outcomes.add_metric(["cut"], s.constrained_cut)
        yield outcomes
        yield CounterMetricFamily(
            counter(CONSTRAINT_SECONDS),
            "Seconds spent masking logits and advancing grammars.",
            value=s.constraint_seconds,
        )
        p = self._prefix() or PrefixStats()
        yield CounterMetricFamily(
            counter(PREFIX_LOOKUP_TOKENS),
            "Prompt tokens looked up in the prefix cache (whole blocks a hit could cover).",
            value=p.lookup_tokens,
        )
        yield CounterMetricFamily(
            counter(PREFIX_HIT_TOKENS),
            "Prompt tokens whose keys and values came from the prefix cache.",
            value=p.hit_tokens,
        )
        yield CounterMetricFamily(
            counter(PREFIX_EVICTIONS),
            "Prefix cache blocks evicted to make room.",
            value=p.evicted_blocks,
        )
        blocks = GaugeMetricFamily(
            PREFIX_BLOCKS, "Blocks of the prefix cache, used and in all.", labels=["state"]
        )
        blocks.add_metric(["used"], p.used_blocks)
        blocks.add_metric(["capacity"], p.capacity_blocks)
        yield blocks
