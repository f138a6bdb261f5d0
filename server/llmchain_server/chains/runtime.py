"""Running a chain: each step renders its templates (inputs, earlier steps' outputs, history),
calls the model through the dataplane, and parses its output; the output step's text can be
streamed. With memory, the turn is stored per session after the chain succeeds."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmchain_server.chains.parsers import ParseError, parse
from llmchain_server.chains.templates import ChainInputError, compile_template, render
from llmchain_server.config import ChainConfig, LLMStep
from llmchain_server.dataplane import DataPlane
from llmchain_server.dataplane.memory import SESSION, MemoryStore
from llmchain_server.engine import SamplingParams
from llmchain_server.errors import InvalidRequest, OutputInvalid

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")
FIELD = "input"
"""The request field chain errors name: a chain's prompts are made from its input."""


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in the parsed JSON, as a value or a key at any depth, holds a lone
    surrogate (`"\\ud800"`): Python's json accepts one, but it is no text and cannot be encoded.
    A loop, not recursion, so deep nesting costs no stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
    return False


class ChainOutputError(OutputInvalid):
    """A step's output stayed invalid after its retry (the model's fault: a 502)."""


@dataclass
class ChainRun:
    output: Any = None
    steps: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChainRunner:
    def __init__(self, config: ChainConfig, plane: DataPlane, memory: MemoryStore | None) -> None:
        self.name = config.name
        self.chain = config.chain
        self.plane = plane
        self.memory = memory
        self.output_step = self.chain.output or self.chain.steps[-1].name
        self._templates = {
            s.name: (
                compile_template(s.prompt, f"step {s.name} prompt"),
                compile_template(s.system, f"step {s.name} system") if s.system else None,
            )
            for s in self.chain.steps
        }

    # -- request checking ----------------------------------------------------------------------
    def inputs(self, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise ChainInputError(f"input must be an object with {', '.join(self.chain.inputs)}")
        if _has_lone_surrogate(given):  # before any message quotes a key
            raise ChainInputError("input holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
        missing = [n for n in self.chain.inputs if n not in given]
        extra = sorted(set(given) - set(self.chain.inputs))
        if missing:
            raise ChainInputError(f"input lacks {', '.join(missing)}")
        if extra:
            raise ChainInputError(f"input has unknown fields: {', '.join(extra)}")
        return dict(given)

    def session(self, config: Any) -> str | None:
        if self.memory is None:
            return None
        configurable = (config or {}).get("configurable", {}) if isinstance(config, dict) else {}
        session = configurable.get("session_id") if isinstance(configurable, dict) else None
        if not isinstance(session, str) or not SESSION.fullmatch(session):
            raise ChainInputError(
                "this chain has memory: config.configurable.session_id must "
                "be 1-128 letters, digits or ._:-"
            )
        return session

    # -- running -------------------------------------------------------------------------------
    def _clean(self, value: Any) -> Any:
        """Inputs (and remembered turns) without special-token strings, at any depth."""
        if isinstance(value, str):
            return self.plane.strip_special(value)
        if isinstance(value, list):
            return [self._clean(v) for v in value]
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        return value

    async def _variables(self, inputs: dict[str, Any], session: str | None) -> dict[str, Any]:
        variables: dict[str, Any] = {k: self._clean(v) for k, v in inputs.items()}
        if self.memory is not None and session is not None:
            variables["history"] = self._clean(await self.memory.history(session))
        elif self.chain.memory is not None:
            variables["history"] = []
        return variables

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

    @staticmethod
    def _params(step: LLMStep) -> SamplingParams:
        g = step.generation
        return SamplingParams(
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            seed=g.seed,
            stop=tuple(g.stop),
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

    async def _run_step(self, step: LLMStep, variables: dict[str, Any], run: ChainRun) -> Any:
        prompt = await self._fitted_prompt(step, variables)
        for attempt in (1, 2):
            result = await self.plane.complete(prompt, self._params(step))
            run.prompt_tokens += result.prompt_tokens
            run.completion_tokens += result.completion_tokens
            try:
                value = parse(result.text, step.output)
            except ParseError as e:
                if attempt == 2:
                    raise ChainOutputError(f"step {step.name}: {e} (after one retry)") from None
                log.info("Retried step %s: %s", step.name, e)
                continue
            # One line per step, with the request id (see http/logs.py): a log aggregator can
            # follow a request through its chain. Token counts only, never the texts.
            log.info(
                "Ran step %s of chain %s",
                step.name,
                self.name,
                extra={
                    "step": step.name,
                    "attempt": attempt,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                },
            )
            return value
        raise AssertionError("unreachable")

    async def invoke(self, inputs: dict[str, Any], session: str | None) -> ChainRun:
        run = ChainRun()
        variables = await self._variables(inputs, session)
        for step in self.chain.steps:
            value = await self._run_step(step, variables, run)
            variables[step.name] = value
            run.steps[step.name] = value
        run.output = run.steps[self.output_step]
        await self._remember(inputs, session, run.output)
        return run

    async def stream(self, inputs: dict[str, Any], session: str | None) -> AsyncIterator[Any]:
        """Yields pieces of the output: text deltas when the output step is the last and
        parses text, else the whole output once."""
        run = ChainRun()
        variables = await self._variables(inputs, session)
        last = self.chain.steps[-1]
        streamable = last.name == self.output_step and last.output.type == "text"
        for step in self.chain.steps[:-1] if streamable else self.chain.steps:
            variables[step.name] = run.steps[step.name] = await self._run_step(step, variables, run)
        if not streamable:
            yield run.steps[self.output_step]
            await self._remember(inputs, session, run.steps[self.output_step])
            return
        parts: list[str] = []
        async for chunk in self.plane.stream(
            await self._fitted_prompt(last, variables), self._params(last)
        ):
            if chunk.text:
                parts.append(chunk.text)
                yield chunk.text
        await self._remember(inputs, session, "".join(parts))

    async def _remember(self, inputs: dict[str, Any], session: str | None, output: Any) -> None:
        if self.memory is not None and session is not None:
            await self.memory.append(session, {"inputs": inputs, "output": output})
