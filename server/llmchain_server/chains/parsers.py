"""Output parsers: text as is, or JSON validated against the step's JSON schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from llmchain_server.config import OutputParser


class OutputInvalid(ValueError):
    """The model's text does not satisfy the step's parser (the step is retried once)."""


def _first_json(text: str) -> Any:
    """The first JSON value in the text (models like to wrap JSON in prose or code fences)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise OutputInvalid("the output holds no JSON object or array")


def parse(text: str, parser: OutputParser) -> Any:
    if parser.type == "text":
        return text  # as generated, so a streamed output joins to exactly the invoked one
    value = _first_json(text)
    if parser.json_schema is not None:
        try:
            jsonschema.validate(value, parser.json_schema)
        except jsonschema.ValidationError as e:
            raise OutputInvalid(f"the output does not match the JSON schema: {e.message}") from None
    return value
