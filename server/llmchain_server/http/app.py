"""The routes: OpenAI-compatible `/v1/chat/completions`, `/v1/completions`, `/v1/models` (with
SSE streaming), and `/healthz`, `/readyz`, `/metrics`. They only translate between HTTP and the
dataplane."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmchain_server.chains.runtime import ChainRunner
from llmchain_server.engine import QueueFull
from llmchain_server.http import errors
from llmchain_server.http.chain_routes import add_chain_routes
from llmchain_server.http.dataplane import DataPlane
from llmchain_server.http.errors import APIError, error_body
from llmchain_server.http.metrics import ServerMetrics
from llmchain_server.http.middleware import Guard
from llmchain_server.http.schemas import ChatRequest, CompletionRequest
from llmchain_server.http.sse import sse_response

log = logging.getLogger(__name__)
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


def create_app(
    plane: DataPlane,
    metrics: ServerMetrics,
    api_key: str | None = None,
    chain: ChainRunner | None = None,
) -> Any:
    app = FastAPI(
        title="llmchain chain server",
        version="0.1.0",
        description="OpenAI-compatible LLM server with chains (llmchain-operator).",
    )
    errors.install(app)
    model_name = plane.settings.model_name

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if plane.draining:
            return JSONResponse({"status": "draining"}, 503)
        if not plane.engine.ready:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ready", "model": model_name})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "llmchain"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest) -> JSONResponse | StreamingResponse:
        plane.check_model(request)
        prompt = plane.chat_prompt(request)
        params = plane.params(request, request.max_completion_tokens or request.max_tokens)
        if request.stream:
            usage = request.stream_options is not None and request.stream_options.include_usage
            return _stream(plane, prompt, params, "chat.completion.chunk", usage)
        return await _complete(plane, prompt, params, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest) -> JSONResponse | StreamingResponse:
        plane.check_model(request)
        prompt = plane.completion_prompt(request)
        params = plane.params(request, request.max_tokens)
        if request.stream:
            usage = request.stream_options is not None and request.stream_options.include_usage
            return _stream(plane, prompt, params, "text_completion", usage)
        return await _complete(plane, prompt, params, chat=False)

    routes: tuple[str, ...] = ()
    if chain is not None:
        add_chain_routes(app, chain)
        routes = tuple(f"/v1/chains/{chain.name}/{op}" for op in ("invoke", "batch", "stream"))
    return Guard(app, metrics, plane.settings.max_body_bytes, api_key, routes)


async def _complete(plane: DataPlane, prompt: list[int], params: Any, chat: bool) -> JSONResponse:
    """A whole (non-streamed) answer, as a chat completion or a text completion."""
    with plane.admitted():
        result = await plane.complete(prompt, params)
    finish = FINISH.get(result.finish_reason, "stop")
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
    return JSONResponse(
        {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": plane.settings.model_name,
            "choices": [choice],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }
    )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream(
    plane: DataPlane, prompt: list[int], params: Any, kind: str, include_usage: bool
) -> StreamingResponse:
    """Server-sent events. The concurrency place is taken before the response starts (so a
    refusal is a plain 429) and held until the last event."""
    plane.engine.check(prompt, params)  # a prompt that cannot fit is a 400, not a cut stream
    release = plane.hold()  # released at the stream's end, or after a response never streamed

    ident = f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    chat = kind.startswith("chat")

    def event(choice: dict[str, Any], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": plane.settings.model_name,
            "choices": [choice] if choice else [],
        }
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                yield event(
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            final = None
            async for chunk in plane.stream(prompt, params):
                final = chunk
                finish = (
                    None if chunk.finish_reason is None else FINISH.get(chunk.finish_reason, "stop")
                )
                if not chunk.text and finish is None:
                    continue
                content = {"delta": {"content": chunk.text}} if chat else {"text": chunk.text}
                yield event({"index": 0, **content, "logprobs": None, "finish_reason": finish})
            if include_usage and final is not None:
                yield event({}, _usage(final.prompt_tokens, final.completion_tokens))
            yield "data: [DONE]\n\n"
        except APIError as e:
            yield f"data: {json.dumps(error_body(e.message, e.kind))}\n\n"
        except Exception as e:  # after the 200 is sent an error can only be an event
            log.exception("Failed a stream")
            kind = "rate_limit_error" if isinstance(e, QueueFull) else "server_error"
            yield f"data: {json.dumps(error_body(str(e), kind))}\n\n"
        finally:
            release()

    return sse_response(events(), release)
