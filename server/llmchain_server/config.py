"""The chain config schema: what a chain is made of (inputs, steps, memory).

The operator embeds it in the LLMChainApp CRD as `spec.chain` (adding what only the operator
uses: where the memory store runs) and renders it into the chain ConfigMap; the chain server
reads it back with `ChainConfig.model_validate`. Besides the contract module, it is the one
module of the server the operator may import, so it depends on nothing else of the server.

Field names are snake_case in Python and camelCase on the wire (`maxTokens`), as Kubernetes
resources spell them. `x-kubernetes-validations` entries are CEL rules the API server checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import jsonschema
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
StepName = Annotated[
    str,
    Field(
        pattern=IDENTIFIER,
        max_length=63,
        description="Step name; later steps use its output as the template variable of this name.",
    ),
]
"""Every step kind's `name`."""
"""Names of inputs and steps: usable as Jinja2 variables and in URLs."""

MAX_TEMPLATE_CHARS = 32768


class Schema(BaseModel):
    """Base of every schema model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


def nested(model: type[BaseModel], description: str) -> Any:
    """A sub-object field that defaults to its model's defaults (`{}` in the CRD)."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


class Generation(Schema):
    """Decoding parameters of one LLM call."""

    max_tokens: int = Field(256, ge=1, le=8192, description="Most tokens to generate.")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 decodes greedily."
    )
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: keep the smallest set of tokens "
        "whose probabilities add up to topP.",
    )
    top_k: int = Field(
        0, ge=0, le=1000, description="Keep only the topK likeliest tokens; 0 = off."
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Random seed for sampling; unset = random."
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=8,
        description="Stop sequences: generation ends before the first one produced.",
    )


class OutputParser(Schema):
    """How a step's raw text becomes its output."""

    type: Literal["text", "json"] = Field(
        "text",
        description="text: the generated text as is. json: parse it as JSON, validate it "
        "against jsonSchema when given. A json step decodes under its schema (or any JSON "
        "object), so its output is valid JSON by construction.",
    )
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema the parsed output must satisfy (type json only)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.jsonSchema) || self.type == 'json'",
                    "message": "jsonSchema needs type: json",
                    "fieldPath": ".jsonSchema",
                }
            ]
        }
    )


HEADER = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"
"""HTTP header names a tool may set."""
ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"
HOST = r"^((\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?|[0-9a-fA-F:.]+(/[0-9]{1,3})?)$"
"""An allowed host: a lowercase host name (`*.` for its subdomains), an IP address or a CIDR."""


def header_names_rule() -> dict[str, Any]:
    """The CEL rule on a map keyed by header names (a structural schema has no
    patternProperties)."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, k.matches('{HEADER}'))",
                "message": "header names are letters, digits and dashes (at most 64)",
            }
        ]
    }


def _header_names(value: dict[str, Any]) -> dict[str, Any]:
    bad = [k for k in value if not re.fullmatch(HEADER, k)]
    if bad:
        raise ValueError(f"header name {bad[0][:70]!r} is not letters, digits and dashes")
    return value


class HttpBinding(Schema):
    """How a tool is called over HTTP. Templates are Jinja2 (sandboxed, strict) over the call's
    arguments; in `url` every substituted value is percent-encoded (a value cannot add a path
    segment or a query), in `body` every substituted value is written as JSON."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "GET", description="HTTP method."
    )
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="URL template (http or https), e.g. "
        "http://orders.shop.svc/orders/{{ order_id }}; values are percent-encoded.",
    )
    headers: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Header templates by header name (no secrets here: see headersFromSecrets).",
        json_schema_extra=header_names_rule(),
    )

    body: str | None = Field(
        None,
        max_length=MAX_TEMPLATE_CHARS,
        description="Body template (values written as JSON); omitted: POST, PUT and PATCH send "
        "the arguments as a JSON object, GET and DELETE no body.",
    )
    timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Most seconds a call may take, redirects included."
    )
    max_response_bytes: int = Field(
        1048576, ge=1, le=16777216, description="Largest response body read; larger fails."
    )

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _header_names(value)

    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOST)]] = Field(
        min_length=1,
        max_length=32,
        description="Where calls may go: host names (api.example.com, or *.example.com for "
        "its subdomains), IP addresses or CIDRs. Checked on the resolved address, which is the "
        "one connected to; redirects are checked again. Loopback, link-local (cloud metadata) "
        "and unspecified addresses are refused unless an IP or CIDR entry names them.",
    )


class ToolBase(Schema):
    """A tool chains can call: a name, what it does, its arguments' JSON schema, its HTTP
    binding."""

    name: str = Field(pattern=IDENTIFIER, max_length=63, description="Tool name.")
    description: str = Field(
        "", max_length=1024, description="What the tool does (the model reads it)."
    )
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON schema of the arguments (an object). Objects that do not say "
        "additionalProperties take no other keys.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    http: HttpBinding = Field(description="How the tool is called.")

    @field_validator("parameters")
    @classmethod
    def _a_json_schema_of_an_object(cls, value: dict[str, Any]) -> dict[str, Any]:
        """A schema the model's arguments can be checked against: valid JSON Schema, of an
        object (a tool takes named arguments)."""
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as e:
            raise ValueError(f"parameters is not a valid JSON schema: {e.message}") from None
        if value.get("type", "object") != "object":
            raise ValueError("parameters must be the schema of an object (type: object)")
        return value


