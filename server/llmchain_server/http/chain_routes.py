"""Chain endpoints in LangServe's shapes: `/v1/chains/<name>/invoke`, `/batch`, `/stream`
(`{"input": …, "config": …}` → `{"output": …, "metadata": …}`; the stream is LangServe's
`metadata` / `data` / `end` server-sent events)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmchain_server.chains.memory import MemoryUnavailable
from llmchain_server.chains.runtime import ChainOutputError, ChainRunner
from llmchain_server.chains.templates import ChainInputError
from llmchain_server.engine import ContextLengthError
from llmchain_server.http.errors import APIError
from llmchain_server.http.sse import sse_response

MAX_BATCH = 16


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Any
    config: dict[str, Any] | None = None
    kwargs: dict[str, Any] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH)]
    config: dict[str, Any] | list[dict[str, Any]] | None = None


def _errors(exc: Exception) -> APIError:
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param="input")
    if isinstance(exc, ChainInputError):
        return APIError(400, str(exc), param="input")
    if isinstance(exc, ChainOutputError):
        return APIError(502, str(exc), "output_parse_error")
    if isinstance(exc, MemoryUnavailable):
        return APIError(503, str(exc), "service_unavailable", headers={"Retry-After": "1"})
    raise exc


def add_chain_routes(app: FastAPI, runner: ChainRunner) -> None:
    plane = runner.plane
    base = f"/v1/chains/{runner.name}"

    async def run_one(given: Any, config: Any) -> tuple[str, Any, dict[str, int]]:
        try:
            inputs = runner.inputs(given)
            run = await runner.invoke(inputs, runner.session(config))
        except (ChainInputError, ChainOutputError, MemoryUnavailable, ContextLengthError) as e:
            raise _errors(e) from None
        usage = {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens}
        return str(uuid.uuid4()), run.output, usage

    @app.post(f"{base}/invoke", tags=["chains"])
    async def invoke(request: InvokeRequest) -> dict[str, Any]:
        with plane.admitted():
            run_id, output, usage = await run_one(request.input, request.config)
        return {
            "output": output,
            "callback_events": [],
            "metadata": {"run_id": run_id, "feedback_tokens": [], "usage": usage},
        }

    @app.post(f"{base}/batch", tags=["chains"])
    async def batch(request: BatchRequest) -> dict[str, Any]:
        configs = (
            request.config
            if isinstance(request.config, list)
            else [request.config] * len(request.inputs)
        )
        if len(configs) != len(request.inputs):
            raise APIError(400, "config must be one object or one per input", param="config")
        with plane.admitted(len(request.inputs)):  # a place per item; the engine batches them
            try:
                async with asyncio.TaskGroup() as group:  # one failure cancels the others
                    tasks = [
                        group.create_task(run_one(i, c))
                        for i, c in zip(request.inputs, configs, strict=True)
                    ]
            except ExceptionGroup as e:
                raise e.exceptions[0] from None
            results = [t.result() for t in tasks]
        return {
            "output": [r[1] for r in results],
            "callback_events": [],
            "metadata": {"run_ids": [r[0] for r in results]},
        }

    @app.post(f"{base}/stream", tags=["chains"])
    async def stream(request: InvokeRequest) -> StreamingResponse:
        try:
            inputs = runner.inputs(request.input)
            session = runner.session(request.config)
        except ChainInputError as e:
            raise _errors(e) from None
        release = plane.hold()
        run_id = str(uuid.uuid4())

        async def events() -> AsyncIterator[str]:
            try:
                yield f"event: metadata\ndata: {json.dumps({'run_id': run_id})}\n\n"
                async for piece in runner.stream(inputs, session):
                    yield f"event: data\ndata: {json.dumps(piece, ensure_ascii=False)}\n\n"
                yield "event: end\n\n"
            except (
                ChainInputError,
                ChainOutputError,
                MemoryUnavailable,
                ContextLengthError,
                APIError,
            ) as e:
                error = e if isinstance(e, APIError) else _errors(e)
                body = {"status_code": error.status, "message": error.message}
                yield f"event: error\ndata: {json.dumps(body)}\n\n"
            finally:
                release()

        return sse_response(events(), release)
