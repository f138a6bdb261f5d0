"""Server limits and options, from the environment the operator sets (names in `contract`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmchain_server import contract


@dataclass(frozen=True)
class ServerSettings:
    model_name: str = "model"
    max_concurrency: int = 64  # requests in flight; beyond: 429 with Retry-After
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 4096
    max_prompt_chars: int = 65536  # checked before tokenizing; default 16 per prompt token
    max_tokens_limit: int = 2048  # the most a request may ask for
    api_key_file: Path | None = None
    grace_seconds: float = 30.0
    retry_after_seconds: int = 1  # the Retry-After of 429 and 503 answers
    cache_ttl_seconds: int = 3600
    cache_sampled: bool = False
    header_timeout_seconds: float = 10.0  # for a request's line and headers; then closed
    body_timeout_seconds: float = 30.0  # for its whole body; then a 408
    max_connections: int = 1000  # open connections; at most RLIMIT_NOFILE less a reserve

    @classmethod
    def from_env(cls, model_name: str, env: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if env is None else env
        key = env.get(contract.ENV_API_KEY_FILE)
        max_prompt_tokens = int(env.get(contract.ENV_MAX_PROMPT_TOKENS, "4096"))
        return cls(
            model_name=env.get(contract.ENV_MODEL_NAME, model_name),
            max_concurrency=int(env.get(contract.ENV_MAX_CONCURRENCY, "64")),
            max_body_bytes=int(env.get(contract.ENV_MAX_BODY_BYTES, "1000000")),
            max_prompt_tokens=max_prompt_tokens,
            max_prompt_chars=int(
                env.get(contract.ENV_MAX_PROMPT_CHARS, str(16 * max_prompt_tokens))
            ),
            max_tokens_limit=int(env.get(contract.ENV_MAX_TOKENS_LIMIT, "2048")),
            api_key_file=Path(key) if key else None,
            grace_seconds=float(env.get(contract.ENV_GRACE_SECONDS, "30")),
            retry_after_seconds=int(env.get(contract.ENV_RETRY_AFTER_SECONDS, "1")),
            cache_ttl_seconds=int(env.get(contract.ENV_CACHE_TTL_SECONDS, "3600")),
            cache_sampled=env.get(contract.ENV_CACHE_SAMPLED, "false").lower() == "true",
            header_timeout_seconds=float(env.get(contract.ENV_HEADER_TIMEOUT_SECONDS, "10")),
            body_timeout_seconds=float(env.get(contract.ENV_BODY_TIMEOUT_SECONDS, "30")),
            max_connections=int(env.get(contract.ENV_MAX_CONNECTIONS, "1000")),
        )
