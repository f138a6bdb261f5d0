"""Connections that cannot hold the server: uvicorn's h11 protocol closes a connection only when
it has been idle after a response (keep-alive), so a client that connects and sends nothing, or
trickles its headers a byte at a time, would keep its socket forever. Here a connection has
`header_timeout` seconds to send each request's line and headers (bodies have theirs in the
Guard), and past `max_connections` open connections a new one gets a 503 and is closed, so the
server never runs out of file descriptors."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from llmchain_server.http.errors import error_body

log = logging.getLogger(__name__)
FD_RESERVE = 64
"""Descriptors kept for everything but client connections (the model, Redis, logs, threads)."""


def connection_cap(wanted: int) -> int:
    """`wanted`, or less to stay below the process's file-descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with these limits (uvicorn takes a protocol class)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


class GuardedH11Protocol(H11Protocol):
    header_timeout = 10.0
    max_connections = 1000
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are in: its body has the Guard's time
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # the next request's headers (a pipelined one disarms it at once)
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self) -> None:
        log.warning("Refused a connection: %d open, the limit", self.max_connections)
        body = json.dumps(
            error_body(
                f"too many open connections (limit {self.max_connections}); retry shortly",
                "service_unavailable",
            )
        ).encode()
        head: list[Any] = [
            b"HTTP/1.1 503 Service Unavailable",
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"retry-after: 1",
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
