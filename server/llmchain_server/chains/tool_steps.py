"""`tool` and `agent` steps. A tool step calls one tool with its rendered arguments. An agent step
lets the model choose among its tools in a loop: each turn decodes under the tools' grammar (text,
or well-formed calls), the calls run, their results go back as `tool` messages, and the loop ends
with an answer, at the latest after `maxIterations` turns of calls or `timeoutSeconds`, when the
model must answer in text. Tool results are data: cleaned of special-token strings, cut to
RESULT_CHARS, put into messages, never rendered as templates."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from jinja2 import Template

from llmchain_server.chains.parsers import schema_failure
from llmchain_server.chains.templates import ChainInputError, compile_template, render
from llmchain_server.config import AgentStep, ToolStep
from llmchain_server.config import Tool as ToolConfig
from llmchain_server.dataplane import DataPlane
from llmchain_server.dataplane.structured import (
    Tool,
    ToolCall,
    calls_text,
    read_calls,
    tools_grammar,
    with_tools,
)
from llmchain_server.dataplane.tool_calls import ToolCaller, ToolCallFailed
from llmchain_server.engine import Grammar, SamplingParams
from llmchain_server.errors import InvalidRequest

log = logging.getLogger(__name__)
RESULT_CHARS = 2000
"""Characters of a tool's result fed back to the model (the rest is cut, and said so)."""
ANSWER = Grammar.lark(r"start: /[^<][\s\S]*/")
"""An agent's last turn: text that cannot start a call block."""
LATE_TOKENS = 32
"""Most tokens of the answer an agent gives once its time is up (its answer must still come)."""
JSON_TYPES = ("number", "integer", "boolean", "object", "array", "null")


@dataclass
class CallRecord:
    """A tool call made by a run, as the chain endpoints report it in their metadata."""

    step: str
    tool: str
    arguments: Any
    ok: bool
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "step": self.step,
            "tool": self.tool,
            "arguments": self.arguments,
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
        }
        return out | ({"error": self.error} if self.error else {})


