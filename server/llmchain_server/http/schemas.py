"""Request bodies of the OpenAI-compatible endpoints. Unknown fields are ignored (clients send
many); known ones are strictly typed (no `"2"` for 2, no `true` for 1) and bounded, so a wrong
value is a 400 naming the field. Fields of behaviours this server does not implement (log
probabilities, logit bias, penalties, the deprecated `functions`) are accepted with their neutral
values, which real clients send, and refused, naming the field, when they ask for the behaviour.
Structured output (`response_format`) and tools are served by constrained decoding."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

Text = Annotated[str, Field(max_length=1_000_000)]
Stop = Annotated[str, Field(min_length=1, max_length=256)]
MAX_STOPS = 4
STRICT = ConfigDict(extra="ignore", strict=True)


def unsupported(what: str) -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported", "{what} is not supported by this server", {"what": what}
    )


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


class CalledFunction(BaseModel):
    model_config = STRICT
    name: Annotated[str, Field(max_length=64)]
    arguments: Annotated[str, Field(max_length=100_000)] = ""


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made, as the client sends the history back."""

    model_config = STRICT
    id: Annotated[str, Field(max_length=256)] = ""
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=64)] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class Sampling(BaseModel):
    """Generation settings shared by both endpoints."""

    model_config = STRICT
    model: Annotated[str, Field(max_length=256)]
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Most tokens to generate; unset: the model's default, within the limit."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] | None = Field(
        None, description="0 decodes greedily; otherwise at least 0.001."
    )
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = Field(
        None, description="A negative seed (llama.cpp's -1) means random, as unset."
    )
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = Field(None, description="Only empty: not supported.")
    presence_penalty: float | None = Field(None, description="Only 0: not supported.")
    frequency_penalty: float | None = Field(None, description="Only 0: not supported.")

    @field_validator("temperature")
    @classmethod
    def _sampled_or_greedy(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < 1e-3:
            raise PydanticCustomError(
                "temperature", "temperature must be 0 (greedy) or at least 0.001"
            )
        return value

    @field_validator("seed")
    @classmethod
    def _random_seed(cls, value: int | None) -> int | None:
        return None if value is None or value < 0 else value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise unsupported("logit_bias")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise unsupported("a penalty")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Schema = Annotated[dict[str, Any], Field(description="A JSON schema.")]


class JsonSchemaFormat(BaseModel):
    model_config = STRICT
    name: ToolName
    description: Annotated[str, Field(max_length=10_000)] | None = None
    schema_: Schema | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text`, `json_object` (any JSON object) or `json_schema` (one matching the schema):
    enforced by constrained decoding, strict or not."""

    model_config = STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionSpec(BaseModel):
    model_config = STRICT
    name: ToolName
    description: Annotated[str, Field(max_length=10_000)] | None = None
    parameters: Schema | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = STRICT
    name: ToolName


class NamedToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = Field(None, description="Only false: not supported.")
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        None, description="Only 0: not supported."
    )
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description='Default: "auto" with tools, "none" without.'
    )
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(None, description="Only empty: use tools.")
    function_call: Literal["none", "auto"] | dict[str, Any] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise unsupported("logprobs")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise unsupported("top_logprobs")
        return value

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise unsupported("functions (deprecated; send tools)")
        return value

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, dict):
            raise unsupported("function_call (deprecated; send tool_choice)")
        return value


class CompletionRequest(Sampling):
    prompt: (
        Annotated[str, Field(min_length=1, max_length=1_000_000)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=1_000_000)]],
            Field(min_length=1, max_length=1),
        ]
    )
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = Field(
        None, description="Only null: not supported."
    )
    echo: bool = Field(False, description="Only false: not supported.")
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: Annotated[str, Field(max_length=0)] | None = Field(
        None, description="Only empty: not supported."
    )

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            raise unsupported("suffix")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise unsupported("logprobs")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise unsupported("echo")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


EmbeddingText = Annotated[str, Field(max_length=1_000_000)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=100_000)]


class EmbeddingRequest(BaseModel):
    """`/v1/embeddings`: one text, a list of texts, one list of token ids or a list of them (the
    texts' tokens in the embedding model's vocabulary, without special tokens)."""

    model_config = STRICT
    model: Annotated[str, Field(max_length=256)]
    input: (
        EmbeddingText
        | Annotated[list[EmbeddingText], Field(max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    truncate: bool = Field(
        True,
        description="Not OpenAI's: embed the beginning of an input longer than the model's "
        "longest input (and mark it `truncated`), or refuse the request when false.",
    )
