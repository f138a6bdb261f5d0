"""Structured output and tool calling through real clients against the real server: the `openai`
client (tools, tool_choice, streamed tool-call deltas, `tool` messages, response_format with
`.parse()`), LangChain's `ChatOpenAI.bind_tools(...)` and `with_structured_output(...)`, and a
LangGraph tool-calling agent looping against the server with a real Python tool. Every call and
structured output is checked against its schema; bad schemas and tools are 400s naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

from tests.support.server import ServerProcess

CONVERT = {
    "type": "object",
    "properties": {
        "value": {"type": "number"},
        "from_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb"]},
        "to_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb"]},
    },
    "required": ["value", "from_unit", "to_unit"],
    "additionalProperties": False,
}
STATUS = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "maxLength": 12}},
    "required": ["order_id"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "convert_units",
            "description": "Convert a value from one unit to another",
            "parameters": CONVERT,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "description": "Look up the status of an order by its id",
            "parameters": STATUS,
        },
    },
]
SCHEMAS = {"convert_units": CONVERT, "order_status": STATUS}
QUESTION = [{"role": "user", "content": "How many miles is 42 km?"}]
FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623}


class City(BaseModel):
    name: str
    country: str
    population: int


@pytest.fixture(scope="module")
def server(model_dirs: Callable[[str], Path]) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dirs("int4"))
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat_model(server: ServerProcess, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model="smollm2",
        temperature=0,
        max_retries=0,
        **kwargs,
    )


def check_call(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(args, SCHEMAS[name])
    return args


# -- the openai client --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "order_status"}}],
    ids=["required", "named"],
)
def test_forced_tool_calls_are_well_formed(client: OpenAI, choice: Any) -> None:
    r = client.chat.completions.create(
        model="smollm2", messages=QUESTION, tools=TOOLS, tool_choice=choice, max_tokens=96
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None and c.message.tool_calls
    for call in c.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        check_call(call.function.name, call.function.arguments)
    if isinstance(choice, dict):
        assert {call.function.name for call in c.message.tool_calls} == {"order_status"}


def test_auto_and_none_choices(client: OpenAI) -> None:
    auto = client.chat.completions.create(
        model="smollm2", messages=QUESTION, tools=TOOLS, tool_choice="auto", max_tokens=96
    ).choices[0]
    if auto.message.tool_calls:  # the model's choice; either way it is well-formed
        assert auto.finish_reason == "tool_calls"
        for call in auto.message.tool_calls:
            check_call(call.function.name, call.function.arguments)
    else:
        assert auto.message.content and not auto.message.content.startswith("<tool_call>")
    none = client.chat.completions.create(
        model="smollm2", messages=QUESTION, tools=TOOLS, tool_choice="none", max_tokens=24
    ).choices[0]
    assert none.message.tool_calls is None and none.finish_reason in ("stop", "length")


def test_streamed_tool_calls_match_the_whole_answer(client: OpenAI) -> None:
    whole = client.chat.completions.create(
        model="smollm2", messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=96
    ).choices[0]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for event in client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=96,
        stream=True,
    ):
        if not event.choices:
            continue
        delta = event.choices[0].delta
        assert not delta.content  # a call block never leaks out as text
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"name": "", "arguments": ""})
            assert part.function is not None
            entry["name"] += part.function.name or ""
            entry["arguments"] += part.function.arguments or ""
        finish = event.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert whole.message.tool_calls is not None
    assert [calls[i] for i in sorted(calls)] == [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in whole.message.tool_calls
    ]


def test_a_tool_result_in_the_conversation(client: OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "convert_units", "arguments": '{"value": 42, "from_unit": "km"}'},
    }
    messages: Any = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "26.1 mi"},
    ]
    r = client.chat.completions.create(
        model="smollm2", messages=messages, tools=TOOLS, max_tokens=32
    )
    assert r.choices[0].message.content or r.choices[0].message.tool_calls


def test_json_object_and_json_schema_outputs(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=64,
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    parsed = client.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=64,
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


# -- LangChain and LangGraph --------------------------------------------------------------------
def test_langchain_bind_tools(server: ServerProcess) -> None:
    llm = chat_model(server, max_tokens=96).bind_tools(TOOLS, tool_choice="convert_units")
    message = llm.invoke("How many miles is 42 km?")
    assert isinstance(message, AIMessage) and message.tool_calls
    for call in message.tool_calls:
        assert call["name"] == "convert_units"
        check_call(call["name"], call["args"])


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(server: ServerProcess, method: str) -> None:
    """json_mode asks for any JSON object (no schema reaches the server), so it parses to a
    dict; the other two send City's schema, which the output then always fits."""
    llm = chat_model(server, max_tokens=64)
    if method == "json_mode":
        structured: Any = llm.with_structured_output(None, method="json_mode")
        assert isinstance(structured.invoke("Describe Paris as JSON."), dict)
        return
    structured = llm.with_structured_output(City, method=method)  # type: ignore[arg-type]
    assert isinstance(structured.invoke("Describe Paris."), City)


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a value from one unit to another (km, mi, kg, lb)."""
    factor = FACTORS.get((from_unit, to_unit), 1.0 if from_unit == to_unit else None)
    if factor is None:
        return f"cannot convert {from_unit} to {to_unit}"
    return f"{value * factor:.3f} {to_unit}"


def test_a_langgraph_agent_loops_with_a_real_tool(server: ServerProcess) -> None:
    """The agent's first turn must call a tool (tool_choice "required"), the tool runs in this
    process, its result goes back as a `tool` message, and later turns may answer or call."""
    llm = chat_model(server, max_tokens=96)
    forced = llm.bind_tools([convert_units], tool_choice="required")
    free = llm.bind_tools([convert_units])

    def agent(state: MessagesState) -> dict[str, list[Any]]:
        called = any(isinstance(m, ToolMessage) for m in state["messages"])
        return {"messages": [(free if called else forced).invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([convert_units]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    app = graph.compile()
    try:
        result = app.invoke(
            {"messages": [HumanMessage("How many miles is 42 km?")]}, {"recursion_limit": 8}
        )
    except GraphRecursionError:  # the loop's bound, should a CPU's numerics keep it calling
        pytest.xfail("the model kept calling the tool until the recursion limit")
    messages = result["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert calls and results and len(results) == len(calls)
    sent = convert_to_openai_tool(convert_units)["function"]["parameters"]  # what LangChain sent
    for call in calls:
        jsonschema.validate(call["args"], {**sent, "additionalProperties": False})
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": 9}},
                },
                "max_tokens": 3,
            },
            "response_format",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 17}},
                }
            },
            "response_format",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
    ids=["no output fits max_tokens", "not a schema", "dangling $ref"],
)
def test_schemas_the_constraint_refuses_are_400s(
    client: OpenAI, extra: dict[str, Any], param: str
) -> None:
    """Checked by llguidance against the tokenizer (tests/integration/test_server.py has the
    cases the request's fields refuse alone)."""
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, **{"max_tokens": 32, **extra}
        )
    body: Any = caught.value.body
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param


def test_hostile_schemas_do_not_hurt_the_server(client: OpenAI) -> None:
    """A schema nested 100 deep, one with 5,000 properties, a catastrophic pattern: each is
    answered (valid output) or refused (a 400), and the server answers normally after."""
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}
    pattern = {"type": "string", "pattern": "^(a+)+$"}
    for schema in (deep, wide, pattern):
        try:
            r = client.chat.completions.create(
                model="smollm2",
                messages=QUESTION,
                max_tokens=400,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema},
                },
            )
        except BadRequestError:
            continue
        if r.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8)
    assert r.choices[0].message.content
