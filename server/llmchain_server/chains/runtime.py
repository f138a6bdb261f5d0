"""Running a chain: each step renders its templates (inputs, earlier steps' outputs, history),
calls the model through the dataplane, and parses its output; the output step's text can be
streamed. A `json` step decodes under its JSON schema (constrained decoding), so its output
parses by construction, without retries. With memory, the turn is stored per session after the
chain succeeds."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmchain_server.chains.parsers import ParseError, parse
from llmchain_server.chains.retrieval_steps import RetrievalSteps, SourceRecord
from llmchain_server.chains.templates import ChainInputError, compile_template, render
from llmchain_server.chains.tool_steps import CallRecord, ToolSteps
from llmchain_server.chains.values import (
    MAX_DEPTH,
    MAX_ITEMS,
    depth_and_items,
    has_lone_surrogate,
    mapped_strings,
    string_chars,
)
from llmchain_server.config import ChainConfig, LLMStep, RetrievalStep, Step, ToolStep
from llmchain_server.dataplane import DataPlane
from llmchain_server.dataplane.memory import SESSION, MemoryStore
from llmchain_server.dataplane.structured import json_grammar
from llmchain_server.engine import SamplingParams
from llmchain_server.errors import InvalidRequest, OutputInvalid, PromptTooLong
from llmchain_server.retrieval.retriever import Retriever

log = logging.getLogger(__name__)
FIELD = "input"
"""The request field chain errors name: a chain's prompts are made from its input."""


class ChainOutputError(OutputInvalid):
    """A step's output is invalid (a JSON step's cut by its maxTokens: a 502)."""


@dataclass
class Prepared:
    """What a run needs before any answer is sent, so that a stream refuses as /invoke does
    (503 with the memory store down, 400 for a prompt too long) instead of a 200 and an error
    event: the checked inputs, the session's history read, the first step's prompt fitted."""

    inputs: dict[str, Any]  # cleaned of special-token strings: what memory keeps
    session: str | None
    variables: dict[str, Any]
    first_prompt: list[int] | None  # None when the first step is no llm step


@dataclass
class ChainRun:
    output: Any = None
    steps: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[CallRecord] = field(default_factory=list)
    sources: list[SourceRecord] = field(default_factory=list)
    truncated_queries: list[str] = field(default_factory=list)
    """Retrieval steps whose query was cut to the embedding model's longest input."""


