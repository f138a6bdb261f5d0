"""Uvicorn, draining on SIGTERM: /readyz fails at once, new requests get 503, in-flight ones
(streams included) finish within the grace period, then the server stops."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from llmchain_server.dataplane import Admission

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, admission: Admission, grace_seconds: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.grace_seconds = grace_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.admission.draining:  # a second signal: stop now (and still exit 0)
            self.should_exit = self.force_exit = True
            return
        self.admission.draining = True
        log.info(
            "Draining: %d requests in flight, up to %.0f s",
            self.admission.in_flight,
            self.grace_seconds,
        )
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_seconds
        while self.admission.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.admission.in_flight:
            log.warning(
                "Stopped with %d requests still in flight after the grace period",
                self.admission.in_flight,
            )
        else:
            log.info("Drained; stopping")
        self.should_exit = True


def serve(app: ASGIApp, admission: Admission, grace_seconds: float, host: str, port: int) -> None:
    """Serves `app` until SIGTERM (drained) or a second signal."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,  # the drain above already waited for in-flight work
    )
    DrainingServer(config, admission, grace_seconds).run()
