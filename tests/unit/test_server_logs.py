"""The server's log lines stay bounded (#12 items 7 and 9): one short line per failure, a
traceback at most once per exception type per window, bursts of one message counted instead of
written. Real logging records through the real filter and formatter, on a controlled clock."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from llmchain_server.http.logs import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    BoundedLines,
    JSONFormatter,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, Clock]]:
    out = io.StringIO()
    clock = Clock()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(BoundedLines(window=10, burst=3, clock=clock))
    logger = logging.getLogger("test.bounded")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, out, clock
    logger.handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def deep(n: int) -> None:
    """A deep stack, for a traceback as long as the RecursionError's of item 7."""
    if n:
        deep(n - 1)
    raise ValueError("x" * 100_000)


def fail(logger: logging.Logger) -> None:
    try:
        deep(300)
    except ValueError as e:
        logger.error("Failed %s: %s", "a request", type(e).__name__, exc_info=e)


def test_a_failure_is_one_bounded_line_and_its_traceback_comes_once_per_window(
    logged: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, out, clock = logged
    fail(logger)
    fail(logger)
    first, second = lines(out)
    assert out.getvalue().count("\n") == 2  # one line each
    assert "Traceback" in str(first["exception"])
    assert len(str(first["exception"])) <= MAX_TRACEBACK_CHARS + 100
    assert "characters left out" in str(first["exception"])
    # The second within the window: the type and (cut) message only.
    assert str(second["exception"]).startswith("ValueError: xxx")
    assert "Traceback" not in str(second["exception"])
    assert len(json.dumps(second)) < MAX_MESSAGE_CHARS + 500
    clock.now += 11
    fail(logger)
    assert "Traceback" in str(lines(out)[-1]["exception"])


def test_a_long_message_is_cut(logged: tuple[logging.Logger, io.StringIO, Clock]) -> None:
    logger, out, _ = logged
    logger.info("Served %s", "y" * 50_000)
    (line,) = lines(out)
    assert len(str(line["message"])) <= MAX_MESSAGE_CHARS + 60
    assert str(line["message"]).startswith("Served yyy")


def test_a_burst_of_one_error_is_counted_not_written(
    logged: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, out, clock = logged
    for _ in range(1000):
        logger.error("socket.accept() out of system resource")
    logger.info("Served %s", "POST")  # info lines (the access log) are never limited
    logger.info("Served %s", "POST")
    assert len(lines(out)) == 3 + 2
    clock.now += 10
    logger.error("socket.accept() out of system resource")
    last = lines(out)[-1]
    assert last["message"] == "socket.accept() out of system resource"
    assert last["suppressed"] == 997
