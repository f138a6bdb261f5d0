"""Admission: at most max_concurrency requests in flight, none once the server drains. A refusal
is immediate (`Overloaded` or `Draining`: the client retries, perhaps on another replica)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.errors import Draining, Overloaded


class Admission:
    def __init__(self, max_concurrency: int, metrics: ServerMetrics) -> None:
        self.max_concurrency = max_concurrency
        self.metrics = metrics
        self.in_flight = 0
        self.draining = False
        """Set on SIGTERM: every new request is refused from then on."""
        self.cut = asyncio.Event()
        """Set when the grace period runs out: generations still running end with `Draining`
        (an error answer, or a stream's error event) instead of being dropped mid-answer."""

    @contextlib.contextmanager
    def admitted(self, places: int = 1) -> Iterator[None]:
        """Holds `places` of the max_concurrency places, or refuses at once."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise Draining("the server is shutting down")
        if self.in_flight + places > self.max_concurrency:
            self.metrics.rejected.labels("concurrency").inc()
            raise Overloaded(
                f"too many requests in flight (limit {self.max_concurrency}); retry shortly"
            )
        self.in_flight += places
        self.metrics.in_flight.inc(places)
        try:
            yield
        finally:
            self.in_flight -= places
            self.metrics.in_flight.dec(places)

    def hold(self) -> Callable[[], None]:
        """A place held past the handler (streams): the returned function releases it, once."""
        admission = self.admitted()
        admission.__enter__()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.__exit__(None, None, None)

        return release
