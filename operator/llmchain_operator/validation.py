"""One pure validation of an LLMChainApp, used by the admission webhook, the reconciler and
`llmchain render`, so the three describe a mistake the same way: each problem starts with the
field path as `kubectl explain` spells it (`spec.chain.steps[0].name: ...`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llmchain_operator.api import LLMChainApp
from llmchain_server.config import template_problems


@dataclass(frozen=True)
class Validated:
    """The parsed app (None when the schema rejects it) and every problem found."""

    app: LLMChainApp | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.app is not None and not self.problems


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a field path: ("spec", "steps", 0, "name") →
    spec.steps[0].name."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".") or "(the resource)"


def validate(body: Mapping[str, Any]) -> Validated:
    """What the API server's schema and CEL rules check, again (for `llmchain render` and for
    objects stored before a rule existed), plus what they cannot: templates that do not parse or
    use variables they will not have. No I/O: referenced Secrets are checked by the reconciler."""
    raw = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": body.get("spec") or {},
    }
    try:
        app = LLMChainApp.model_validate(raw)
    except ValidationError as error:
        return Validated(None, [f"{field_path(e['loc'])}: {e['msg']}" for e in error.errors()])
    return Validated(app, template_problems(app.spec.chain))
