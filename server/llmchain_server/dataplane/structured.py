"""Structured output and tool calls, in the model's terms: the system text that lists the tools,
the grammar that makes a reply either free text or well-formed calls (constrained decoding), and
the calls read back from a reply, whole or as it streams. No HTTP here: the OpenAI routes and the
chains' agent steps both use it.

A reply calls tools in the form SmolLM2's instruct models were tuned on: one block
`<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, its arguments matching each
tool's JSON schema by construction."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmchain_server.engine import Grammar
from llmchain_server.engine.constraints import JSON_OPTIONS

OPEN, CLOSE = "<tool_call>[", "]</tool_call>"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CALLS = 8
"""Most calls one reply makes (parallel calls on)."""

TOOLS_PROMPT = """You are an expert in composing functions. You are given a question and a set of \
possible functions. Based on the question, you will need to make one or more function/tool calls \
to achieve the purpose. If none of the functions can be used, answer in plain text.

You have access to the following tools:
<tools>{tools}</tools>

To call tools, answer only with this format:
<tool_call>[{{"name": "func_name", "arguments": {{"argument1": "value1"}}}}]</tool_call>"""


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"tool name {self.name[:70]!r} must match {NAME.pattern}")

    def card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI carries it


def tools_prompt(tools: Sequence[Tool]) -> str:
    """The system text that lists `tools` and the call format."""
    return TOOLS_PROMPT.format(tools=json.dumps([t.card() for t in tools], ensure_ascii=False))


def with_tools(messages: Sequence[tuple[str, str]], tools: Sequence[Tool]) -> list[tuple[str, str]]:
    """`messages` with the tools listed first in the system message (one is added if none)."""
    listing = tools_prompt(tools)
    out = list(messages)
    if out and out[0][0] in ("system", "developer"):
        out[0] = ("system", f"{out[0][1]}\n\n{listing}")
    else:
        out.insert(0, ("system", listing))
    return out


def calls_text(calls: Sequence[ToolCall]) -> str:
    """An assistant turn that made `calls`, as the model writes it (for the history)."""
    items = []
    for c in calls:
        try:
            arguments = json.loads(c.arguments) if c.arguments else {}
        except ValueError:
            arguments = c.arguments  # as the client sent it
        items.append({"name": c.name, "arguments": arguments})
    return f"<tool_call>{json.dumps(items, ensure_ascii=False)}</tool_call>"


def tools_grammar(tools: Sequence[Tool], required: bool, parallel: bool = True) -> Grammar:
    """Replies that call `tools` (one call, or up to MAX_CALLS with `parallel`), arguments
    matching their schemas; when not `required`, also free text that does not start a call."""
    if not tools:
        raise ValueError("no tools to call")
    rules = []
    for i, tool in enumerate(tools):
        schema = {**closed(tool.parameters), "x-guidance": JSON_OPTIONS}
        head = json.dumps(f'{{"name": "{tool.name}", "arguments": ')
        rules.append(f'call_{i}: {head} %json {json.dumps(schema)} "}}"')
    more = f' ("," call){{0,{MAX_CALLS - 1}}}' if parallel else ""
    lark = [
        "start: calls" if required else "start: calls | text",
        f"calls: {json.dumps(OPEN)} call{more} {json.dumps(CLOSE)}",
        "call: " + " | ".join(f"call_{i}" for i in range(len(tools))),
        *rules,
    ]
    if not required:
        lark.append(r"text: /[^<\s][\s\S]*/")
    return Grammar.lark("\n".join(lark))


def json_grammar(schema: Mapping[str, Any] | None, strict: bool = False) -> Grammar:
    """Replies that are one JSON value of `schema` (None: any JSON object); `strict` closes
    its objects as `closed` says."""
    if schema is None:
        return Grammar.json_schema({"type": "object"})
    return Grammar.json_schema(closed(schema) if strict else dict(schema))


def closed(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `schema` whose objects with `properties` and no `additionalProperties` take no
    other keys, as OpenAI's strict mode reads schemas. Tool arguments are read so: a small model
    otherwise fills open objects with keys copied from the prompt (`"type"`, `"required"`), which
    no tool uses. A loop, not recursion: schemas come from clients."""
    root: dict[str, Any] = json.loads(json.dumps(schema))
    pending: list[Any] = [root]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            pending.extend(node.values())
    return root


def read_calls(
    text: str, names: Collection[str] | None = None
) -> tuple[str | None, list[ToolCall]]:
    """A reply's text content and tool calls: a reply that is exactly a call block (the
    grammar's form: no text before it) is calls only; with `names`, only when every call names
    one of them (anything else is text, never a call of a tool nobody offered)."""
    stripped = text.rstrip()
    if not stripped.startswith(OPEN) or not stripped.endswith(CLOSE):
        return text, []
    try:
        items = json.loads(stripped[len(OPEN) - 1 : len(stripped) - len(CLOSE) + 1])
    except (ValueError, RecursionError):
        return text, []
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) for i in items
    ):
        return text, []
    calls = [
        ToolCall(item["name"], json.dumps(item.get("arguments", {}), ensure_ascii=False))
        for item in items
    ]
    if not calls or (names is not None and any(c.name not in names for c in calls)):
        return text, []
    return None, calls


class CallStream:
    """Reads a reply as it streams: text pieces come out as content once they cannot begin a
    call block; a call block is held until it is whole (it ends and parses), then comes out as
    its calls."""

    def __init__(self, names: Collection[str] | None = None) -> None:
        self._names = names
        self._held = ""
        self._mode = "start"  # start (undecided), text, calls

    def feed(self, piece: str) -> Iterator[str | ToolCall]:
        if self._mode == "text":
            if piece:
                yield piece
            return
        self._held += piece
        if self._mode == "start":
            head = self._held
            if OPEN.startswith(head):
                return  # could still be a call block
            if not head.startswith(OPEN):
                self._mode = "text"
                held, self._held = self._held, ""
                yield held
                return
            self._mode = "calls"
        if self._held.rstrip().endswith(CLOSE) and read_calls(self._held, self._names)[1]:
            yield from self.finish()

    def finish(self) -> Iterator[str | ToolCall]:
        """What is still held at the reply's end (a cut call block comes out as text)."""
        held, self._held = self._held, ""
        if not held:
            return
        content, calls = read_calls(held, self._names)
        if calls:
            yield from calls
        elif content:
            yield content