class ChainRunner:
    def __init__(
        self,
        config: ChainConfig,
        plane: DataPlane,
        memory: MemoryStore | None,
        retriever: Retriever | None = None,
    ) -> None:
        self.name = config.name
        self.chain = config.chain
        self.plane = plane
        self.memory = memory
        self.output_step = self.chain.output or self.chain.steps[-1].name
        llm_steps = [s for s in self.chain.steps if isinstance(s, LLMStep)]
        self._templates = {
            s.name: (
                compile_template(s.prompt, f"step {s.name} prompt"),
                compile_template(s.system, f"step {s.name} system") if s.system else None,
            )
            for s in llm_steps
        }
        self._grammars = {
            s.name: json_grammar(s.output.json_schema) for s in llm_steps if s.output.type == "json"
        }
        self.tools = ToolSteps(config.tools, self.chain.steps, plane) if config.tools else None
        wants_index = [s.name for s in self.chain.steps if isinstance(s, RetrievalStep)]
        if wants_index and retriever is None:
            raise ValueError(
                f"chain {config.name}: step {wants_index[0]} is a retrieval step, and this server "
                "has no document index (give --index and --embedding-model)"
            )
        self.retrieval = (
            RetrievalSteps(self.chain.steps, retriever) if retriever and wants_index else None
        )
        """The tool and agent steps' runner (None for a chain without tools)."""
        """The JSON steps' constraints, made once and checked against the model's tokenizer:
        a schema llguidance refuses, or one no output within the step's maxTokens completes,
        stops the server at start with the step's name, not each request later."""
        for step in llm_steps:
            if step.name in self._grammars:
                try:
                    plane.check_constraint(self._params(step))
                except InvalidRequest as e:
                    raise ValueError(f"step {step.name}'s jsonSchema: {e.message}") from None

    # -- request checking ----------------------------------------------------------------------
    def inputs(self, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise ChainInputError(f"input must be an object with {', '.join(self.chain.inputs)}")
        if has_lone_surrogate(given):  # before any message quotes a key
            raise ChainInputError("input holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
        missing = [n for n in self.chain.inputs if n not in given]
        extra = sorted(set(given) - set(self.chain.inputs))
        if missing:
            raise ChainInputError(f"input lacks {', '.join(missing)}")
        if extra:
            raise ChainInputError(f"input has unknown fields: {', '.join(extra)}")
        items = 0
        for name in self.chain.inputs:
            depth, size = depth_and_items(given[name])
            items += size
            if depth > MAX_DEPTH:
                raise ChainInputError(
                    f"input.{name} nests deeper than {MAX_DEPTH} levels", f"input.{name}"
                )
            if items > MAX_ITEMS:
                raise ChainInputError(f"input holds more than {MAX_ITEMS} values and keys")
        self._check_chars(given)
        return dict(given)

    def _check_chars(self, given: dict[str, Any]) -> None:
        """The server's character cap over the inputs' strings, before they are cleaned of
        special tokens or rendered (cleaning 1 MB takes a second, which a cap makes bounded)."""
        limit = self.plane.settings.max_prompt_chars
        total = 0
        for name in self.chain.inputs:
            chars = string_chars(given[name])
            total += chars
            if chars > limit:
                raise PromptTooLong(
                    f"input.{name} has {chars} characters; the limit is {limit}", f"input.{name}"
                )
        if total > limit:
            raise PromptTooLong(f"input has {total} characters; the limit is {limit}", param=FIELD)

    def session(self, config: Any) -> str | None:
        if self.memory is None:
            return None
        configurable = (config or {}).get("configurable", {}) if isinstance(config, dict) else {}
        session = configurable.get("session_id") if isinstance(configurable, dict) else None
        if not isinstance(session, str) or not SESSION.fullmatch(session):
            raise ChainInputError(
                "this chain has memory: config.configurable.session_id must "
                "be 1-128 letters, digits or ._:-",
                "config.configurable.session_id",
            )
        return session

    # -- running -------------------------------------------------------------------------------
    def _clean(self, value: Any) -> Any:
        """Inputs (and remembered turns) without special-token strings, at any depth (a loop,
        not recursion: a turn stored by an older server may be deeper than inputs now are)."""
        return mapped_strings(value, self.plane.strip_special)

    def _cleaned(self, inputs: dict[str, Any], history: list[Any]) -> tuple[dict[str, Any], Any]:
        return {k: self._clean(v) for k, v in inputs.items()}, self._clean(history)

    async def _variables(
        self, inputs: dict[str, Any], session: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The cleaned inputs and the template variables (those, and the history). Cleaning
        is a loop over every character of a text that holds a special token, so it runs off
        the event loop. Turns are stored cleaned; the history is cleaned again as it is read,
        for turns an older server stored as given."""
        history: list[Any] = []
        if self.memory is not None and session is not None:
            history = await self.memory.history(session)
        cleaned, history = await self.plane.off_loop(self._cleaned, inputs, history)
        variables: dict[str, Any] = dict(cleaned)
        if (self.memory is not None and session is not None) or self.chain.memory is not None:
            variables["history"] = history
        return cleaned, variables

    def _prompt_text(self, step: LLMStep, variables: dict[str, Any]) -> str:
        prompt_t, system_t = self._templates[step.name]
        user = render(prompt_t, variables, f"step {step.name} prompt")
        if not step.chat_template:
            return user
        messages = []
        if system_t is not None:
            messages.append(
                {
                    "role": "system",
                    "content": render(system_t, variables, f"step {step.name} system"),
                }
            )
        messages.append({"role": "user", "content": user})
        try:
            return self.plane.render_chat(messages, FIELD)
        except InvalidRequest as e:
            raise ChainInputError(f"step {step.name}: {e.message}") from None

    def _params(self, step: LLMStep) -> SamplingParams:
        g = step.generation
        return SamplingParams(
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            seed=g.seed,
            stop=tuple(g.stop),
            grammar=self._grammars.get(step.name),
        )

    async def _fitted_prompt(self, step: LLMStep, variables: dict[str, Any]) -> list[int]:
        """The step's prompt; when history makes it too long, the oldest turns are left out
        (the dataplane measures each turn once, off the event loop)."""
        history = variables.get("history") or []

        def text(turns: Sequence[Any]) -> str:
            return self._prompt_text(
                step, {**variables, "history": turns} if history else variables
            )

        prompt, dropped = await self.plane.fitted_prompt(text, history, self._params(step), FIELD)
        if dropped:
            variables["history"] = history[dropped:]
        return prompt

    async def _step_prompt(self, step: LLMStep, ready: Prepared) -> list[int]:
        if step is self.chain.steps[0] and ready.first_prompt is not None:
            return ready.first_prompt
        return await self._fitted_prompt(step, ready.variables)

    async def _run_step(self, step: Step, ready: Prepared, run: ChainRun) -> Any:
        if isinstance(step, LLMStep):
            return await self._run_llm_step(step, ready, run)
        if isinstance(step, RetrievalStep):
            assert self.retrieval is not None  # __init__ refuses a retrieval step without one
            return await self.retrieval.run(
                step, ready.variables, run.sources, run.truncated_queries
            )
        assert self.tools is not None  # the config checks a tool step's tool is defined
        if isinstance(step, ToolStep):
            return await self.tools.run_tool(step, ready.variables, run.tool_calls)
        usage = [0, 0]
        try:
            return await self.tools.run_agent(step, ready.variables, run.tool_calls, usage)
        finally:
            run.prompt_tokens += usage[0]
            run.completion_tokens += usage[1]

    async def _run_llm_step(self, step: LLMStep, ready: Prepared, run: ChainRun) -> Any:
        prompt = await self._step_prompt(step, ready)
        result = await self.plane.complete(prompt, self._params(step))
        run.prompt_tokens += result.prompt_tokens
        run.completion_tokens += result.completion_tokens
        try:
            value = parse(result.text, step.output)
        except ParseError as e:
            raise ChainOutputError(f"step {step.name}: {e}") from None
        # One line per step, with the request id (see http/logs.py): a log aggregator can
        # follow a request through its chain. Token counts only, never the texts.
        log.info(
            "Ran step %s of chain %s",
            step.name,
            self.name,
            extra={
                "step": step.name,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
        )
        return value

    async def prepare(self, inputs: dict[str, Any], session: str | None) -> Prepared:
        """The run's start: history read (Unavailable when the store is down) and the first
        step's prompt fitted (PromptTooLong), before anything is answered."""
        cleaned, variables = await self._variables(inputs, session)
        step = self.chain.steps[0]
        first = await self._fitted_prompt(step, variables) if isinstance(step, LLMStep) else None
        return Prepared(cleaned, session, variables, first)

    async def invoke(self, inputs: dict[str, Any], session: str | None) -> ChainRun:
        ready = await self.prepare(inputs, session)
        run = ChainRun()
        for step in self.chain.steps:
            value = await self._run_step(step, ready, run)
            ready.variables[step.name] = value
            run.steps[step.name] = value
        run.output = run.steps[self.output_step]
        await self._remember(ready.inputs, session, run.output)
        return run

    async def stream(self, ready: Prepared) -> AsyncIterator[Any]:
        """Yields pieces of the output of a prepared run: text deltas when the output step is
        the last and parses text, else the whole output once."""
        run = ChainRun()
        variables = ready.variables
        last = self.chain.steps[-1]
        streamable = (
            isinstance(last, LLMStep)
            and last.name == self.output_step
            and last.output.type == "text"
        )
        for step in self.chain.steps[:-1] if streamable else self.chain.steps:
            variables[step.name] = run.steps[step.name] = await self._run_step(step, ready, run)
        if not streamable:
            yield run.steps[self.output_step]
            await self._remember(ready.inputs, ready.session, run.steps[self.output_step])
            return
        assert isinstance(last, LLMStep)
        parts: list[str] = []
        async for chunk in self.plane.stream(
            await self._step_prompt(last, ready), self._params(last)
        ):
            if chunk.text:
                parts.append(chunk.text)
                yield chunk.text
        await self._remember(ready.inputs, ready.session, "".join(parts))

    async def _remember(self, inputs: dict[str, Any], session: str | None, output: Any) -> None:
        if self.memory is None or session is None:
            return
        if depth_and_items(output)[0] > MAX_DEPTH:  # the model's JSON: never fed back deeper
            log.warning("Left a turn out of session memory: its output nests too deep")
            return
        await self.memory.append(session, {"inputs": inputs, "output": output})
