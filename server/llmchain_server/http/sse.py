"""Server-sent events: the events themselves, and responses that hold a concurrency place until
their last event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask


def data_event(body: Any) -> str:
    """An unnamed event (OpenAI's streams): `data: <json>`."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def named_event(name: str, body: Any = None) -> str:
    """A named event (LangServe's streams): `event: <name>`, then its JSON data if any."""
    if body is None:
        return f"event: {name}\n\n"
    return f"event: {name}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


def sse_response(events: AsyncIterator[str], release: Callable[[], None]) -> StreamingResponse:
    """`release` runs when the events end (their own `finally`) and, as a background task,
    after a response whose events never started; it must be safe to call twice."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(release),
    )