class ToolSteps:
    """Runs the tool and agent steps of one chain."""

    def __init__(
        self,
        tools: list[ToolConfig],
        steps: list[Any],
        plane: DataPlane,
        caller: ToolCaller | None = None,
    ) -> None:
        self.plane = plane
        self.configs = {t.name: t for t in tools}
        self.caller = caller or ToolCaller(tools, metrics=plane.metrics)
        self._arguments: dict[str, dict[str, Template]] = {}
        self._agent: dict[str, tuple[Template, Template | None, list[Tool], Grammar, Grammar]] = {}
        for step in steps:
            if isinstance(step, ToolStep):
                self._arguments[step.name] = {
                    name: compile_template(source, f"step {step.name} arguments.{name}")
                    for name, source in step.arguments.items()
                }
            elif isinstance(step, AgentStep):
                model_tools = [
                    Tool(t.name, t.description, self.configs[t.name].parameters)
                    for t in (self.configs[n] for n in step.tools)
                ]
                self._agent[step.name] = (
                    compile_template(step.prompt, f"step {step.name} prompt"),
                    compile_template(step.system, f"step {step.name} system")
                    if step.system
                    else None,
                    model_tools,
                    tools_grammar(model_tools, required=False),
                    tools_grammar(model_tools, required=True),
                )

    # -- tool steps ------------------------------------------------------------------------------
    async def run_tool(
        self, step: ToolStep, variables: dict[str, Any], calls: list[CallRecord]
    ) -> Any:
        """The tool's result (parsed JSON, or text); a failed call fails the step."""
        tool = self.configs[step.tool]
        arguments = {
            name: _typed(render(t, variables, f"step {step.name} arguments.{name}"), name, tool)
            for name, t in self._arguments[step.name].items()
        }
        try:
            jsonschema.validate(arguments, tool.parameters)
        except jsonschema.ValidationError as e:
            raise ChainInputError(
                f"step {step.name}: the arguments fail tool {tool.name}'s schema "
                f"({schema_failure(e)})"
            ) from None
        started = time.monotonic()
        try:
            result = await self.caller.call(tool.name, arguments)
        except ToolCallFailed as e:
            calls.append(
                CallRecord(step.name, tool.name, arguments, False, _since(started), e.message)
            )
            raise
        calls.append(CallRecord(step.name, tool.name, arguments, True, result.seconds))
        return result.value

    # -- agent steps -----------------------------------------------------------------------------
    async def run_agent(
        self,
        step: AgentStep,
        variables: dict[str, Any],
        calls: list[CallRecord],
        usage: list[int],
    ) -> str:
        """The agent's answer. `usage` gets the prompt and completion tokens of every turn."""
        prompt_t, system_t, tools, choose, must_call = self._agent[step.name]
        deadline = time.monotonic() + step.timeout_seconds
        messages: list[tuple[str, str]] = []
        if system_t is not None:
            system = render(system_t, variables, f"step {step.name} system")
            messages.append(("system", self.plane.strip_special(system)))
        user = render(prompt_t, variables, f"step {step.name} prompt")
        messages.append(("user", self.plane.strip_special(user)))
        names = set(step.tools)
        for turn in range(step.max_iterations + 1):
            last = turn == step.max_iterations or time.monotonic() >= deadline
            grammar = ANSWER if last else must_call if turn == 0 and step.call_first else choose
            if last:  # past the deadline already: a short answer
                late = time.monotonic() >= deadline
                text = await self._turn(
                    step, messages, tools, grammar, usage, LATE_TOKENS if late else None
                )
            else:
                try:  # a turn that calls is bounded by the step's time too
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        text = await self._turn(step, messages, tools, grammar, usage)
                except TimeoutError:  # out of time: a short answer, now
                    text = await self._turn(step, messages, tools, ANSWER, usage, LATE_TOKENS)
                    last = True
            content, made = read_calls(text, names)
            if last or not made:  # the answer turn's text is the answer, whatever it holds
                return text if made else content or ""
            messages.append(("assistant", calls_text(made)))
            for call in made:
                messages.append(("tool", await self._call(step, call, deadline, calls)))
        raise AssertionError("unreachable: the last turn answers")

    async def _turn(
        self,
        step: AgentStep,
        messages: list[tuple[str, str]],
        tools: list[Tool],
        grammar: Grammar,
        usage: list[int],
        most: int | None = None,
    ) -> str:
        g = step.generation
        params = SamplingParams(
            max_tokens=min(g.max_tokens, most or g.max_tokens),
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            seed=g.seed,
            grammar=grammar,
        )
        turns = with_tools(messages, tools) if grammar is not ANSWER else messages
        prompt = await self.plane.chat_prompt(turns, "input")
        self.plane.fit(prompt, params, "input")
        result = await self.plane.complete(prompt, params)
        usage[0] += result.prompt_tokens
        usage[1] += result.completion_tokens
        return result.text

    async def _call(
        self, step: AgentStep, call: ToolCall, deadline: float, calls: list[CallRecord]
    ) -> str:
        """One call the model made, its result (or its error) as the `tool` message's text."""
        arguments = json.loads(call.arguments)  # well-formed: the grammar made it
        started = time.monotonic()
        remaining = deadline - started
        try:
            if remaining <= 0:
                raise ToolCallFailed(f"step {step.name} ran out of time before this call")
            try:  # the grammar made them match; checked again, as data from a model
                jsonschema.validate(arguments, self.configs[call.name].parameters)
            except jsonschema.ValidationError as e:
                raise ToolCallFailed(
                    f"the arguments fail tool {call.name}'s schema ({e.validator!r} rule)"
                ) from None
            async with asyncio.timeout(remaining):
                result = await self.caller.call(call.name, arguments)
        except (ToolCallFailed, TimeoutError) as e:
            message = (
                e.message
                if isinstance(e, ToolCallFailed)
                else f"step {step.name} ran out of time ({step.timeout_seconds} s)"
            )
            calls.append(
                CallRecord(step.name, call.name, arguments, False, _since(started), message)
            )
            return f"error: {message}"
        calls.append(CallRecord(step.name, call.name, arguments, True, result.seconds))
        value = result.value
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > RESULT_CHARS:
            text = text[:RESULT_CHARS] + f" … (cut: {len(text)} characters in all)"
        return self.plane.strip_special(text)


def _typed(text: str, name: str, tool: ToolConfig) -> Any:
    """A rendered argument as the tool's schema types it: JSON for numbers, booleans, objects
    and arrays; the text for strings."""
    props = tool.parameters.get("properties", {})
    kind = props.get(name, {}).get("type") if isinstance(props, Mapping) else None
    if kind in JSON_TYPES:
        try:
            return json.loads(text)
        except ValueError:
            raise InvalidRequest(
                f"argument {name} of tool {tool.name} renders to text that is not a {kind}",
                param="input",
            ) from None
    return text


def _since(started: float) -> float:
    return time.monotonic() - started
