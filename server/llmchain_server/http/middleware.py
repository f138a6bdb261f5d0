"""Around every request: request id, body size limit and read timeout, API key, metrics and
one log line. Pure ASGI, so streamed responses are measured until their last byte."""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmchain_server.contract import LIVE_PATH, METRICS_PATH, READY_PATH
from llmchain_server.dataplane import ServerMetrics
from llmchain_server.http.errors import TABLE, error_body

log = logging.getLogger("llmchain_server.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

OPEN_PATHS = (LIVE_PATH, READY_PATH, METRICS_PATH)  # probes and scraping need no key
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", *OPEN_PATHS)
MODEL_ROUTE = "/v1/models/{id}"  # one label for every model id: ids are client input
SERIES_STATUSES = ("200", *sorted({str(k.status) for k in TABLE.values() if k.status >= 500}))
"""Statuses whose request series every route has from the start, at 0: rate() cannot count the
first requests (or the first failures) of a series born with them, so without these a new pod's
first burst, or a first burst of errors, would never show in the dashboard and alerts."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        metrics: ServerMetrics,
        max_body_bytes: int,
        api_key: str | None,
        extra_routes: tuple[str, ...] = (),
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.routes = (*ROUTES, *extra_routes)
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode() if api_key else None
        for route in (*self.routes, MODEL_ROUTE):
            metrics.latency.labels(route)
            for status in SERIES_STATUSES:
                metrics.requests.labels(route, status)

    def _route(self, path: str) -> str:
        """The metrics label of a path: a known route, its template, or `other` (bounded)."""
        if path in self.routes:
            return path
        return MODEL_ROUTE if path.startswith("/v1/models/") else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        path = scope.get("path", "")
        route = self._route(path)
        started = time.monotonic()
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            problem = self._refuse(headers, path)
            if problem is not None:
                await self._reply(send_with_id, *problem)
                return
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read_body(receive)
            except TimeoutError:
                await self._reply(
                    send_with_id,
                    408,
                    f"the body did not arrive within {self.body_timeout:g} s",
                    "invalid_request_error",
                )
                return
            if body is None:
                await self._reply(
                    send_with_id,
                    413,
                    f"the body exceeds {self.max_body_bytes} bytes",
                    "invalid_request_error",
                )
                return
            try:
                await self.app(scope, self._replay(body, receive), send_with_id)
            except Exception:
                # Starlette re-raises an error it has answered (and http/errors.py has logged)
                # so that the server logs it too: once is enough.
                if not status["started"]:
                    raise
        finally:
            elapsed = time.monotonic() - started
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if route not in OPEN_PATHS:
                log.info(
                    "Served %s %s",
                    scope.get("method"),
                    route,
                    extra={"status": status["code"], "seconds": round(elapsed, 4)},
                )
            request_id.reset(token)

    def _refuse(self, headers: dict[str, str], path: str) -> tuple[int, str, str] | None:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return 413, f"the body exceeds {self.max_body_bytes} bytes", "invalid_request_error"
        if self.api_key is not None and path not in OPEN_PATHS:
            given = headers.get("authorization", "")
            scheme, _, key = given.partition(" ")
            # Constant-time, and the same answer whether the key is missing or wrong.
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), self.api_key):
                return 401, "invalid or missing API key", "authentication_error"
        return None

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, read before the app runs (bodies are small); None when too big."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replayed() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then disconnects, as the server reports them

        return replayed

    @staticmethod
    async def _reply(send: Send, status: int, message: str, kind: str) -> None:
        body = json.dumps(error_body(message, kind)).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if status == 408:  # the rest of the body may still be on its way
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
