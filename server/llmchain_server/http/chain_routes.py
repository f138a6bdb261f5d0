"""Chain endpoints in LangServe's shapes: `/v1/chains/<name>/invoke`, `/batch`, `/stream`
(`{"input": …, "config": …}` → `{"output": …, "metadata": …}`; the stream is LangServe's
`metadata` / `data` / `end` server-sent events, and `error` with status_code and message)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmchain_server.chains.runtime import ChainRun, ChainRunner, Prepared
from llmchain_server.errors import InvalidRequest
from llmchain_server.http.chain_schemas import answer_models
from llmchain_server.http.errors import problem
from llmchain_server.http.openapi import EventStream, errors, event_stream
from llmchain_server.http.sse import named_event, sse_response

MAX_BATCH = 16
OPERATIONS = ("invoke", "batch", "stream")


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Any
    config: dict[str, Any] | None = None
    kwargs: dict[str, Any] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH)]
    config: dict[str, Any] | list[dict[str, Any]] | None = None


def add_chain_routes(app: FastAPI, runner: ChainRunner) -> tuple[str, ...]:
    """Adds the chain's routes; returns their paths."""
    routes = ChainRoutes(runner)
    paths = tuple(f"/v1/chains/{runner.name}/{op}" for op in OPERATIONS)
    invoked, batched = answer_models(runner)
    streamed = event_stream(
        "LangServe's events: `metadata`, then `data` pieces of the output, then `end`; or "
        "`error` ({status_code, message}) for a failure after the answer began.",
        ("metadata", "data", "end", "error"),
    )
    refusals = errors(400, 413, 429, 500, 502, 503)
    answers: dict[str, dict[int | str, dict[str, Any]]] = {
        "invoke": {200: {"model": invoked, "description": "The output."}, **refusals},
        "batch": {200: {"model": batched, "description": "The outputs, in order."}, **refusals},
        "stream": {200: {"description": "The output, streamed.", "content": streamed}, **refusals},
    }
    for path, op in zip(paths, OPERATIONS, strict=True):
        app.add_api_route(
            path,
            getattr(routes, op),
            methods=["POST"],
            tags=["chains"],
            response_model=None,
            responses=answers[op],
            response_class=EventStream if op == "stream" else JSONResponse,
        )
    return paths


def batch_limit(runner: ChainRunner) -> int:
    """The most inputs a batch may hold: a place each, within the concurrency limit."""
    return min(MAX_BATCH, runner.plane.admission.max_concurrency)


class ChainRoutes:
    """The handlers of one chain's routes."""

    def __init__(self, runner: ChainRunner) -> None:
        self.runner = runner
        self.admission = runner.plane.admission

    async def invoke(self, request: InvokeRequest) -> dict[str, Any]:
        with self.admission.admitted():
            run_id, run = await self._run_one(request.input, request.config)
        usage = {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens}
        metadata = {"run_id": run_id, "feedback_tokens": [], "usage": usage} | _found(run)
        return {"output": run.output, "callback_events": [], "metadata": metadata}

    async def batch(self, request: BatchRequest) -> dict[str, Any]:
        configs = (
            request.config
            if isinstance(request.config, list)
            else [request.config] * len(request.inputs)
        )
        if len(configs) != len(request.inputs):
            raise InvalidRequest("config must be one object or one per input", param="config")
        limit = self.admission.max_concurrency
        if len(request.inputs) > limit:  # it would never be admitted: no use retrying a 429
            raise InvalidRequest(
                f"inputs has {len(request.inputs)} items, over this server's concurrency "
                f"limit {limit}: split the batch",
                param="inputs",
            )
        with self.admission.admitted(len(request.inputs)):  # a place per item: batched below
            try:
                async with asyncio.TaskGroup() as group:  # one failure cancels the others
                    tasks = [
                        group.create_task(self._run_one(i, c))
                        for i, c in zip(request.inputs, configs, strict=True)
                    ]
            except ExceptionGroup as e:
                raise e.exceptions[0] from None
            results = [t.result() for t in tasks]
        metadata: dict[str, Any] = {"run_ids": [r[0] for r in results]}
        found = [_found(r[1]) for r in results]
        for key in ("tool_calls", "sources", "truncated_queries"):
            if any(key in f for f in found):
                metadata[key] = [f.get(key, []) for f in found]
        return {
            "output": [r[1].output for r in results],
            "callback_events": [],
            "metadata": metadata,
        }

    async def stream(self, request: InvokeRequest) -> StreamingResponse:
        """The run's events. What /invoke refuses is refused here before the 200 (bad inputs,
        the memory store down, a prompt too long); only later failures are error events."""
        inputs = self.runner.inputs(request.input)
        session = self.runner.session(request.config)
        release = self.admission.hold()
        try:
            ready = await self.runner.prepare(inputs, session)
        except BaseException:
            release()
            raise
        return sse_response(self._events(ready, release), release)

    async def _run_one(self, given: Any, config: Any) -> tuple[str, ChainRun]:
        inputs = self.runner.inputs(given)
        run = await self.runner.invoke(inputs, self.runner.session(config))
        return str(uuid.uuid4()), run

    async def _events(self, ready: Prepared, release: Callable[[], None]) -> AsyncIterator[str]:
        try:
            yield named_event("metadata", {"run_id": str(uuid.uuid4())})
            async for piece in self.runner.stream(ready):
                yield named_event("data", piece)
            yield named_event("end")
        except Exception as e:  # after the 200 is sent an error can only be an event
            found = problem(e, "a chain stream")
            yield named_event("error", {"status_code": found.kind.status, "message": found.message})
        finally:
            release()


def _found(run: ChainRun) -> dict[str, Any]:
    """What a run's tool and retrieval steps did, for its metadata (only what happened)."""
    found: dict[str, Any] = {}
    if run.tool_calls:
        found["tool_calls"] = [c.to_json() for c in run.tool_calls]
    if run.sources:
        found["sources"] = [s.to_json() for s in run.sources]
    if run.truncated_queries:
        found["truncated_queries"] = run.truncated_queries
    return found
