"""Output parsers: text as is, or JSON validated against the step's JSON schema."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema

from llmchain_server.config import OutputParser

MAX_STARTS = 20


class ParseError(ValueError):
    """The model's text does not satisfy the step's parser (the chain's `ChainOutputError`).
    JSON steps decode under their schema, so this means a cut output, or a schema keyword the
    constraint does not enforce."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (`1e999`) is not valid output,
    as Python would read it as infinity, which JSON cannot carry."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("the number overflows a float")
    return value


def _first_json(text: str) -> Any:
    """The first JSON value in the text (models like to wrap JSON in prose or code fences).
    Only the first few `{` / `[` are tried, so hostile output cannot make this quadratic."""
    decoder = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constants)
    starts = [i for i, ch in enumerate(text) if ch in "{["][:MAX_STARTS]
    for i in starts:
        try:
            return decoder.raw_decode(text[i:])[0]
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
    raise ParseError("the output holds no JSON object or array")


def parse(text: str, parser: OutputParser) -> Any:
    if parser.type == "text":
        return text  # as generated, so a streamed output joins to exactly the invoked one
    value = _first_json(text)
    if parser.json_schema is not None:
        try:
            jsonschema.validate(value, parser.json_schema)
        except jsonschema.ValidationError as e:
            raise ParseError(f"the output fails the JSON schema's {schema_failure(e)}") from None
    return value


def schema_failure(e: jsonschema.ValidationError) -> str:
    """Which rule failed where: the validator and the place only (messages would quote the
    value, model output or a request's arguments, which is not logged)."""
    where = "/".join(str(p) for p in e.absolute_path) or "the top level"
    return f"{e.validator!r} rule at {where}"
