"""OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions` and `/v1/completions`, whole
or streamed as server-sent events. They only translate between HTTP and the dataplane."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from llmchain_server.dataplane import DataPlane
from llmchain_server.engine import SamplingParams
from llmchain_server.http.errors import problem
from llmchain_server.http.openai_shapes import (
    DONE,
    ChatCompletion,
    ChunkEvents,
    Model,
    ModelList,
    TextCompletion,
    completion,
    model_card,
)
from llmchain_server.http.openapi import errors, event_stream
from llmchain_server.http.schemas import ChatRequest, CompletionRequest, Sampling
from llmchain_server.http.sse import data_event, sse_response

Answer = JSONResponse | StreamingResponse


def add_openai_routes(app: FastAPI, plane: DataPlane) -> None:
    model_name = plane.settings.model_name

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(model_name)]}

    @app.get("/v1/models/{model_id:path}", response_model=Model, responses=errors(404))
    async def model(model_id: str) -> dict[str, Any]:
        plane.check_model(model_id)
        return model_card(model_name)

    @app.post("/v1/chat/completions", response_model=None, responses=_answers(ChatCompletion))
    async def chat(request: ChatRequest) -> Answer:
        plane.check_model(request.model)
        messages = [(m.role, m.text()) for m in request.messages]
        params = _params(plane, request, request.max_completion_tokens or request.max_tokens)
        prompt = functools.partial(plane.chat_prompt, messages)
        return await _answer(plane, request, prompt, params, "messages", chat=True)

    @app.post("/v1/completions", response_model=None, responses=_answers(TextCompletion))
    async def completions(request: CompletionRequest) -> Answer:
        plane.check_model(request.model)
        params = _params(plane, request, request.max_tokens)
        prompt = functools.partial(plane.text_prompt, request.text(), "prompt")
        return await _answer(plane, request, prompt, params, "prompt", chat=False)


def _answers(whole: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The answers of a generating route, for the OpenAPI document."""
    streamed = event_stream("`data: <chunk JSON>` events, then `data: [DONE]` (stream: true)")
    return {
        200: {"model": whole, "description": "The answer.", "content": streamed},
        **errors(400, 404, 413, 429, 500, 503),
    }


def _params(plane: DataPlane, request: Sampling, max_tokens: int | None) -> SamplingParams:
    return plane.params(
        max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        stop=request.stops(),
    )


async def _answer(
    plane: DataPlane,
    request: Sampling,
    make_prompt: Callable[[], Awaitable[list[int]]],
    params: SamplingParams,
    field: str,
    chat: bool,
) -> Answer:
    """The answer, whole or streamed. The concurrency place comes first (tokenizing a long
    prompt is work too), held until the last event of a stream; a prompt that cannot fit is
    an error answer naming the request's `field`, before any stream."""
    release = plane.admission.hold()  # released at the stream's end, or if it never streams
    try:
        prompt = await make_prompt()
        plane.fit(prompt, params, field)
    except BaseException:
        release()
        raise
    model = plane.settings.model_name
    if request.stream:
        usage = request.stream_options is not None and request.stream_options.include_usage
        shape = ChunkEvents(model, chat, usage)
        return sse_response(_events(plane, prompt, params, shape, release), release)
    try:
        result = await plane.complete(prompt, params)
    finally:
        release()
    return JSONResponse(completion(result, model, chat))


async def _events(
    plane: DataPlane,
    prompt: list[int],
    params: SamplingParams,
    shape: ChunkEvents,
    release: Callable[[], None],
) -> AsyncIterator[str]:
    try:
        if opening := shape.opening():
            yield opening
        final = None
        async for chunk in plane.stream(prompt, params):
            final = chunk
            if piece := shape.piece(chunk):
                yield piece
        if closing := shape.closing(final):
            yield closing
        yield DONE
    except Exception as e:  # after the 200 is sent an error can only be an event
        yield data_event(problem(e, "a stream").body())
    finally:
        release()
