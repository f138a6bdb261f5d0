"""Where errors become HTTP, from one table: each kind of `llmchain_server.errors` has a status,
an OpenAI error type, a code and whether Retry-After is sent. The JSON answers
(`{"error": {"message", "type", "param", "code"}}`, OpenAI's shape) and the error events of
streams are both made from it. Anything else is a logged 500 that says only "internal error"."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmchain_server.dataplane.tool_calls import ToolCallFailed
from llmchain_server.errors import (
    Draining,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    OutputInvalid,
    Overloaded,
    PromptTooLong,
    ServingError,
    Unavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """How one kind of error is answered."""

    status: int
    type: str
    code: str | None = None
    retry_after: bool = False


TABLE: dict[type[ServingError], Kind] = {
    ServingError: Kind(500, "server_error"),
    InvalidRequest: Kind(400, "invalid_request_error"),
    PromptTooLong: Kind(400, "invalid_request_error", "context_length_exceeded"),
    ModelNotFound: Kind(404, "invalid_request_error"),
    Overloaded: Kind(429, "rate_limit_error", retry_after=True),
    Draining: Kind(503, "service_unavailable", retry_after=True),
    Unavailable: Kind(503, "service_unavailable", retry_after=True),
    OutputInvalid: Kind(502, "output_parse_error"),
    GenerationFailed: Kind(500, "server_error"),
    ToolCallFailed: Kind(502, "tool_error"),
}
INTERNAL = Kind(500, "server_error")
"""Any other exception: a bug or a failure the log explains; its text is never shown."""


@dataclass(frozen=True)
class Problem:
    """An error as the client sees it."""

    kind: Kind
    message: str
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind.type, self.param, self.kind.code)


def kind_of(error: ServingError) -> Kind:
    """The row of the error's class, or of the nearest class above it in the table."""
    for cls in type(error).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    raise AssertionError("ServingError is in the table")


def problem(exc: BaseException, what: str = "a request") -> Problem:
    """The client's view of `exc`; an unexpected exception is logged (as failing `what`)."""
    if isinstance(exc, ServingError):
        return Problem(kind_of(exc), exc.message, exc.param)
    log.error("Failed %s: %s", what, type(exc).__name__, exc_info=exc)
    return Problem(INTERNAL, "internal error")


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def install(app: FastAPI, retry_after_seconds: int) -> None:
    """Exception handlers answering every error as OpenAI-shaped JSON."""

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        found = problem(exc)
        headers = {"Retry-After": str(retry_after_seconds)} if found.kind.retry_after else None
        return JSONResponse(found.body(), found.kind.status, headers=headers)

    app.add_exception_handler(ServingError, answer)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, answer)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: unknown paths and methods, bodies it cannot read."""
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:  # e.g. not UTF-8
        message = "the body is not valid JSON (UTF-8 expected)"
    return JSONResponse(
        error_body(message, kind, "body" if exc.status_code == 400 else None),
        exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    """A body that does not match its schema: a 400 naming the field at fault by its path in
    the body (`messages.0.content`), never by pydantic's names for union members; of a union's
    errors, the one deepest into the body (a list's bad item rather than "not a string")."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    fields = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid":
            return JSONResponse(
                error_body("the body is not valid JSON", "invalid_request_error", "body"), 400
            )
        field = public_path(exc.body, tuple(e.get("loc", ())), e.get("type") == "missing")
        fields.append(field)
        problems.append(f"{field}: {e.get('msg', 'invalid')}")
    param = max(fields, key=lambda f: f.count("."), default="body")
    message = "; ".join(dict.fromkeys(problems))
    return JSONResponse(error_body(message, "invalid_request_error", param), 400)


def public_path(body: Any, loc: tuple[Any, ...], missing: bool = False) -> str:
    """The keys and indexes of `loc` that are really in `body` (and, for a missing field, the
    last one): pydantic's loc also holds the union member tried (`str`, `list[constrained-str]`),
    which is no field a client sent."""
    parts: list[str] = []
    here = body
    steps = list(loc[1:]) if loc[:1] == ("body",) else list(loc)
    for i, step in enumerate(steps):
        in_object = isinstance(here, dict) and isinstance(step, str) and step in here
        in_array = isinstance(here, list) and isinstance(step, int) and 0 <= step < len(here)
        if in_object or in_array:
            here = here[step]
        elif not (missing and i == len(steps) - 1 and isinstance(here, dict)):
            continue
        parts.append(str(step))
    return ".".join(parts) or "body"
