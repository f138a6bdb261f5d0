"""Chain output parsers: JSON found in prose, validated by schema, hostile output refused."""

from __future__ import annotations

import pytest

from llmchain_server.chains.parsers import ParseError, parse
from llmchain_server.config import OutputParser

JSON = OutputParser(type="json")
PERSON = OutputParser(
    type="json",
    json_schema={
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    },
)


def test_text_is_kept_as_generated() -> None:
    assert parse("  Paris.\n", OutputParser()) == "  Paris.\n"


def test_json_is_found_inside_prose_and_fences() -> None:
    assert parse('Sure! ```json\n{"name": "Tom"}\n``` done', PERSON) == {"name": "Tom"}


@pytest.mark.parametrize(
    "text", ["no json here", '{"name": 3}', '{"age": 1}', "[NaN]", '{"x": Infinity}', "[" * 100_000]
)
def test_bad_or_hostile_output_is_invalid_not_a_crash(text: str) -> None:
    with pytest.raises(ParseError):
        parse(text, PERSON if text.startswith("{") else JSON)


@pytest.mark.parametrize("text", ['{"a": 1e999}', "[-1e999]", '{"a": {"b": [1.5E400]}}'])
def test_numbers_that_overflow_to_infinity_are_invalid(text: str) -> None:
    # Python's json reads 1e999 as inf, which /invoke would answer as null, /stream as Infinity.
    with pytest.raises(ParseError):
        parse(text, JSON)


def test_schema_errors_name_the_rule_and_place_but_not_the_value() -> None:
    with pytest.raises(ParseError) as e:
        parse(
            '{"name": "Alice Smith-Private"}',
            OutputParser(
                type="json",
                json_schema={"type": "object", "properties": {"name": {"type": "integer"}}},
            ),
        )
    assert "'type' rule at name" in str(e.value)
    assert "Alice" not in str(e.value)
