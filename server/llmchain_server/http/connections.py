"""Connections that cannot hold the server: uvicorn's h11 protocol closes a connection only when
it has been idle after a response (keep-alive), so a client that connects and sends nothing, or
trickles its headers a byte at a time, would keep its socket forever. Here a connection has
`header_timeout` seconds to send each request's line and headers (bodies have theirs in the
Guard), and past `max_connections` open connections a new one gets a 503 and is closed.

What that guarantees about file descriptors: the cap refuses in `connection_made`, which asyncio
calls two loop ticks after accept(), and its accept loop takes up to `backlog` sockets a tick;
a refused socket is closed the tick after its refusal. So up to 3 x BACKLOG sockets may be open
beyond the cap for a moment. At start-up the soft RLIMIT_NOFILE is raised to the hard limit, and
the cap is kept FD_RESERVE (those sockets and 64 for the model, Redis, logs and threads) below
it, so accept() does not meet EMFILE unless something else in the process holds more than that
margin; if it ever does, asyncio retries a second later and the log filter counts the repeats."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from llmchain_server.http.errors import error_body

log = logging.getLogger(__name__)
BACKLOG = 128
"""The listening socket's backlog, given to uvicorn (its default, 2048, is also how many
sockets asyncio accepts in one tick, before the cap can refuse any of them)."""
FD_MARGIN = 64
"""Descriptors for everything but client connections (the model, Redis, logs, threads)."""
FD_RESERVE = 3 * BACKLOG + FD_MARGIN
"""Descriptors kept below the limit: sockets accepted but not yet refused (at most three
ticks' worth of accepts, see above) and the margin."""


def raise_descriptor_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit (a process may, unprivileged); returns
    the soft limit before and after, and logs them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = soft
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            raised = hard
        except (ValueError, OSError) as e:  # an unlimited hard limit is above fs.nr_open
            log.warning("Kept the file-descriptor limit at %d (hard %d): %s", soft, hard, e)
    log.info(
        "File-descriptor limit %s (was %s, hard %s)",
        _limit(raised),
        _limit(soft),
        _limit(hard),
    )
    return soft, raised


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def connection_cap(wanted: int) -> int:
    """`wanted`, or less to stay FD_RESERVE below the process's file-descriptor limit."""
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
