"""The served OpenAPI document, made to be trusted by client generators and fuzzers: the error
answers the server really sends (OpenAI's error shape; never FastAPI's 422), the streams'
`text/event-stream`, the bearer key when one is configured, this server's own limits, and the
chain's request bodies built from its declared inputs. `tests/integration/test_openapi.py` runs
schemathesis against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from llmchain_server.dataplane import ServerSettings


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorAnswer(BaseModel):
    """Every error, as OpenAI's API answers them."""

    error: ErrorDetail


WHY = {
    400: "A bad request: `param` names the field at fault; `code` is `context_length_exceeded` "
    "for a prompt that does not fit.",
    401: "The API key is missing or wrong.",
    404: "No such model (or path).",
    413: "The body is larger than this server accepts.",
    429: "Too many requests in flight; retry after `Retry-After` seconds.",
    500: "The model failed while generating (the server's log says why).",
    502: "The model's output is invalid (a chain step's JSON, cut by its maxTokens).",
    503: "Draining for shutdown, or the memory store is unreachable; retry after "
    "`Retry-After` seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses."""
    return {s: _error(s) for s in statuses}


def _error(status: int) -> dict[str, Any]:
    """JSON whatever the route's own media type (a stream's refusal is JSON too)."""
    return {
        "description": WHY[status],
        "content": {"application/json": {"schema": _ref("ErrorAnswer")}},
    }


class EventStream(StreamingResponse):
    """The response class of routes that only stream: documents text/event-stream alone."""

    media_type = "text/event-stream"


def event_stream(description: str, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The `content` entry of a server-sent-events answer: the schema is one event's (its
    `event` name, when `names` are given, and its `data`, JSON text)."""
    fields: dict[str, Any] = {
        "data": {"type": "string", "contentMediaType": "application/json"},
    }
    if names:
        fields["event"] = {"type": "string", "enum": list(names)}
    schema = {
        "type": "object",
        "description": description,
        "properties": fields,
        "required": ["event"] if names else ["data"],
    }
    return {"text/event-stream": {"schema": schema}}


def install(
    app: FastAPI, settings: ServerSettings, api_key: bool, chain_bodies: Mapping[str, Any]
) -> None:
    """Serves the document below as /openapi.json (made once, on the first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _without_422(doc)
            _add_models(doc, ErrorAnswer)
            _limits(doc, settings)
            _chain_bodies(doc, chain_bodies)
            _retry_after(doc)
            if api_key:
                _bearer(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for item in doc.get("paths", {}).values() for op in item.values()]


def _without_422(doc: dict[str, Any]) -> None:
    """FastAPI declares a 422 for every body; this server answers a bad body with a 400."""
    for op in _operations(doc):
        op.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _retry_after(doc: dict[str, Any]) -> None:
    for op in _operations(doc):
        for status in ("429", "503"):
            if status in op.get("responses", {}):
                op["responses"][status]["headers"] = RETRY_AFTER


def _bearer(doc: dict[str, Any]) -> None:
    """The API key, as `Authorization: Bearer <key>` on every operation."""
    components = doc.setdefault("components", {})
    components["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "The key in the file LLMCHAIN_API_KEY_FILE names.",
        }
    }
    for op in _operations(doc):
        op["security"] = [{"apiKey": []}]
        op["responses"]["401"] = _error(401)


def _limits(doc: dict[str, Any], settings: ServerSettings) -> None:
    """This server's max_tokens limit, as a maximum on the fields that ask for tokens."""
    schemas = doc.get("components", {}).get("schemas", {})
    for model, field in (
        ("ChatRequest", "max_tokens"),
        ("ChatRequest", "max_completion_tokens"),
        ("CompletionRequest", "max_tokens"),
    ):
        _integer(schemas, model, field)["maximum"] = settings.max_tokens_limit
    for model in ("ChatRequest", "CompletionRequest"):  # int64, which FastAPI made floats
        _integer(schemas, model, "seed").update(minimum=-(2**63), maximum=2**63 - 1)


def _integer(schemas: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    """The integer choice of an optional integer field's schema."""
    prop = schemas[model]["properties"][field]
    return next(c for c in prop.get("anyOf", [prop]) if c.get("type") == "integer")


def _add_models(doc: dict[str, Any], *models: type[BaseModel]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema


def _chain_bodies(doc: dict[str, Any], bodies: Mapping[str, Any]) -> None:
    """The chain's request bodies, built from its declared inputs, in place of the loose ones
    its handlers parse (the runtime checks the inputs itself, with its own messages)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for path, model in bodies.items():
        _add_models(doc, model)
        body = doc["paths"][path]["post"]["requestBody"]
        body["content"]["application/json"]["schema"] = _ref(model.__name__)
    for name in ("InvokeRequest", "BatchRequest"):
        if bodies and not _referenced(doc, name):
            schemas.pop(name, None)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _referenced(doc: dict[str, Any], name: str) -> bool:
    return f'"#/components/schemas/{name}"' in str(doc.get("paths", {})).replace("'", '"')
