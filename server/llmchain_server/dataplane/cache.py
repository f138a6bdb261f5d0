"""The exact-match response cache in the per-pod Redis sidecar (redis-py, asyncio).

Key: sha256 of the model digest, the prompt's token ids (the fully rendered prompt) and the
generation parameters. Only deterministic requests are cached unless sampled ones are opted in.
Fail-open: when Redis is down or slow (short timeouts), requests are answered without it, a
metric counts the failure and a log line says so at most every 30 s; after a failure the cache
is skipped for a second, then tried again, so it recovers by itself."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict

import redis.asyncio as redis

from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.engine import Chunk, SamplingParams

log = logging.getLogger(__name__)
PREFIX = "llmchain:cache:"
BACKOFF_SECONDS = 1.0
LOG_EVERY_SECONDS = 30.0


class ResponseCache:
    def __init__(
        self,
        url: str,
        digest: str,
        ttl_seconds: int,
        include_sampled: bool,
        metrics: ServerMetrics,
        timeout: float = 0.25,
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.digest = digest
        self.ttl = ttl_seconds
        self.include_sampled = include_sampled
        self.metrics = metrics
        self._skip_until = 0.0
        self._last_log = 0.0

    def cacheable(self, params: SamplingParams) -> bool:
        return params.greedy or self.include_sampled

    def key(self, prompt: Sequence[int], params: SamplingParams) -> str:
        material = json.dumps(
            {"digest": self.digest, "prompt": list(prompt), "params": asdict(params)},
            sort_keys=True,
        )
        return PREFIX + hashlib.sha256(material.encode()).hexdigest()

    async def get(self, key: str) -> list[Chunk] | None:
        if time.monotonic() < self._skip_until:
            return None
        try:
            raw = await self.client.get(key)
        except (redis.RedisError, OSError) as e:
            self._failed("read", e)
            return None
        if raw is None:
            self.metrics.cache_misses.inc()
            return None
        try:
            chunks = [Chunk(**c) for c in json.loads(raw)]
        except (ValueError, TypeError) as e:  # corrupt, or written by another version: a miss
            self._failed("decode", e)
            return None
        self.metrics.cache_hits.inc()
        return chunks

    async def put(self, key: str, chunks: list[Chunk]) -> None:
        if time.monotonic() < self._skip_until:
            return
        try:
            await self.client.set(key, json.dumps([asdict(c) for c in chunks]), ex=self.ttl)
        except (redis.RedisError, OSError) as e:
            self._failed("write", e)

    def _failed(self, what: str, error: Exception) -> None:
        self.metrics.cache_errors.inc()
        now = time.monotonic()
        self._skip_until = now + BACKOFF_SECONDS
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            log.warning(
                "Answered without the response cache: its %s failed (%s); retrying in %.0f s",
                what,
                type(error).__name__,
                BACKOFF_SECONDS,
            )

    async def close(self) -> None:
        await self.client.aclose()
