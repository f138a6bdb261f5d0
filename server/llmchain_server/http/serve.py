"""`llmchain serve`: load the model, start the engine, serve HTTP with uvicorn, and drain on
SIGTERM: /readyz fails at once, new requests get 503, in-flight ones (streams included) finish
within the grace period, then the process exits 0."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import CollectorRegistry

from llmchain_server.engine import Engine, EngineSettings
from llmchain_server.http.app import create_app
from llmchain_server.http.dataplane import DataPlane
from llmchain_server.http.metrics import ServerMetrics
from llmchain_server.http.settings import ServerSettings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, plane: DataPlane) -> None:
        super().__init__(config)
        self.plane = plane

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.plane.draining:
            super().handle_exit(sig, frame)  # a second signal: stop now
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


def run(model: Path, host: str, port: int, model_name: str | None = None) -> int:
    registry = CollectorRegistry()
    engine = Engine(model, EngineSettings.from_env(), registry=registry)
    settings = ServerSettings.from_env(model_name or model.name)
    api_key = None
    if settings.api_key_file is not None:
        api_key = settings.api_key_file.read_text().strip()
        if not api_key:
            raise SystemExit(f"the API key file {settings.api_key_file} is empty")
    metrics = ServerMetrics(registry)
    plane = DataPlane(engine, settings, metrics)
    engine.start()
    config = uvicorn.Config(
        create_app(plane, metrics, api_key),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_seconds) + 5,
    )
    server = DrainingServer(config, plane)
    log.info("Serving %s on %s:%d", settings.model_name, host, port)
    try:
        server.run()
    finally:
        engine.stop()
    return 0
