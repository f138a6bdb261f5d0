"""The bodies of OpenAI's completion answers: a whole chat or text completion, and the chunk
events of a streamed one."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel

from llmchain_server.dataplane import Result
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


def completion(result: Result, model: str, chat: bool) -> dict[str, Any]:
    """A whole (non-streamed) answer, as a chat completion or a text completion."""
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
    return {
        "id": _ident(chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


class ChunkEvents:
    """The `data:` events of one streamed answer (`chat.completion.chunk` or `text_completion`
    objects), all with the same id; with `include_usage` each carries a usage field, null but in
    the last one."""

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.ident = _ident(chat)
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())

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

    def piece(self, chunk: Chunk) -> str | None:
        """The event of a chunk; None for a chunk with neither text nor an end."""
        finish = None if chunk.finish_reason is None else FINISH.get(chunk.finish_reason, "stop")
        if not chunk.text and finish is None:
            return None
        content = {"delta": {"content": chunk.text}} if self.chat else {"text": chunk.text}
        return self._event({"index": 0, **content, "logprobs": None, "finish_reason": finish})

    def closing(self, final: Chunk | None) -> str | None:
        """The usage event after the last chunk, when asked for."""
        if not self.include_usage or final is None:
            return None
        return self._event({}, usage(final.prompt_tokens, final.completion_tokens))


# -- the same bodies as models, for the OpenAPI document ------------------------------------------
Finish = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


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


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmchain"}
