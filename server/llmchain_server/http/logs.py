"""Log lines: JSON by default (one object per line, with the request id), plain text on
request. Nothing here logs prompts, outputs or keys. Every line is bounded (`BoundedLines`): a
failing request logs one line of at most a few KB, a traceback at most once per exception type
per window, and a message repeated in a burst (an `accept()` error at the descriptor limit) is
counted instead of written."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable

from llmchain_server.http.middleware import request_id

MAX_MESSAGE_CHARS = 2048
MAX_TRACEBACK_CHARS = 8192

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return f"{base} [request {request_id.get()}]"


def _cut(text: str, limit: int) -> str:
    """`text`, its middle left out when longer than `limit` (a traceback's start and end say
    the most)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} … {len(text) - 2 * half} characters left out … {text[-half:]}"


class BoundedLines(logging.Filter):
    """Keeps the log readable under attack or a flood of failures. Warnings and errors: the
    same message (logger, template, exception type) at most `burst` times per `window`
    seconds, then counted and reported as `suppressed` on its next line; a traceback at most
    once per exception type per window (else just `Type: message`). Every record's message is
    cut at MAX_MESSAGE_CHARS and its traceback at MAX_TRACEBACK_CHARS."""

    def __init__(
        self,
        window: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], list[float]] = {}
        """Per message: [window start, lines written in it, lines suppressed since]."""
        self._tracebacks: dict[str, float] = {}
        """Per exception type: when its traceback was last written."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        kind = type(error).__name__ if error is not None else ""
        if record.levelno >= logging.WARNING:
            with self._lock:
                if not self._admit(record, kind, error):
                    return False
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            record.msg, record.args = _cut(message, MAX_MESSAGE_CHARS), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _cut(
                logging.Formatter().formatException(record.exc_info), MAX_TRACEBACK_CHARS
            )
        return True

    def _admit(self, record: logging.LogRecord, kind: str, error: BaseException | None) -> bool:
        now = self.clock()
        key = (record.name, str(record.msg), kind)
        count = self._counts.get(key)
        if count is None or now - count[0] >= self.window:
            suppressed = int(count[2]) if count is not None else 0
            count = self._counts[key] = [now, 0, 0]
            if suppressed:
                record.suppressed = suppressed
        if count[1] >= self.burst:
            count[2] += 1
            return False
        count[1] += 1
        if error is not None:
            last = self._tracebacks.get(kind)
            if last is not None and now - last < self.window:  # one line, no traceback
                record.exc_info = None
                record.exc_text = _cut(f"{kind}: {error}", MAX_MESSAGE_CHARS)
            else:
                self._tracebacks[kind] = now
        if len(self._counts) > 10_000:  # messages differ by template only: never in practice
            self._counts.clear()
        return True


def configure(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(BoundedLines())
    handler.setFormatter(
        JSONFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):  # the access log is ours (with the request id)
        logging.getLogger(noisy).disabled = True
