"""The one way a test waits: poll a condition until it holds, or fail naming what was awaited.

Tests do not sleep a fixed time hoping something has happened; they wait here for the thing
itself. A fixed sleep stays only where the time is the point (a documented back-off, a
"nothing happens for N seconds" check) and then says so in a comment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 60, interval: float = 0.5, what: str = ""
) -> Any:
    """Poll until condition() returns something truthy; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r}: {last!r}")
