"""The response cache in a real redis-server: a repeated deterministic request is a hit (faster,
identical, streamed replays too); sampled requests and another model digest miss; with Redis
killed the server still answers (fail-open, counted and logged) and the cache recovers by itself
when Redis returns."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.redis import RedisServer
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

ASK = {
    "model": "smollm2",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def metric(server: ServerProcess, name: str) -> float:
    text = server.get("/metrics")[2].decode()
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    ]
    return sum(values)


def timed(server: ServerProcess, payload: dict[str, object]) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    status, _, body = server.post("/v1/chat/completions", payload)
    assert status == 200, body
    return time.monotonic() - started, body


@pytest.fixture
def cached(model_dirs: Callable[[str], Path], redis_server: RedisServer) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dirs("int4"), args=["--redis-url", redis_server.url])
    s.wait_ready()
    yield s
    s.stop()


def content(body: dict[str, object]) -> str:
    return body["choices"][0]["message"]["content"]  # type: ignore[index,no-any-return]


def test_a_repeated_deterministic_request_is_a_hit(cached: ServerProcess) -> None:
    miss_time, first = timed(cached, ASK)
    hit_time, second = timed(cached, ASK)
    assert content(second) == content(first)
    assert second["usage"] == first["usage"]
    assert metric(cached, "llmchain_cache_hits_total") == 1
    assert metric(cached, "llmchain_cache_misses_total") == 1
    print(f"miss {miss_time * 1000:.0f} ms, hit {hit_time * 1000:.0f} ms")
    assert hit_time < miss_time


def test_a_streamed_answer_is_cached_and_replayed_as_a_stream(cached: ServerProcess) -> None:
    def stream() -> list[str]:
        status, _, raw = cached.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**ASK, "stream": True}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200
        return [e for e in raw.decode().split("\n\n") if e.startswith("data: {")]

    first, second = stream(), stream()
    assert metric(cached, "llmchain_cache_hits_total") == 1

    def text(events: list[str]) -> str:
        return "".join(
            json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events
        )

    assert text(second) == text(first) and len(second) == len(first) > 3


def test_sampled_requests_are_not_cached_by_default(cached: ServerProcess) -> None:
    sampled = {**ASK, "temperature": 0.9, "seed": 5}
    timed(cached, sampled)
    timed(cached, sampled)
    assert metric(cached, "llmchain_cache_hits_total") == 0
    assert metric(cached, "llmchain_cache_misses_total") == 0  # never even looked up


def test_another_model_digest_does_not_hit(
    model_dirs: Callable[[str], Path], redis_server: RedisServer, cached: ServerProcess
) -> None:
    timed(cached, ASK)
    other = ServerProcess(model_dirs("int8"), args=["--redis-url", redis_server.url])
    try:
        other.wait_ready()
        timed(other, ASK)
        assert metric(other, "llmchain_cache_hits_total") == 0
        assert metric(other, "llmchain_cache_misses_total") == 1
    finally:
        other.stop()


def test_redis_down_fails_open_and_recovers(
    cached: ServerProcess, redis_server: RedisServer
) -> None:
    timed(cached, ASK)  # stored
    redis_server.stop()
    _, answer = timed(cached, ASK)  # still answered, without the cache
    assert content(answer)
    assert metric(cached, "llmchain_cache_errors_total") >= 1
    wait_for(
        lambda: "Answered without the response cache" in cached.logs(),
        timeout=10,
        interval=0.1,
        what="the server to log that it answered without the cache",
    )
    redis_server.start()  # same port, empty: the next asks miss, store, then hit again
    # A fixed wait on purpose: after a failure the cache is skipped for one second (its
    # documented back-off), and the point is that it comes back by itself once that has passed.
    time.sleep(1.2)
    timed(cached, ASK)
    timed(cached, ASK)
    assert metric(cached, "llmchain_cache_hits_total") >= 1
