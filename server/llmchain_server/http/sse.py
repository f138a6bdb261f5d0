"""Server-sent event responses that hold a concurrency place until their last event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask


def sse_response(events: AsyncIterator[str], release: Callable[[], None]) -> StreamingResponse:
    """`release` runs when the events end (their own `finally`) and, as a background task,
    after a response whose events never started; it must be safe to call twice."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(release),
    )
