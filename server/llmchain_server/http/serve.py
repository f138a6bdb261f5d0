"""`llmchain serve`: load the model, start the engine, serve HTTP with uvicorn, and drain on
SIGTERM: /readyz fails at once, new requests get 503, in-flight ones (streams included) finish
within the grace period, then the process exits 0."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import FrameType

import uvicorn
import yaml
from prometheus_client import CollectorRegistry

from llmchain_server.chains.memory import MemoryStore
from llmchain_server.chains.runtime import ChainRunner
from llmchain_server.config import ChainConfig, template_problems
from llmchain_server.engine import Engine, EngineSettings
from llmchain_server.http.app import create_app
from llmchain_server.http.cache import ResponseCache
from llmchain_server.http.dataplane import DataPlane
from llmchain_server.http.metrics import ServerMetrics
from llmchain_server.http.settings import ServerSettings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, plane: DataPlane) -> None:
        super().__init__(config)
        self.plane = plane

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.plane.draining:  # a second signal: stop now (and still exit 0)
            self.should_exit = self.force_exit = True
            return
        self.plane.draining = True
        log.info(
            "Draining: %d requests in flight, up to %.0f s",
            self.plane.in_flight,
            self.plane.settings.grace_seconds,
        )
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig, frame)))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plane.settings.grace_seconds
        while self.plane.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.plane.in_flight:
            log.warning(
                "Stopped with %d requests still in flight after the grace period",
                self.plane.in_flight,
            )
        else:
            log.info("Drained; stopping")
        self.should_exit = True


def load_chain(path: Path, plane: DataPlane, memory_url: str | None) -> ChainRunner:
    """The chain from its config file; its memory store when it has memory."""
    try:
        config = ChainConfig.model_validate(yaml.safe_load(path.read_text()))
        problems = template_problems(config.chain)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"cannot load the chain {path}: {e}") from None
    if problems:
        raise ValueError(f"chain {path}: {'; '.join(problems)}")
    memory = None
    if config.chain.memory is not None:
        if not memory_url:
            raise ValueError(f"chain {config.name} has memory: give --memory-url (or --redis-url)")
        memory = MemoryStore(
            memory_url, config.name, config.chain.memory.window, config.chain.memory.ttl_seconds
        )
    return ChainRunner(config, plane, memory)


def run(
    model: Path,
    host: str,
    port: int,
    model_name: str | None = None,
    chain_file: Path | None = None,
    redis_url: str | None = None,
    memory_url: str | None = None,
) -> int:
    registry = CollectorRegistry()
    engine = Engine(model, EngineSettings.from_env(), registry=registry)
    settings = ServerSettings.from_env(model_name or model.name)
    api_key = None
    if settings.api_key_file is not None:
        api_key = settings.api_key_file.read_text().strip()
        if not api_key:
            raise SystemExit(f"the API key file {settings.api_key_file} is empty")
    metrics = ServerMetrics(registry)
    cache = None
    if redis_url:
        cache = ResponseCache(
            redis_url, engine.digest, settings.cache_ttl_seconds, settings.cache_sampled, metrics
        )
    plane = DataPlane(engine, settings, metrics, cache)
    chain = load_chain(chain_file, plane, memory_url or redis_url) if chain_file else None
    engine.start()
    config = uvicorn.Config(
        create_app(plane, metrics, api_key, chain),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,  # the drain above already waited for in-flight work
    )
    server = DrainingServer(config, plane)
    log.info("Serving %s on %s:%d", settings.model_name, host, port)
    try:
        server.run()
    finally:
        engine.stop()
    return 0
