"""Conversation memory per session id, in the Redis all replicas share (not the per-pod cache),
so a conversation survives landing on another replica: a list of the last `window` turns with
a TTL renewed on every turn. When the store cannot be reached the request fails with
`errors.Unavailable` (a 503 with Retry-After): a conversation must not go on without its past."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import redis.asyncio as redis

from llmchain_server.errors import Unavailable

log = logging.getLogger(__name__)
MAX_TURN_BYTES = 64 * 1024
SESSION = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""The session ids the store accepts (they become part of Redis keys)."""


class MemoryStore:
    def __init__(
        self, url: str, chain: str, window: int, ttl_seconds: int, timeout: float = 2.0
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.chain = chain
        self.window = window
        self.ttl = ttl_seconds

    def _key(self, session: str) -> str:
        return f"llmchain:memory:{self.chain}:{session}"

    async def history(self, session: str) -> list[dict[str, Any]]:
        try:
            raw = await self.client.lrange(self._key(session), 0, -1)
        except (redis.RedisError, OSError) as e:
            raise Unavailable(f"the memory store is unavailable: {type(e).__name__}") from None
        return [json.loads(item) for item in raw]

    async def append(self, session: str, turn: dict[str, Any]) -> None:
        record = json.dumps(turn)
        if len(record) > MAX_TURN_BYTES:  # a huge turn would crowd out every later prompt
            log.warning(
                "Left a %d-byte turn out of session memory (limit %d)", len(record), MAX_TURN_BYTES
            )
            return
        key = self._key(session)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, record)
                pipe.ltrim(key, -self.window, -1)
                pipe.expire(key, self.ttl)
                await pipe.execute()
        except (redis.RedisError, OSError) as e:
            raise Unavailable(f"the memory store is unavailable: {type(e).__name__}") from None

    async def close(self) -> None:
        await self.client.aclose()
