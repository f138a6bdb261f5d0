"""Tool calls read back from replies, whole and streamed; schemas closed as strict mode reads
them; the tool-call grammar's text (compiled against the real tokenizer in
tests/integration/test_constrained.py)."""

from __future__ import annotations

import pytest

from llmchain_server.dataplane.structured import (
    CallStream,
    Tool,
    ToolCall,
    calls_text,
    closed,
    read_calls,
    tools_grammar,
    with_tools,
)

BLOCK = (
    '<tool_call>[{"name": "add", "arguments": {"a": 1}}, {"name": "f", "arguments": {}}]'
    "</tool_call>"
)


def test_a_call_block_reads_as_calls_and_anything_else_as_text() -> None:
    content, calls = read_calls(BLOCK)
    assert content is None
    assert calls == [ToolCall("add", '{"a": 1}'), ToolCall("f", "{}")]
    for text in ("Hello", "<tool_call>[{bad json}]</tool_call>", "<tool_call>[]</tool_call>"):
        assert read_calls(text) == (text, [])


def test_calls_written_back_into_history_read_the_same() -> None:
    calls = [ToolCall("add", '{"a": 1}'), ToolCall("f", "{}")]
    assert read_calls(calls_text(calls)) == (None, calls)


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_a_streamed_reply_gives_what_the_whole_reply_gives(size: int) -> None:
    for reply in (BLOCK, "Plain text, with <b>tags</b> later.", "  <tool_ca", "<"):
        stream = CallStream()
        out: list[str | ToolCall] = []
        for i in range(0, len(reply), size):
            out += stream.feed(reply[i : i + size])
        out += stream.finish()
        content, calls = read_calls(reply)
        if calls:
            assert out == calls
        else:
            assert "".join(str(x) for x in out) == content


def test_text_is_released_as_soon_as_it_cannot_start_a_call() -> None:
    stream = CallStream()
    assert list(stream.feed("<tool")) == []  # may still be a call
    assert list(stream.feed("kit is")) == ["<toolkit is"]
    assert list(stream.feed(" here")) == [" here"]


def test_closed_closes_every_object_with_properties_and_leaves_the_rest() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "c": {"type": "object", "properties": {}, "additionalProperties": True},
            "d": {"type": "array", "items": [{"type": "object", "properties": {}}]},
        },
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["additionalProperties"] is True
    assert out["properties"]["d"]["items"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # a copy


def test_tools_are_listed_in_the_system_message() -> None:
    tools = [Tool("add", "Add", {"type": "object"})]
    first = with_tools([("user", "hi")], tools)
    assert first[0][0] == "system" and '"name": "add"' in first[0][1]
    kept = with_tools([("developer", "Be brief."), ("user", "hi")], tools)
    assert kept[0][1].startswith("Be brief.") and len(kept) == 2


def test_the_tool_grammar_names_each_tool_and_bounds_parallel_calls() -> None:
    tools = [Tool("add", "", {"type": "object"}), Tool("sub", "", {"type": "object"})]
    auto = tools_grammar(tools, required=False).text
    assert auto.startswith("start: calls | text\n") and '\\"name\\": \\"sub\\"' in auto
    assert '("," call){0,7}' in auto
    single = tools_grammar(tools, required=True, parallel=False).text
    assert single.startswith("start: calls\n") and "{0," not in single and "text:" not in single


def test_tool_names_are_checked() -> None:
    with pytest.raises(ValueError, match="must match"):
        Tool("a b")


def test_only_a_reply_that_is_exactly_a_call_block_of_offered_tools_calls() -> None:
    assert read_calls(" " + BLOCK) == (" " + BLOCK, [])  # the grammar's text may not start so
    assert read_calls(BLOCK, names={"add"}) == (BLOCK, [])  # f was not offered
    assert read_calls(BLOCK, names={"add", "f"})[1]


def test_a_streamed_block_ends_only_where_it_parses() -> None:
    tricky = '<tool_call>[{"name": "f", "arguments": {"s": "]</tool_call>"}}]</tool_call>'
    stream = CallStream()
    out: list[str | ToolCall] = []
    for ch in tricky:
        out += stream.feed(ch)
    out += stream.finish()
    assert out == [ToolCall("f", '{"s": "]</tool_call>"}')]
