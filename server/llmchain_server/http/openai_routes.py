"""OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions` and `/v1/completions`, whole
or streamed as server-sent events. They only translate between HTTP and the dataplane."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from llmchain_server.dataplane import DataPlane
from llmchain_server.engine import SamplingParams
from llmchain_server.http.errors import problem
from llmchain_server.http.openai_shapes import DONE, ChunkEvents, completion
from llmchain_server.http.schemas import ChatRequest, CompletionRequest, Sampling
from llmchain_server.http.sse import data_event, sse_response

Answer = JSONResponse | StreamingResponse


def add_openai_routes(app: FastAPI, plane: DataPlane) -> None:
    model_name = plane.settings.model_name

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "llmchain"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest) -> Answer:
        plane.check_model(request.model)
        prompt = plane.chat_prompt([(m.role, m.text()) for m in request.messages])
        params = _params(plane, request, request.max_completion_tokens or request.max_tokens)
        return await _answer(plane, request, prompt, params, "messages", chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest) -> Answer:
        plane.check_model(request.model)
        prompt = plane.text_prompt(request.text(), "prompt")
        params = _params(plane, request, request.max_tokens)
        return await _answer(plane, request, prompt, params, "prompt", chat=False)


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
    prompt: list[int],
    params: SamplingParams,
    field: str,
    chat: bool,
) -> Answer:
    """The answer, whole or streamed. A prompt that cannot fit is an error answer naming the
    request's `field`, before any admission or stream."""
    plane.fit(prompt, params, field)
    model = plane.settings.model_name
    if request.stream:
        usage = request.stream_options is not None and request.stream_options.include_usage
        return _stream(plane, prompt, params, ChunkEvents(model, chat, usage))
    with plane.admission.admitted():
        result = await plane.complete(prompt, params)
    return JSONResponse(completion(result, model, chat))


def _stream(
    plane: DataPlane, prompt: list[int], params: SamplingParams, shape: ChunkEvents
) -> StreamingResponse:
    """Server-sent events. The concurrency place is taken before the response starts (so a
    refusal is a plain 429) and held until the last event."""
    release = plane.admission.hold()  # released at the stream's end, or if it never streams
    return sse_response(_events(plane, prompt, params, shape, release), release)


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
