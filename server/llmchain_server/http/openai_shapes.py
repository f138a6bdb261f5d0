"""The bodies of OpenAI's completion answers: a whole chat or text completion, and the chunk
events of a streamed one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmchain_server.dataplane import Result
from llmchain_server.dataplane.structured import CallStream, ToolCall, read_calls
from llmchain_server.engine import Chunk
from llmchain_server.http.sse import data_event

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
"""The engine's finish reasons in OpenAI's words."""
DONE = "data: [DONE]\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _ident(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def completion(
    result: Result, model: str, chat: bool, calls: Collection[str] | None = None
) -> dict[str, Any]:
    """A whole (non-streamed) answer, as a chat completion or a text completion; with `calls`
    (tools offered), a reply that is a call block as its tool calls."""
    finish = FINISH.get(result.finish_reason, "stop")
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        made = read_calls(result.text, calls)[1] if calls else []
        if made:
            message = {"role": "assistant", "content": None, "tool_calls": _calls(made)}
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
    return {
        "id": _ident(chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


def _calls(calls: list[ToolCall], start: int = 0, streamed: bool = False) -> list[dict[str, Any]]:
    return [
        {
            **({"index": start + i} if streamed else {}),
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for i, c in enumerate(calls)
    ]


class ChunkEvents:
    """The `data:` events of one streamed answer (`chat.completion.chunk` or `text_completion`
    objects), all with the same id; with `include_usage` each carries a usage field, null but in
    the last one. With `calls` (tools offered) a call block is held until whole, then sent as
    `tool_calls` deltas, one per call, and the answer ends with finish_reason `tool_calls`."""

    def __init__(
        self, model: str, chat: bool, include_usage: bool, calls: Collection[str] | None = None
    ) -> None:
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.ident = _ident(chat)
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())
        self._calls = CallStream(calls) if calls and chat else None
        self._made = 0

    def _event(self, choice: dict[str, Any], totals: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.ident,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice else [],
        }
        if self.include_usage:
            body["usage"] = totals
        return data_event(body)

    def opening(self) -> str | None:
        """A chat stream first names the assistant's role."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        return self._event({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def pieces(self, chunk: Chunk) -> list[str]:
        """The events of a chunk: none for a chunk with neither text nor an end."""
        finish = None if chunk.finish_reason is None else FINISH.get(chunk.finish_reason, "stop")
        if self._calls is None:
            if not chunk.text and finish is None:
                return []
            content = {"delta": {"content": chunk.text}} if self.chat else {"text": chunk.text}
            return [self._event({"index": 0, **content, "logprobs": None, "finish_reason": finish})]
        out = list(self._calls.feed(chunk.text))
        if finish is not None:
            out += self._calls.finish()
        events = [self._delta(item) for item in out]
        if finish is not None:
            finish = "tool_calls" if self._made else finish
            events.append(
                self._event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
            )
        return events

    def _delta(self, item: str | ToolCall) -> str:
        if isinstance(item, str):
            delta: dict[str, Any] = {"content": item}
        else:
            delta = {"tool_calls": _calls([item], self._made, streamed=True)}
            self._made += 1
        return self._event({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def closing(self, final: Chunk | None) -> str | None:
        """The usage event after the last chunk, when asked for."""
        if not self.include_usage or final is None:
            return None
        return self._event({}, usage(final.prompt_tokens, final.completion_tokens))


# -- the same bodies as models, for the OpenAPI document ------------------------------------------
Finish = Literal["stop", "length", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CalledFunction(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Finish


class ChatCompletion(BaseModel):
    """A whole chat answer; with `stream: true` the answer is instead `text/event-stream`:
    `data: <chat.completion.chunk JSON>` events, then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Finish


class TextCompletion(BaseModel):
    """A whole text answer; with `stream: true` the answer is instead `text/event-stream`:
    `data: <text_completion JSON>` events, then `data: [DONE]`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="Floats, or base64 of little-endian float32 (encoding_format base64)."
    )
    truncated: bool = Field(
        description="Not OpenAI's: the input was longer than the model's longest input and "
        "only its beginning was embedded."
    )


class EmbeddingList(BaseModel):
    """`/v1/embeddings`: one item per input, in input order."""

    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmchain"}
