"""The engine's metrics as scraped: names and labels are part of the contract the operator's
autoscalers, alerts and dashboard query, so they are spelt out here, not taken from the contract."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from llmchain_server.engine.metrics import EngineCollector
from llmchain_server.engine.prefix_cache import PrefixStats
from llmchain_server.engine.scheduler import EngineStats


def test_scraped_names_values_and_labels() -> None:
    stats = EngineStats(waiting=3, running=2, steps=7, generated_tokens=11, prompt_tokens=5)
    registry = CollectorRegistry()
    prefix = PrefixStats(
        lookup_tokens=64, hit_tokens=48, evicted_blocks=2, used_blocks=9, capacity_blocks=256
    )
    registry.register(
        EngineCollector(lambda: stats, lambda: prefix, "sha256:ab", "int4", "cpu", "avx2")
    )
    info = {"digest": "sha256:ab", "quantization": "int4", "execution_provider": "cpu"}
    assert registry.get_sample_value("llmchain_model_info", {**info, "kernels": "avx2"}) == 1
    assert registry.get_sample_value("llmchain_engine_batch_size") == 2
    assert registry.get_sample_value("llmchain_engine_queue_depth") == 3
    assert registry.get_sample_value("llmchain_generated_tokens_total") == 11
    assert registry.get_sample_value("llmchain_prompt_tokens_total") == 5
    assert registry.get_sample_value("llmchain_engine_steps_total") == 7
    assert registry.get_sample_value("llmchain_prefix_cache_lookup_tokens_total") == 64
    assert registry.get_sample_value("llmchain_prefix_cache_hit_tokens_total") == 48
    assert registry.get_sample_value("llmchain_prefix_cache_evictions_total") == 2
    assert registry.get_sample_value("llmchain_prefix_cache_blocks", {"state": "used"}) == 9
    assert registry.get_sample_value("llmchain_prefix_cache_blocks", {"state": "capacity"}) == 256
    families = {
        line.split()[2]
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("# TYPE")
    }
    assert families == {
        "llmchain_model_info",
        "llmchain_engine_batch_size",
        "llmchain_engine_queue_depth",
        "llmchain_generated_tokens_total",
        "llmchain_prompt_tokens_total",
        "llmchain_engine_steps_total",
        "llmchain_prefix_cache_lookup_tokens_total",
        "llmchain_prefix_cache_hit_tokens_total",
        "llmchain_prefix_cache_evictions_total",
        "llmchain_constrained_outputs_total",
        "llmchain_constraint_seconds_total",
        "llmchain_prefix_cache_blocks",
    }


def test_an_engine_without_a_prefix_cache_reports_it_empty() -> None:
    registry = CollectorRegistry()
    registry.register(
        EngineCollector(EngineStats, lambda: None, "sha256:ab", "int4", "cpu", "avx2")
    )
    assert registry.get_sample_value("llmchain_prefix_cache_hit_tokens_total") == 0
    assert registry.get_sample_value("llmchain_prefix_cache_blocks", {"state": "capacity"}) == 0


def test_each_routes_request_series_exist_at_zero_before_its_first_request() -> None:
    """rate() cannot count the first requests of a series born with them: a new pod's first
    burst, or a chain's first failures, would never reach the dashboard and alerts."""
    from llmchain_server.dataplane import ServerMetrics
    from llmchain_server.http.middleware import Guard

    registry = CollectorRegistry()
    Guard(lambda *_: None, ServerMetrics(registry), 1024, None, ("/v1/chains/qa/invoke",))  # type: ignore[arg-type]
    for route in ("/v1/chains/qa/invoke", "/v1/chat/completions", "/v1/models/{id}"):
        for status in ("200", "500", "502", "503"):
            labels = {"route": route, "status": status}
            assert registry.get_sample_value("llmchain_requests_total", labels) == 0, labels
        count = registry.get_sample_value(
            "llmchain_request_duration_seconds_count", {"route": route}
        )
        assert count == 0
    assert (
        registry.get_sample_value("llmchain_requests_total", {"route": "other", "status": "200"})
        is None
    )
