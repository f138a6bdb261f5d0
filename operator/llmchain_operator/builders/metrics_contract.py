"""Names of the chain server's Prometheus metrics that autoscalers, alerts and the dashboard use.

The chain server (llmchain_server) must export exactly these; its tests check the list.
"""

INFLIGHT = "llmchain_requests_in_flight"
"""Gauge: requests being handled by this pod."""

REQUESTS = "llmchain_requests_total"
"""Counter, labels route and status: finished HTTP requests."""

LATENCY = "llmchain_request_duration_seconds"
"""Histogram, label route: request latency."""

TTFT = "llmchain_time_to_first_token_seconds"
"""Histogram: time to the first generated token."""

GENERATED_TOKENS = "llmchain_generated_tokens_total"
"""Counter: tokens generated."""

CACHE_HITS = "llmchain_cache_hits_total"
CACHE_MISSES = "llmchain_cache_misses_total"
"""Counters: response cache lookups."""

ALL = (INFLIGHT, REQUESTS, LATENCY, TTFT, GENERATED_TOKENS, CACHE_HITS, CACHE_MISSES)
