"""The engine's Prometheus metrics, read from its counters at scrape time (nothing on the hot
path). Names are documented in README ("Engine metrics"); llmchain_generated_tokens_total is part
of the contract the operator's autoscalers and alerts use."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmchain_server.engine.scheduler import EngineStats


class EngineCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], EngineStats],
        digest: str,
        quantization: str,
        provider: str,
        kernels: str,
    ) -> None:
        self._stats = stats
        self._info = (digest, quantization, provider, kernels)

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        info = GaugeMetricFamily(
            "llmchain_model_info",
            "The served model (value 1).",
            labels=["digest", "quantization", "execution_provider", "kernels"],
        )
        info.add_metric(list(self._info), 1.0)
        yield info
        yield GaugeMetricFamily(
            "llmchain_engine_batch_size",
            "Sequences decoded together in the latest step.",
            value=s.running,
        )
        yield GaugeMetricFamily(
            "llmchain_engine_queue_depth",
            "Requests waiting for a slot in the running batch.",
            value=s.waiting,
        )
        yield CounterMetricFamily(
            "llmchain_generated_tokens", "Tokens generated.", value=s.generated_tokens
        )
        yield CounterMetricFamily(
            "llmchain_prompt_tokens", "Prompt tokens prefilled.", value=s.prompt_tokens
        )
        yield CounterMetricFamily("llmchain_engine_steps", "Decode steps run.", value=s.steps)