class Tool(ToolBase):
    """A tool as the server reads it: secret headers come from its environment."""

    secret_headers: dict[str, Annotated[str, Field(pattern=ENV_NAME)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Headers whose values come from the server's environment (the operator "
        "sets them from Secrets): header name to variable name.",
        json_schema_extra=header_names_rule(),
    )

    @field_validator("secret_headers")
    @classmethod
    def _secret_header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _header_names(value)


class LLMStep(Schema):
    """A step that renders a prompt template and calls the model."""

    name: StepName
    type: Literal["llm"] = Field(
        "llm",
        description="Step kind: llm (a prompt to the model), tool (one tool call), agent "
        "(the model calls tools in a loop, then answers) or retrieval (a search of the "
        "document index).",
    )
    prompt: str = Field(
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="Jinja2 template of the user message, rendered in a sandbox with strict "
        "undefined variables: the chain inputs, earlier steps' outputs and, with memory, "
        "history: the session's earlier turns, oldest first, each {inputs: {<input>: value}, "
        "output: <the chain's output>} (e.g. turn.inputs.question, turn.output).",
    )
    system: str | None = Field(
        None,
        max_length=MAX_TEMPLATE_CHARS,
        description="Jinja2 template of the system message, if any.",
    )
    chat_template: bool = Field(
        True,
        description="Wrap the messages in the model's chat template; false sends the rendered "
        "prompt as raw text.",
    )
    generation: Generation = nested(Generation, "Decoding parameters of this step.")
    output: OutputParser = nested(OutputParser, "How the generated text is parsed.")


class ToolStep(Schema):
    """A step that calls one tool with templated arguments; its output is the tool's response
    (parsed JSON for a JSON response, else the text)."""

    name: StepName
    type: Literal["tool"] = Field(description="tool: one call of a tool.")
    tool: str = Field(pattern=IDENTIFIER, max_length=63, description="The tool to call.")
    arguments: dict[
        Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]
    ] = Field(
        default_factory=dict,
        max_length=32,
        description="Argument templates by name (inputs and earlier outputs as variables); a "
        "value the tool's schema types as number, integer, boolean, object or array is read as "
        "JSON. The arguments must match the tool's schema.",
    )


class AgentStep(Schema):
    """A step where the model chooses among tools in a loop, each result fed back, then
    answers; its output is the answer's text."""

    name: StepName
    type: Literal["agent"] = Field(description="agent: a tool-calling loop ending in an answer.")
    prompt: str = Field(
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="Jinja2 template of the task (the user message), as in llm steps.",
    )
    system: str | None = Field(
        None, max_length=MAX_TEMPLATE_CHARS, description="Jinja2 template of the system message."
    )
    tools: list[Annotated[str, Field(pattern=IDENTIFIER, max_length=63)]] = Field(
        min_length=1, max_length=16, description="The tools the model may call."
    )
    max_iterations: int = Field(
        4, ge=1, le=16, description="Most model turns that call tools before the answer."
    )
    call_first: bool = Field(
        False,
        description="The first turn must call a tool (tool_choice required); later turns "
        "choose between calling and answering.",
    )
    timeout_seconds: int = Field(
        60, ge=1, le=600, description="Most seconds the whole loop may take; then it answers."
    )
    generation: Generation = nested(Generation, "Decoding parameters of each model turn.")


class RetrievalStep(Schema):
    """A step that searches the app's document index; its output is the passages found, each
    {text, source, score, similarity}, best first (a list later templates can loop over)."""

    name: StepName
    type: Literal["retrieval"] = Field(description="retrieval: a search of the document index.")
    query: str = Field(
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="Jinja2 template of the search query (inputs and earlier outputs as "
        "variables). A query longer than the embedding model's longest input is cut to it, "
        "and the chain's metadata says so.",
    )
    k: int = Field(4, ge=1, le=50, description="How many passages to return at most.")
    score_threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Drop passages whose cosine similarity to the query is below this.",
    )
    mode: Literal["dense", "bm25", "hybrid"] = Field(
        "dense",
        description="dense: nearest by embedding; bm25: keyword (BM25) ranking; hybrid: both, "
        "fused by reciprocal rank.",
    )


def _step_type(value: Any) -> str:
    """A step's kind; `llm` when unsaid (steps written before there were other kinds)."""
    kind = value.get("type", "llm") if isinstance(value, dict) else getattr(value, "type", "llm")
    return kind if isinstance(kind, str) else "llm"


