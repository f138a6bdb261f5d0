"""Operator settings, from environment variables with the LLMCHAIN_ prefix: read once, in one
place, when the operator starts; handlers get them through kopf's memo (see main.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from llmchain_operator import __version__


@dataclass(frozen=True)
class Settings:
    """What the builders and the operator's loops need beyond the resource itself."""

    server_image: str = f"docker.io/llmchain/llmchain-server:{__version__}"
    server_gpu_image: str = f"docker.io/llmchain/llmchain-server-gpu:{__version__}"
    memory_image: str = "docker.io/valkey/valkey:8.1-alpine"
    cache_image: str = "docker.io/valkey/valkey:8.1-alpine"
    cluster_domain: str = "cluster.local"
    field_manager: str = "llmchain-operator"
    discovery_seconds: float = 60.0
    """How long discovered optional API groups are trusted before asking again."""
    resync_seconds: float = 300.0
    """Every app is reconciled this often, whatever the watches saw."""
    lease_seconds: int = 15
    """Leader election: how long a Lease holder may go without renewing."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        defaults = cls()
        return cls(
            server_image=env.get("LLMCHAIN_SERVER_IMAGE", defaults.server_image),
            server_gpu_image=env.get("LLMCHAIN_SERVER_GPU_IMAGE", defaults.server_gpu_image),
            memory_image=env.get("LLMCHAIN_MEMORY_IMAGE", defaults.memory_image),
            cache_image=env.get("LLMCHAIN_CACHE_IMAGE", defaults.cache_image),
            cluster_domain=env.get("LLMCHAIN_CLUSTER_DOMAIN", defaults.cluster_domain),
            field_manager=env.get("LLMCHAIN_FIELD_MANAGER", defaults.field_manager),
            discovery_seconds=float(
                env.get("LLMCHAIN_DISCOVERY_SECONDS", defaults.discovery_seconds)
            ),
            resync_seconds=float(env.get("LLMCHAIN_RESYNC_SECONDS", defaults.resync_seconds)),
            lease_seconds=int(env.get("LLMCHAIN_LEASE_SECONDS", defaults.lease_seconds)),
        )
