"""Errors as JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, mapped
from exceptions in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmchain_server.engine import ContextLengthError, EngineStopped, QueueFull

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.kind, error.param), error.status, headers=error.headers
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    first_field = None
    for e in exc.errors()[:5]:
        field = _field(tuple(e.get("loc", ())))
        first_field = first_field or field
        if e.get("type") == "json_invalid":
            problems.append("the body is not valid JSON")
            first_field = "body"
        else:
            problems.append(f"{field}: {e.get('msg', 'invalid')}")
    return JSONResponse(error_body("; ".join(problems), "invalid_request_error", first_field), 400)


def install(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
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

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return _validation(request, exc)

    async def context(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), "invalid_request_error", "messages", "context_length_exceeded"),
            400,
        )

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), "rate_limit_error"), 429, headers={"Retry-After": "1"}
        )

    async def stopped(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body("the server is shutting down", "service_unavailable"),
            503,
            headers={"Retry-After": "1"},
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("Failed a request: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body("internal error", "server_error"), 500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ContextLengthError, context)
    app.add_exception_handler(QueueFull, busy)
    app.add_exception_handler(EngineStopped, stopped)
    app.add_exception_handler(Exception, unexpected)