Step = Annotated[
    Annotated[LLMStep, Tag("llm")]
    | Annotated[ToolStep, Tag("tool")]
    | Annotated[AgentStep, Tag("agent")]
    | Annotated[RetrievalStep, Tag("retrieval")],
    Discriminator(_step_type),
]
"""A chain step, by its `type`."""


class Memory(Schema):
    """Conversation memory, kept per session id in a Redis shared by all replicas."""

    window: int = Field(5, ge=1, le=100, description="Turns of history kept per session.")
    ttl_seconds: int = Field(
        3600, ge=60, le=30 * 86400, description="Seconds an idle session's history is kept."
    )

    @model_validator(mode="before")
    @classmethod
    def _written_by_an_older_operator(cls, data: Any) -> Any:
        """Chain files rendered by earlier versions of the operator also carried where the
        memory store runs (now the operator's own business): the server reads past those two
        keys, so a new server still starts from an older operator's ConfigMap."""
        if cls is Memory and isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in OPERATOR_ONLY_MEMORY_KEYS}
        return data


OPERATOR_ONLY_MEMORY_KEYS = ("store", "redisUrlSecretRef")


class Chain(Schema):
    """A sequential chain: each step's output is a variable for the steps after it."""

    inputs: list[Annotated[str, Field(pattern=IDENTIFIER, max_length=63)]] = Field(
        min_length=1,
        max_length=32,
        description="Names of the inputs a request must give, each once.",
        json_schema_extra={"x-kubernetes-list-type": "set"},  # the API server rejects repeats
    )
    steps: list[Step] = Field(min_length=1, max_length=16, description="Steps, run in order.")
    output: str | None = Field(
        None,
        pattern=IDENTIFIER,
        max_length=63,
        description="Name of the step whose output is the chain's output; default: the last.",
    )
    memory: Memory | None = Field(
        None, description="Conversation memory; omitted: every request stands alone."
    )

    @field_validator("inputs")
    @classmethod
    def _each_input_once(cls, inputs: list[str]) -> list[str]:
        repeated = sorted({name for name in inputs if inputs.count(name) > 1})
        if repeated:
            raise ValueError(f"input names must be unique; repeated: {', '.join(repeated)}")
        return inputs

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.steps.all(s, self.steps.exists_one(t, t.name == s.name))",
                    "message": "step names must be unique",
                    "fieldPath": ".steps",
                },
                {
                    "rule": "self.steps.all(s, !(s.name in self.inputs))",
                    "message": "a step may not have the name of an input",
                    "fieldPath": ".steps",
                },
                {
                    "rule": "!has(self.output) || self.steps.exists(s, s.name == self.output)",
                    "message": "output must name a step",
                    "fieldPath": ".output",
                },
            ]
        }
    )


class ChainConfig(Schema):
    """The file the chain server reads (`llmchain serve --chain FILE`): a named chain."""

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Chain name, served at /v1/chains/<name>/.",
    )
    chain: Chain
    tools: list[Tool] = Field(
        default_factory=list, max_length=32, description="The tools tool and agent steps call."
    )

    @model_validator(mode="after")
    def _tools_known(self) -> ChainConfig:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        for step in self.chain.steps:
            wanted = [step.tool] if isinstance(step, ToolStep) else getattr(step, "tools", [])
            for name in wanted:
                if name not in names:
                    raise ValueError(f"step {step.name} uses tool {name!r}, which is not defined")
        return self


def template_problems(chain: Chain, at: str = "chain") -> list[str]:
    """What the schema cannot check: each template parses, and uses only variables it will have.

    A step's templates may use the chain inputs, the outputs of the steps before it, and
    `history` when the chain has memory. Each problem names its field under `at`, where the
    chain sits in its document (`chain.steps[1].prompt` in a chain file, `spec.chain...` in an
    LLMChainApp).
    """
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    known = set(chain.inputs) | ({"history"} if chain.memory else set())
    problems: list[str] = []
    for index, step in enumerate(chain.steps):
        for field, source in step_templates(step):
            if source is None:
                continue
            where = f"{at}.steps[{index}].{field}"
            try:
                parsed = env.parse(source)
            except TemplateSyntaxError as error:
                problems.append(f"{where}: template syntax error on line {error.lineno}: {error}")
                continue
            for name in sorted(meta.find_undeclared_variables(parsed) - known):
                problems.append(
                    f"{where}: uses undeclared variable '{name}' (known here: "
                    f"{', '.join(sorted(known))})"
                )
        known.add(step.name)
    return problems


def step_templates(
    step: LLMStep | ToolStep | AgentStep | RetrievalStep,
) -> list[tuple[str, str | None]]:
    """A step's Jinja2 templates by field path: prompt and system, each argument, or the
    query."""
    if isinstance(step, ToolStep):
        return [(f"arguments.{name}", source) for name, source in step.arguments.items()]
    if isinstance(step, RetrievalStep):
        return [("query", step.query)]
    return [("prompt", step.prompt), ("system", step.system)]
