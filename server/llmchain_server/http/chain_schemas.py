"""The chain's request and answer bodies as the OpenAPI document describes them, built from the
chain's declaration: its inputs (each required, no others), `config.configurable.session_id`
(required when the chain has memory) and the output its last parser gives. The handlers parse
looser bodies and the runtime checks inputs itself, so its messages never quote a bad key."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from llmchain_server.chains.runtime import ChainRunner
from llmchain_server.chains.values import MAX_DEPTH, MAX_ITEMS
from llmchain_server.config import AgentStep, LLMStep, RetrievalStep
from llmchain_server.dataplane.memory import SESSION

JSON_VALUE = (
    f"Any JSON value (strings without lone surrogates), nested at most {MAX_DEPTH} deep; "
    f"all inputs together hold at most {MAX_ITEMS} values and keys."
)


class Configurable(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: Annotated[str, Field(pattern=f"^{SESSION.pattern}$")]


class SessionConfig(BaseModel):
    """LangServe's config: the session of a chain with memory (its other keys are ignored)."""

    model_config = ConfigDict(extra="allow")
    configurable: Configurable


class RunUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ToolCallMade(BaseModel):
    """A tool call the run made (tool and agent steps), with what it was given."""

    step: str
    tool: str
    arguments: Any
    ok: bool
    seconds: float
    error: str | None = None


class SourceFound(BaseModel):
    """A passage a retrieval step found: its document, and how it ranked."""

    step: str
    source: str
    score: float
    similarity: float


PASSAGES: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "source": {"type": "string"},
            "score": {"type": "number"},
            "similarity": {"type": "number"},
        },
        "required": ["text", "source", "score", "similarity"],
    },
}
"""A retrieval step's output: the passages found, best first."""


class RunMetadata(BaseModel):
    run_id: str
    feedback_tokens: list[Any]
    usage: RunUsage
    tool_calls: list[ToolCallMade] = []
    sources: list[SourceFound] = []
    truncated_queries: list[str] = Field(
        [], description="Retrieval steps whose query was cut to the embedding model's input."
    )


class BatchMetadata(BaseModel):
    run_ids: list[str]
    tool_calls: list[list[ToolCallMade]] = []  # one list per input, when any run called tools
    sources: list[list[SourceFound]] = []  # one list per input, when any run retrieved
    truncated_queries: list[list[str]] = []


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def documented_bodies(
    runner: ChainRunner, paths: tuple[str, ...], max_batch: int
) -> dict[str, type[BaseModel]]:
    """The request body of each chain path (invoke, batch, stream), by path."""
    name = _title(runner.name)
    inputs: Any = create_model(
        f"{name}Input",
        __config__=ConfigDict(extra="forbid"),
        **{i: (Any, Field(description=JSON_VALUE)) for i in runner.chain.inputs},  # type: ignore[call-overload]
    )
    config: Any = (
        (SessionConfig, ...) if runner.memory is not None else (dict[str, Any] | None, None)
    )
    invoke = create_model(
        f"{name}InvokeRequest",
        input=(inputs, ...),
        config=config,
        kwargs=(dict[str, Any] | None, None),
    )
    batch_config: Any = (
        (SessionConfig | list[SessionConfig], ...)
        if runner.memory is not None
        else (dict[str, Any] | list[dict[str, Any]] | None, None)
    )
    batch = create_model(
        f"{name}BatchRequest",
        inputs=(Annotated[list[inputs], Field(min_length=1, max_length=max_batch)], ...),
        config=batch_config,
    )
    invoke_path, batch_path, stream_path = paths
    return {invoke_path: invoke, batch_path: batch, stream_path: invoke}


def answer_models(runner: ChainRunner) -> tuple[type[BaseModel], type[BaseModel]]:
    """The answers of invoke and batch; their output is what the output step's parser gives."""
    step = next(s for s in runner.chain.steps if s.name == runner.output_step)
    output: dict[str, Any] = {}  # a tool step's: whatever the tool answers
    if isinstance(step, AgentStep) or (isinstance(step, LLMStep) and step.output.type == "text"):
        output = {"type": "string"}
    elif isinstance(step, RetrievalStep):
        output = PASSAGES
    elif isinstance(step, LLMStep):
        output = dict(step.output.json_schema or {})
    name = _title(runner.name)
    out: Any = Annotated[Any, WithJsonSchema(output)]
    invoke = create_model(
        f"{name}InvokeAnswer",
        output=(out, ...),
        callback_events=(list[Any], ...),
        metadata=(RunMetadata, ...),
    )
    batch = create_model(
        f"{name}BatchAnswer",
        output=(list[out], ...),
        callback_events=(list[Any], ...),
        metadata=(BatchMetadata, ...),
    )
    return invoke, batch
