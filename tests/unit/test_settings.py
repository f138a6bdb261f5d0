"""Operator settings: read from the environment once, handed to handlers through kopf's memo."""

from __future__ import annotations

import kopf

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


def test_the_run_memo_carries_the_settings_and_shares_the_app_count() -> None:
    settings = Settings(resync_seconds=1)
    memo = main.run_memo(settings)
    assert memo.settings is settings and memo.webhook is None and memo.background == []
    copy = kopf.Memo(memo)  # kopf hands each object a shallow copy of the run's memo
    copy.apps.add("apps/one")
    assert memo.apps == {"apps/one"}


def test_the_main_module_keeps_no_run_state() -> None:
    for name in ("WEBHOOK", "BACKGROUND", "RESYNC_SECONDS"):
        assert not hasattr(main, name), name
