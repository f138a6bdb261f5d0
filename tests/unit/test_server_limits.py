"""The server's connection and prompt limits (#12 items 8 and 9): their defaults from the
environment, and the connection cap kept below the process's file-descriptor limit."""

from __future__ import annotations

import resource

from llmchain_server.dataplane.settings import ServerSettings
from llmchain_server.http.connections import (
    BACKLOG,
    FD_RESERVE,
    connection_cap,
    raise_descriptor_limit,
)
from llmchain_server.http.server import uvicorn_config


def test_the_limits_default_and_the_character_cap_follows_the_token_limit() -> None:
    default = ServerSettings.from_env("m", {})
    assert default.max_prompt_chars == 16 * default.max_prompt_tokens == 65536
    assert (default.header_timeout_seconds, default.body_timeout_seconds) == (10.0, 30.0)
    assert default.max_connections == 1000
    small = ServerSettings.from_env("m", {"LLMCHAIN_MAX_PROMPT_TOKENS": "300"})
    assert small.max_prompt_chars == 4800
    given = ServerSettings.from_env(
        "m",
        {
            "LLMCHAIN_MAX_PROMPT_CHARS": "1000",
            "LLMCHAIN_HEADER_TIMEOUT_SECONDS": "2.5",
            "LLMCHAIN_BODY_TIMEOUT_SECONDS": "4",
            "LLMCHAIN_MAX_CONNECTIONS": "50",
        },
    )
    assert (given.max_prompt_chars, given.header_timeout_seconds) == (1000, 2.5)
    assert (given.body_timeout_seconds, given.max_connections) == (4.0, 50)


def test_the_connection_cap_stays_below_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert connection_cap(1000) == 1024 - FD_RESERVE
        assert connection_cap(100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_reserve_covers_what_asyncio_accepts_before_the_cap_refuses() -> None:
    """asyncio accepts up to `backlog` sockets a loop tick and the cap refuses one two ticks
    later (closed the tick after): three backlogs and a margin stay free below the limit."""
    assert BACKLOG <= 2048  # never uvicorn's default, which no reserve here would cover
    assert FD_RESERVE >= 3 * BACKLOG + 64
    config = uvicorn_config(ok_app, "127.0.0.1", 0, 10.0, 1000)
    assert config.backlog == BACKLOG
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) <= soft - 3 * config.backlog - 64


def test_start_up_raises_the_soft_descriptor_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        assert raise_descriptor_limit() == (low, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert connection_cap(1000) == min(1000, hard - FD_RESERVE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def ok_app(scope: object, receive: object, send: object) -> None:
    """An ASGI app uvicorn's config can hold (never called)."""
