"""One pure validation of an LLMChainApp, used by the admission webhook, the reconciler and
`llmchain render`, so the three describe a mistake the same way: each problem starts with the
field path as `kubectl explain` spells it (`spec.chain.steps[0].name: ...`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llmchain_operator.api import LLMChainApp, name_problems, tool_problems
from llmchain_server.config import template_problems


@dataclass(frozen=True)
class Validated:
    """The parsed app (None when the schema rejects it) and every problem found."""

    app: LLMChainApp | None
    problems: list[str] = field(default_factory=list)


STEP_TAGS = ("llm", "tool", "agent", "retrieval")


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a field path: ("spec", "steps", 0, "name") →
    spec.steps[0].name."""
    path = ""
    after_index = False
    for part in loc:
        if after_index and part in STEP_TAGS:
            after_index = False
            continue  # the union member pydantic tried (a step's kind), not a field
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
        after_index = isinstance(part, int)
    return path.lstrip(".") or "(the resource)"


def validate(body: Mapping[str, Any]) -> Validated:
    """What the API server's schema and CEL rules check, again (for `llmchain render` and for
    objects stored before a rule existed), plus what they cannot: templates that do not parse or
    use variables they will not have. No I/O: referenced Secrets are checked by the reconciler."""
    # The API server's own parts of a stored object (status) are not the user's to get wrong;
    # any other key beside these is a mistake (a `sepc:` typo in a file given to render).
    raw = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    unknown = sorted(set(body) - set(raw) - {"status"})
    try:
        app = LLMChainApp.model_validate(raw)
    except ValidationError as error:
        problems = [f"{field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        return Validated(None, problems + [f"{k}: not a field of the resource" for k in unknown])
    if unknown:
        return Validated(None, [f"{k}: not a field of the resource" for k in unknown])
    problems = name_problems(str(app.metadata.get("name", "")))
    if problems:  # stored before the CRD checked names: report rather than apply
        return Validated(None, problems)
    problems = tool_problems(app.spec)
    if problems:  # the chain config could not be rendered
        return Validated(None, problems)
    return Validated(app, template_problems(app.spec.chain, at="spec.chain"))
