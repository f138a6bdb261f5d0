"""Prompt templates: Jinja2 in an immutable sandbox with strict undefined variables, so neither
a template nor an input can reach Python internals or silently render a missing variable."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmchain_server.errors import InvalidRequest

_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class ChainInputError(InvalidRequest):
    """A request's inputs cannot run the chain; the message names the problem (a 400 naming
    the request's `input`, or the field of it at fault)."""

    def __init__(self, message: str, param: str = "input") -> None:
        super().__init__(message, param=param)


def compile_template(source: str, where: str) -> Template:
    try:
        return _ENV.from_string(source)
    except TemplateError as e:
        raise ValueError(f"{where}: {e}") from None


def render(template: Template, variables: dict[str, Any], where: str) -> str:
    try:
        return template.render(**variables)
    except SecurityError:
        raise ChainInputError(f"{where}: the template tried an unsafe operation") from None
    except TemplateError as e:
        raise ChainInputError(f"{where}: {e}") from None
