"""Progress lines for long model work, at most one every `interval` seconds (plus the last)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(
        self,
        stage: str,
        total: int | None = None,
        interval: float = 2.0,
        stream: TextIO | None = None,
        label: str = "model",
    ) -> None:
        self.label = label
        self.stage = stage
        self.total = total
        self.interval = interval
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last = 0.0

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"[{self.label}] {self.stage}: {message} ({elapsed:.1f} s)",
            file=self.stream,
            flush=True,
        )

    def bytes(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        mib = done / 2**20
        rate = mib / max(now - self.started, 1e-6)
        if self.total:
            self.say(
                f"{100 * done / self.total:.0f}% ({mib:.1f} of {self.total / 2**20:.1f} MiB, "
                f"{rate:.1f} MiB/s)"
            )
        else:
            self.say(f"{mib:.1f} MiB ({rate:.1f} MiB/s)")

    def step(self, done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        self.say(f"{what} {done}/{total}")


def wait_until(
    found: Callable[[], T | None],
    timeout: float,
    poll: float,
    progress: Progress,
    waiting: str,
    missing: str,
) -> T:
    """Call `found` every `poll` seconds until it returns something, saying `waiting` every 30 s;
    TimeoutError(`missing`) after `timeout` seconds (what `llmchain model wait` and `llmchain
    index wait` do while a build Job writes the folder)."""
    deadline = time.monotonic() + timeout
    last_note = 0.0
    while True:
        result = found()
        if result is not None:
            return result
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(missing)
        if now - last_note >= 30:
            progress.say(waiting)
            last_note = now
        time.sleep(poll)
