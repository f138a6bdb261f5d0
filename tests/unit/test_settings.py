"""Operator settings: read from the environment once, handed to handlers through kopf's memo."""

from __future__ import annotations

import asyncio
import copy

from prometheus_client import REGISTRY

from llmchain_operator import main
from llmchain_operator.settings import Settings


def test_every_setting_comes_from_its_variable() -> None:
    settings = Settings.from_env(
        {
            "LLMCHAIN_SERVER_IMAGE": "registry.local/server:1",
            "LLMCHAIN_SERVER_GPU_IMAGE": "registry.local/server-gpu:1",
            "LLMCHAIN_MEMORY_IMAGE": "registry.local/memory:1",
            "LLMCHAIN_CACHE_IMAGE": "registry.local/cache:1",
            "LLMCHAIN_CLUSTER_DOMAIN": "example.internal",
            "LLMCHAIN_FIELD_MANAGER": "someone",
            "LLMCHAIN_DISCOVERY_SECONDS": "7",
            "LLMCHAIN_RESYNC_SECONDS": "9",
            "LLMCHAIN_LEASE_SECONDS": "11",
        }
    )
    assert settings == Settings(
        server_image="registry.local/server:1",
        server_gpu_image="registry.local/server-gpu:1",
        memory_image="registry.local/memory:1",
        cache_image="registry.local/cache:1",
        cluster_domain="example.internal",
        field_manager="someone",
        discovery_seconds=7.0,
        resync_seconds=9.0,
        lease_seconds=11,
    )
    assert Settings.from_env({}) == Settings()


def test_the_managed_apps_gauge_counts_across_kopf_s_per_object_memos() -> None:
    memo = main.run_memo(Settings(resync_seconds=1))
    assert memo.settings.resync_seconds == 1 and memo.webhook is None and memo.background == []
    for name in ("one", "two", "three"):
        event = {"type": "ADDED", "object": {"metadata": {"namespace": "apps", "name": name}}}
        # kopf hands each object's handlers a shallow copy of the run's memo
        asyncio.run(main.count_apps(event=event, memo=copy.copy(memo)))  # type: ignore[arg-type]
    assert REGISTRY.get_sample_value("llmchain_operator_managed_apps") == 3


def test_the_main_module_keeps_no_run_state() -> None:
    for name in ("WEBHOOK", "BACKGROUND", "RESYNC_SECONDS"):
        assert not hasattr(main, name), name
