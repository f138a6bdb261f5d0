"""The server's connection and prompt limits (#12 items 8 and 9): their defaults from the
environment, and the connection cap kept below the process's file-descriptor limit."""

from __future__ import annotations

import resource

from llmchain_server.dataplane.settings import ServerSettings
from llmchain_server.http.connections import FD_RESERVE, connection_cap


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
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert connection_cap(1000) == 256 - FD_RESERVE
        assert connection_cap(100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
