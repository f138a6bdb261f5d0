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
from llmchain_server.dataplane.structured import (
    Tool,
    ToolCall,
    calls_text,
    json_grammar,
    tools_grammar,
    with_tools,
)
from llmchain_server.engine import Grammar, GrammarError, SamplingParams
from llmchain_server.engine.constraints import Matcher
from llmchain_server.errors import InvalidRequest
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
from llmchain_server.http.schemas import (
    ChatRequest,
    CompletionRequest,
    Message,
    NamedToolChoice,
    Sampling,
)
from llmchain_server.http.sse import data_event, sse_response

Answer = JSONResponse | StreamingResponse


def add_openai_routes(app: FastAPI, plane: DataPlane, embedding_model: str | None = None) -> None:
    model_name = plane.settings.model_name
    served = [model_name, *([embedding_model] if embedding_model else [])]

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in served]}

    @app.get("/v1/models/{model_id:path}", response_model=Model, responses=errors(404))
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != embedding_model:
            plane.check_model(model_id)
        return model_card(model_id)

    @app.post("/v1/chat/completions", response_model=None, responses=_answers(ChatCompletion))
    async def chat(request: ChatRequest) -> Answer:
        plane.check_model(request.model)
        messages = [_turn(m) for m in request.messages]
        tools = _tools_to_call(request)
        if tools:
            messages = with_tools(messages, tools)
        grammar = _grammar(request, tools)
        params = _params(
            plane, request, request.max_completion_tokens or request.max_tokens, grammar
        )
        prompt = functools.partial(plane.chat_prompt, messages)
        names = [t.name for t in tools] or None
        return await _answer(plane, request, prompt, params, "messages", chat=True, calls=names)

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


def _params(
    plane: DataPlane, request: Sampling, max_tokens: int | None, grammar: Grammar | None = None
) -> SamplingParams:
    return plane.params(
        max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        stop=request.stops(),
        grammar=grammar,
    )


def _turn(message: Message) -> tuple[str, str]:
    """A message as (role, text); an assistant turn's tool calls as the model writes them."""
    if message.role == "assistant" and message.tool_calls:
        calls = [ToolCall(c.function.name, c.function.arguments) for c in message.tool_calls]
        return "assistant", (message.text() + "\n" if message.text() else "") + calls_text(calls)
    return message.role, message.text()


def _check_formats(request: ChatRequest) -> None:
    """What the fields cannot say alone: InvalidRequest naming the field at fault."""
    names = [t.function.name for t in request.tools or []]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools must have distinct names", param="tools")
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice names {choice.function.name!r}, which is not in tools",
            param="tool_choice.function.name",
        )
    if choice == "required" and not names:
        raise InvalidRequest('tool_choice "required" needs tools', param="tool_choice")
    form = request.response_format
    if form is not None and form.type == "json_schema" and form.json_schema is None:
        raise InvalidRequest(
            "response_format of type json_schema needs its json_schema", param="response_format"
        )
    calling = bool(names) and choice != "none"
    formatted = form is not None and form.type != "text"
    if calling and formatted:
        raise InvalidRequest(
            "response_format cannot be combined with tools to call", param="response_format"
        )
    if (calling or formatted) and request.stop:
        raise InvalidRequest(
            "stop cannot be combined with response_format or tools: the output ends where "
            "its format does",
            param="stop",
        )


def _tools_to_call(request: ChatRequest) -> list[Tool]:
    """The tools the reply may call: none with tool_choice "none", only the named one."""
    _check_formats(request)
    if not request.tools or request.tool_choice == "none":
        return []
    tools = [
        Tool(t.function.name, t.function.description or "", t.function.parameters or {})
        for t in request.tools
    ]
    if isinstance(request.tool_choice, NamedToolChoice):
        return [t for t in tools if t.name == request.tool_choice.function.name]
    return tools


def _grammar(request: ChatRequest, tools: list[Tool]) -> Grammar | None:
    """The constraint on the reply: tool calls (required when asked or named), or JSON."""
    if tools:
        required = request.tool_choice not in (None, "auto")
        parallel = request.parallel_tool_calls is not False
        return _grammar_field("tools", lambda: tools_grammar(tools, required, parallel))
    form = request.response_format
    if form is None or form.type == "text":
        return None
    spec = form.json_schema
    schema, strict = (spec.schema_, bool(spec.strict)) if spec is not None else (None, False)
    return _grammar_field("response_format", lambda: json_grammar(schema, strict))


def _grammar_field(field: str, make: Callable[[], Grammar]) -> Grammar:
    """`make()`, its failures as a 400 naming the request `field`."""
    try:
        return make()
    except (GrammarError, ValueError) as e:
        raise InvalidRequest(str(e), param=field) from None


async def _answer(
    plane: DataPlane,
    request: Sampling,
    make_prompt: Callable[[], Awaitable[list[int]]],
    params: SamplingParams,
    field: str,
    chat: bool,
    calls: list[str] | None = None,
) -> Answer:
    """The answer, whole or streamed. The concurrency place comes first (tokenizing a long
    prompt is work too), held until the last event of a stream; a prompt that cannot fit is
    an error answer naming the request's `field`, before any stream."""
    release = plane.admission.hold()  # released at the stream's end, or if it never streams
    try:
        prompt = await make_prompt()
        plane.fit(prompt, params, field)
        try:  # a schema or grammar at fault fails before a stream; the matcher is used below
            matcher = await plane.constrain(params)
        except GrammarError as e:
            raise InvalidRequest(e.message, param="tools" if calls else "response_format") from None
    except BaseException:
        release()
        raise
    model = plane.settings.model_name
    if request.stream:
        usage = request.stream_options is not None and request.stream_options.include_usage
        shape = ChunkEvents(model, chat, usage, calls)
        return sse_response(_events(plane, prompt, params, matcher, shape, release), release)
    try:
        result = await plane.complete(prompt, params, matcher)
    finally:
        release()
    return JSONResponse(completion(result, model, chat, calls))


async def _events(
    plane: DataPlane,
    prompt: list[int],
    params: SamplingParams,
    matcher: Matcher | None,
    shape: ChunkEvents,
    release: Callable[[], None],
) -> AsyncIterator[str]:
    try:
        if opening := shape.opening():
            yield opening
        final = None
        async for chunk in plane.stream(prompt, params, matcher):
            final = chunk
            for piece in shape.pieces(chunk):
                yield piece
        if closing := shape.closing(final):
            yield closing
        yield DONE
    except Exception as e:  # after the 200 is sent an error can only be an event
        yield data_event(problem(e, "a stream").body())
    finally:
        release()
