"""The one table that turns serving errors into HTTP (http/errors.py): every kind of
ServingError anywhere in the server answers with its status, OpenAI error type, code and
Retry-After, as JSON and as a stream's error event; anything else is a logged, quiet 500."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

import llmchain_server
from llmchain_server import errors
from llmchain_server.chains.runtime import ChainOutputError
from llmchain_server.chains.templates import ChainInputError
from llmchain_server.dataplane import ServerSettings
from llmchain_server.dataplane.tool_calls import ToolCallFailed
from llmchain_server.engine import ContextLengthError, EngineStopped, GrammarError, QueueFull
from llmchain_server.http.errors import TABLE, install, kind_of, problem

Row = tuple[int, str, str | None, bool]  # status, type, code, Retry-After
BAD_REQUEST: Row = (400, "invalid_request_error", None, False)
TOO_LONG: Row = (400, "invalid_request_error", "context_length_exceeded", False)
OVERLOADED: Row = (429, "rate_limit_error", None, True)
UNAVAILABLE: Row = (503, "service_unavailable", None, True)
OUTPUT: Row = (502, "output_parse_error", None, False)
EXPECTED: dict[type[errors.ServingError], Row] = {
    errors.InvalidRequest: BAD_REQUEST,
    errors.PromptTooLong: TOO_LONG,
    errors.ModelNotFound: (404, "invalid_request_error", None, False),
    errors.Overloaded: OVERLOADED,
    errors.Draining: UNAVAILABLE,
    errors.Unavailable: UNAVAILABLE,
    errors.OutputInvalid: OUTPUT,
    errors.GenerationFailed: (500, "server_error", None, False),
    # Kinds of them raised by the layers below the routes:
    ChainInputError: BAD_REQUEST,
    ChainOutputError: OUTPUT,
    ContextLengthError: TOO_LONG,
    GrammarError: BAD_REQUEST,
    ToolCallFailed: (502, "tool_error", None, False),
    QueueFull: OVERLOADED,
    EngineStopped: UNAVAILABLE,
}


def _every_kind() -> set[type[errors.ServingError]]:
    """Every subclass of ServingError in the server, after importing all its modules."""
    for module in pkgutil.walk_packages(llmchain_server.__path__, "llmchain_server."):
        importlib.import_module(module.name)
    found: set[type[errors.ServingError]] = set()
    todo = [errors.ServingError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def _row(error: errors.ServingError) -> Row:
    kind = kind_of(error)
    return kind.status, kind.type, kind.code, kind.retry_after


def test_every_kind_of_serving_error_is_expected_here() -> None:
    """A new kind anywhere in the server fails this test until its answer is decided here
    (and in the table, when its parent's row does not fit)."""
    assert _every_kind() == set(EXPECTED)


def test_each_kind_in_the_errors_module_has_its_own_row() -> None:
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ServingError)
    }
    assert defined <= set(TABLE)


@pytest.mark.parametrize("cls", EXPECTED, ids=lambda cls: cls.__name__)
def test_each_kind_answers_with_its_row(cls: type[errors.ServingError]) -> None:
    assert _row(cls("x")) == EXPECTED[cls]


def test_a_kind_below_another_takes_the_nearest_row() -> None:
    class Deeper(errors.PromptTooLong):
        pass

    assert _row(Deeper("x")) == TOO_LONG


def _client(exc: Exception, retry_after: int = 7) -> TestClient:
    app = FastAPI()
    install(app, retry_after)

    @app.get("/fail")
    async def fail() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("cls", [QueueFull, errors.Draining, errors.Unavailable])
def test_retry_after_follows_the_setting(cls: type[errors.ServingError]) -> None:
    response = _client(cls("busy"), retry_after=7).get("/fail")
    assert response.status_code == EXPECTED[cls][0]
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == EXPECTED[cls][1]


def test_json_answers_name_the_field_and_code() -> None:
    response = _client(errors.PromptTooLong("prompt has 900 tokens", param="prompt")).get("/fail")
    assert response.status_code == 400
    assert "retry-after" not in response.headers
    assert response.json() == {
        "error": {
            "message": "prompt has 900 tokens",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "context_length_exceeded",
        }
    }


def test_unexpected_errors_are_a_quiet_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "llmchain_server.http.errors"):
        response = _client(KeyError("secret internals")).get("/fail")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert "secret internals" not in response.text
    assert any("Failed a request: KeyError" in r.getMessage() for r in caplog.records)


def test_stream_events_use_the_same_table(caplog: pytest.LogCaptureFixture) -> None:
    full = problem(QueueFull("the engine queue is full (64 waiting)"))
    assert full.kind.status == 429
    assert full.body()["error"]["type"] == "rate_limit_error"
    assert problem(ChainInputError("input lacks topic")).body()["error"]["param"] == "input"
    with caplog.at_level(logging.ERROR, "llmchain_server.http.errors"):
        broken = problem(RuntimeError("boom"), "a stream")
    assert (broken.kind.status, broken.message) == (500, "internal error")
    assert any("Failed a stream: RuntimeError" in r.getMessage() for r in caplog.records)


def test_retry_after_is_read_from_the_environment() -> None:
    assert ServerSettings.from_env("m", {}).retry_after_seconds == 1
    env = {"LLMCHAIN_RETRY_AFTER_SECONDS": "5"}
    assert ServerSettings.from_env("m", env).retry_after_seconds == 5
