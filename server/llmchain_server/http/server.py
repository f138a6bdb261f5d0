"""Uvicorn, draining on SIGTERM within the grace period: /readyz fails at once, new requests get
503, in-flight ones (streams included) may finish until shortly before the grace period ends;
what still runs then is cut with an error (a stream's error event), and the process exits
within the grace period, uvicorn's own wait included."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from llmchain_server.dataplane import Admission
from llmchain_server.http.connections import (
    BACKLOG,
    connection_cap,
    guarded_protocol,
    raise_descriptor_limit,
)

log = logging.getLogger(__name__)
TEARDOWN_SECONDS = 0.5
"""Kept at the end of the grace period for what follows uvicorn (the engine's last step)."""
CUT_SECONDS = 1.0
"""Before uvicorn stops: time for cut requests to send their error and close."""


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
            "Draining: %d requests in flight, up to %.1f s",
            self.admission.in_flight,
            self.grace_seconds,
        )
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        """Waits for in-flight work, cuts what is left in time for it to say so, and leaves
        uvicorn only what remains of the grace period."""
        loop = asyncio.get_running_loop()
        grace = self.grace_seconds
        stop_by = loop.time() + grace - min(TEARDOWN_SECONDS, grace / 10)
        cut_at = stop_by - min(CUT_SECONDS, grace / 5)
        while self.admission.in_flight and loop.time() < cut_at:
            await asyncio.sleep(0.05)
        if self.admission.in_flight:
            log.warning(
                "Cut %d requests still in flight at the end of the grace period",
                self.admission.in_flight,
            )
            self.admission.cut.set()
        else:
            log.info("Drained; stopping")
        # uvicorn ticks every 0.1 s, then waits 0.1 s before its own graceful wait.
        remaining = max(0.1, stop_by - loop.time() - 0.2)  # a float works: asyncio.wait_for's
        self.config.timeout_graceful_shutdown = remaining  # type: ignore[assignment]
        self.should_exit = True


def serve(
    app: ASGIApp,
    admission: Admission,
    grace_seconds: float,
    host: str,
    port: int,
    header_timeout: float = 10.0,
    max_connections: int = 1000,
) -> None:
    """Serves `app` until SIGTERM (drained) or a second signal."""
    raise_descriptor_limit()
    config = uvicorn_config(app, host, port, header_timeout, max_connections)
    DrainingServer(config, admission, grace_seconds).run()


def uvicorn_config(
    app: ASGIApp, host: str, port: int, header_timeout: float, max_connections: int
) -> uvicorn.Config:
    """uvicorn's settings: the guarded protocol with the connection cap (below the current
    file-descriptor limit) and a backlog the cap's reserve covers."""
    cap = connection_cap(max_connections)
    if cap < max_connections:
        log.info("Limited connections to %d, below the file-descriptor limit", cap)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(header_timeout, cap),
        backlog=BACKLOG,
        timeout_graceful_shutdown=1,  # set by the drain to what remains of the grace period
    )
