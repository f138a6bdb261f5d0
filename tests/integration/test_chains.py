"""Chains on the real server and model: LangServe-shaped invoke / batch / stream, a two-step
chain whose first output feeds the second, memory per session in a real redis-server shared by
two server processes, JSON output validation with its retry, and hostile chain inputs."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tests.support.redis import RedisServer, free_port
from tests.support.server import ServerProcess

TWO_STEPS = {
    "name": "explain",
    "chain": {
        "inputs": ["topic"],
        "steps": [
            {
                "name": "facts",
                "prompt": "Give one fact about {{ topic }}.",
                "generation": {"maxTokens": 24},
            },
            {
                "name": "answer",
                "system": "You are a concise teacher.",
                "prompt": "Earlier we talked about: {% for turn in history %}"
                "{{ turn.inputs.topic }}; {% endfor %}\nFact: {{ facts }}\n"
                "Explain {{ topic }} in one sentence.",
                "generation": {"maxTokens": 24},
            },
        ],
        "memory": {"window": 2, "ttlSeconds": 600},
    },
}
ONE_STEP = {
    "name": "echo",
    "chain": {
        "inputs": ["topic"],
        "steps": [{"name": "say", "prompt": "Say {{ topic }}.", "generation": {"maxTokens": 2}}],
    },
}
STRICT_JSON = {
    "name": "extract",
    "chain": {
        "inputs": ["text"],
        "steps": [
            {
                "name": "data",
                "prompt": "Return JSON for: {{ text }}",
                "generation": {"maxTokens": 16},
                "output": {
                    "type": "json",
                    "jsonSchema": {"type": "object", "required": ["impossible_key_zq"]},
                },
            }
        ],
    },
}


def chain_file(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def memory_servers(
    model_dirs: Callable[[str], Path], tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two replicas of the same chain sharing one conversation store."""
    path = chain_file(tmp_path, TWO_STEPS)
    replicas = [
        ServerProcess(
            model_dirs("int4"), args=["--chain", str(path), "--memory-url", redis_server.url]
        )
        for _ in range(2)
    ]
    for r in replicas:
        r.wait_ready()
    yield replicas[0], replicas[1]
    for r in replicas:
        assert r.stop() == 0


def invoke(
    server: ServerProcess, chain: str, payload: dict[str, object]
) -> tuple[int, dict[str, object]]:
    status, _, body = server.post(f"/v1/chains/{chain}/invoke", payload)
    return status, body


def test_invoke_runs_both_steps_and_remembers_across_replicas(
    memory_servers: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    first, second = memory_servers
    config = {"configurable": {"session_id": "alice-1"}}
    status, body = invoke(first, "explain", {"input": {"topic": "volcanoes"}, "config": config})
    assert status == 200, body
    assert isinstance(body["output"], str) and body["output"]
    assert body["metadata"]["run_id"]  # type: ignore[index]
    usage = body["metadata"]["usage"]  # type: ignore[index]
    # Two steps ran: more prompt tokens than either template alone could make.
    assert usage["prompt_tokens"] > 60 and usage["completion_tokens"] > 0
    store = redis.Redis.from_url(redis_server.url)
    turns = [json.loads(t) for t in store.lrange("llmchain:memory:explain:alice-1", 0, -1)]
    assert turns == [{"inputs": {"topic": "volcanoes"}, "output": body["output"]}]
    assert 0 < store.ttl("llmchain:memory:explain:alice-1") <= 600

    # The next turn lands on the other replica and still sees the history.
    status, again = invoke(second, "explain", {"input": {"topic": "glaciers"}, "config": config})
    assert status == 200, again
    grown = again["metadata"]["usage"]["prompt_tokens"]  # type: ignore[index]
    assert grown > usage["prompt_tokens"]  # "volcanoes; " is now in the second prompt
    for topic in ("rivers", "deserts"):
        invoke(first, "explain", {"input": {"topic": topic}, "config": config})
    turns = [json.loads(t) for t in store.lrange("llmchain:memory:explain:alice-1", 0, -1)]
    assert [t["inputs"]["topic"] for t in turns] == ["rivers", "deserts"]  # window of 2

    # Each step logged a line carrying the request's id, so one request can be followed.
    status, _, _ = first.post(
        "/v1/chains/explain/invoke",
        {"input": {"topic": "tides"}, "config": config},
        headers={"X-Request-ID": "follow-me-1"},
    )
    assert status == 200
    lines = [json.loads(x) for x in first.logs().splitlines() if x.startswith("{")]
    steps = [e["step"] for e in lines if e.get("request_id") == "follow-me-1" and "step" in e]
    assert steps == ["facts", "answer"]
    assert "tides" not in first.logs()  # inputs are never logged


def test_batch_and_stream_in_langserve_shapes(
    memory_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = memory_servers
    status, _, body = server.post(
        "/v1/chains/explain/batch",
        {
            "inputs": [{"topic": "bees"}, {"topic": "owls"}],
            "config": [
                {"configurable": {"session_id": "b1"}},
                {"configurable": {"session_id": "b2"}},
            ],
        },
    )
    assert status == 200, body
    assert len(body["output"]) == 2 and len(body["metadata"]["run_ids"]) == 2

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request(
        "POST",
        "/v1/chains/explain/stream",
        json.dumps(
            {"input": {"topic": "comets"}, "config": {"configurable": {"session_id": "s1"}}}
        ),
        {"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200
    events = [e for e in response.read().decode().split("\n\n") if e.strip()]
    kinds = [e.splitlines()[0] for e in events]
    assert kinds[0] == "event: metadata" and kinds[-1] == "event: end"
    pieces = [json.loads(e.splitlines()[1][6:]) for e in events if e.startswith("event: data")]
    assert len(pieces) > 1 and "".join(pieces).strip()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"input": {"topic": "x"}}, "session_id"),
        (
            {"input": {"topic": "x"}, "config": {"configurable": {"session_id": "../../etc"}}},
            "session_id",
        ),
        ({"input": {}, "config": {"configurable": {"session_id": "a"}}}, "input lacks topic"),
        (
            {"input": {"topic": "x", "evil": 1}, "config": {"configurable": {"session_id": "a"}}},
            "unknown fields: evil",
        ),
        (
            {"input": "just text", "config": {"configurable": {"session_id": "a"}}},
            "input must be an object",
        ),
    ],
)
def test_bad_chain_inputs_are_400(
    memory_servers: tuple[ServerProcess, ServerProcess], payload: dict[str, object], words: str
) -> None:
    status, body = invoke(memory_servers[0], "explain", payload)
    assert status == 400
    assert words in body["error"]["message"]  # type: ignore[index]


def test_inputs_never_reach_python_internals(
    memory_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    status, body = invoke(
        memory_servers[0],
        "explain",
        {"input": {"topic": evil}, "config": {"configurable": {"session_id": "eve"}}},
    )
    assert status == 200  # an input is data: substituted as text, never evaluated
    assert "<class" not in str(body["output"])


def test_unknown_chain_is_404(memory_servers: tuple[ServerProcess, ServerProcess]) -> None:
    status, body = invoke(memory_servers[0], "other", {"input": {}})
    assert status == 404
    assert body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_json_steps_decode_under_their_schema(
    model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    """The schema asks for a key no model would write by itself: constrained decoding writes
    it, first time (the step's JSON used to be retried once, then a 502)."""
    server = ServerProcess(
        model_dirs("int4"), args=["--chain", str(chain_file(tmp_path, STRICT_JSON))]
    )
    try:
        server.wait_ready()
        status, body = invoke(server, "extract", {"input": {"text": "a cat named Tom"}})
        assert status == 200, body
        assert isinstance(body["output"], dict) and "impossible_key_zq" in body["output"]
    finally:
        server.stop()


def test_a_json_step_cut_by_its_stop_sequence_is_a_502(
    model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    cut = {**STRICT_JSON, "name": "cut"}
    cut["chain"] = json.loads(json.dumps(STRICT_JSON["chain"]))
    cut["chain"]["steps"][0]["generation"]["stop"] = ["impossible"]  # type: ignore[index]
    server = ServerProcess(model_dirs("int4"), args=["--chain", str(chain_file(tmp_path, cut))])
    try:
        server.wait_ready()
        status, body = invoke(server, "cut", {"input": {"text": "a cat named Tom"}})
        assert status == 502
        assert "step data" in body["error"]["message"]  # type: ignore[index]
    finally:
        server.stop()


def test_a_json_step_whose_schema_cannot_fit_its_max_tokens_stops_the_server(
    model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    tight = {**STRICT_JSON, "name": "tight"}
    tight["chain"] = json.loads(json.dumps(STRICT_JSON["chain"]))
    tight["chain"]["steps"][0]["generation"]["maxTokens"] = 3  # type: ignore[index]
    server = ServerProcess(model_dirs("int4"), args=["--chain", str(chain_file(tmp_path, tight))])
    assert server.process.wait(timeout=120) == 1
    assert "step data's jsonSchema" in server.logs()
    assert "fits in max_tokens (3)" in server.logs()


def test_a_chain_with_memory_needs_a_store(
    model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    server = ServerProcess(
        model_dirs("int4"), args=["--chain", str(chain_file(tmp_path, TWO_STEPS))]
    )
    assert server.process.wait(timeout=120) == 1
    assert "has memory: give --memory-url" in server.logs()


@pytest.fixture(scope="module")
def small_server(
    model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A chain without memory on a server that runs at most two requests at once."""
    path = chain_file(tmp_path_factory.mktemp("chain"), ONE_STEP)
    server = ServerProcess(
        model_dirs("int4"), args=["--chain", str(path)], env={"LLMCHAIN_MAX_CONCURRENCY": "2"}
    )
    server.wait_ready()
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("op", ["invoke", "stream", "batch"])
@pytest.mark.parametrize(
    "given",
    [
        r'{"topic": "a\ud800b"}',
        r'{"topic": "x", "\udfff": 1}',
        r'{"topic": ["\ud800"]}',
        r'{"topic": {"\ud800": 1}}',
    ],
)
def test_lone_surrogates_in_chain_inputs_are_400(
    small_server: ServerProcess, op: str, given: str
) -> None:
    # Raw JSON, escapes spelled out as a hostile client sends them (as a value, a key, nested).
    field = '"inputs": [' + given + "]" if op == "batch" else '"input": ' + given
    status, _, body = small_server.post(f"/v1/chains/echo/{op}", ("{" + field + "}").encode())
    assert status == 400, body
    assert body["error"]["param"] == "input"
    message = body["error"]["message"]
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in message)  # keys are never echoed


def test_a_batch_larger_than_the_concurrency_limit_is_400_naming_it(
    small_server: ServerProcess,
) -> None:
    inputs = [{"topic": str(i)} for i in range(3)]
    status, _, body = small_server.post("/v1/chains/echo/batch", {"inputs": inputs})
    assert status == 400, body  # was 429 however often the client retried
    assert body["error"]["param"] == "inputs"
    assert "limit 2" in body["error"]["message"]
    status, _, body = small_server.post("/v1/chains/echo/batch", {"inputs": inputs[:2]})
    assert status == 200, body


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*/app.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_chain_holds_a_two_turn_conversation(
    model_dirs: Callable[[str], Path],
    embedding_dirs: Callable[[str], Path],
    tmp_path: Path,
    redis_server: RedisServer,
    example: Path,
) -> None:
    """The chain each example renders into its ConfigMap, served for real: two turns of one
    session, so a template reading `history` meets the entries memory really stores."""
    from llmchain_operator.api import LLMChainApp
    from llmchain_operator.builders.workload import render_chain_config

    app = LLMChainApp.model_validate(yaml.safe_load(example.read_text()))
    rendered = yaml.safe_load(render_chain_config(app))
    tools = None
    if rendered.get("tools"):  # the example's tool service, as a local process on loopback
        port = free_port()
        tools = subprocess.Popen(
            [sys.executable, str(example.parent / "tool_service.py"), "--port", str(port)]
        )
        for tool in rendered["tools"]:
            tool["http"]["url"] = tool["http"]["url"].replace(
                "http://shop-tools", f"http://127.0.0.1:{port}"
            )
            tool["http"]["allowedHosts"] = ["127.0.0.1"]
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(rendered))
    chain = app.spec.chain
    args = ["--chain", str(path)]
    if chain.memory is not None:
        args += ["--memory-url", redis_server.url]
    retrieval = app.spec.retrieval
    if retrieval is not None:  # the example's pages, indexed as the operator's build would
        from llmchain_server.retrieval.build import build_index
        from llmchain_server.retrieval.chunking import Chunking

        embedding = embedding_dirs(retrieval.embedding_model.quantization)
        chunking = Chunking(retrieval.chunking.size, retrieval.chunking.overlap)
        build_index(example.parent / "docs", embedding, tmp_path / "index", chunking)
        args += ["--embedding-model", str(embedding), "--index", str(tmp_path / "index")]
    server = ServerProcess(model_dirs("int4"), args=args)
    try:
        server.wait_ready()
        name = str(app.metadata["name"])
        inputs = {i: f"my order {n} has not arrived" for n, i in enumerate(chain.inputs)}
        if "order" in inputs:
            inputs["order"] = "A1234"  # an id in the example's order table
        payload = {"input": inputs, "config": {"configurable": {"session_id": "two-turns"}}}
        for turn in (1, 2):
            status, body = invoke(server, name, payload)
            assert status == 200, f"turn {turn}: {body}"
        if chain.memory is not None:
            turns = redis.Redis.from_url(redis_server.url).llen(f"llmchain:memory:{name}:two-turns")
            assert turns == 2
    finally:
        assert server.stop() == 0
        if tools is not None:
            tools.terminate()
            tools.wait(timeout=10)


@pytest.fixture
def memory_server(
    model_dirs: Callable[[str], Path], tmp_path: Path, redis_server: RedisServer
) -> Iterator[ServerProcess]:
    """One server of the two-step chain with memory in a real redis-server."""
    server = ServerProcess(
        model_dirs("int4"),
        args=["--chain", str(chain_file(tmp_path, TWO_STEPS)), "--memory-url", redis_server.url],
    )
    server.wait_ready()
    yield server
    assert server.stop() == 0


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [478, 500])
def test_a_deeply_nested_input_is_400_and_cannot_poison_the_session(
    memory_server: ServerProcess, depth: int
) -> None:
    """Nested ~500 deep it was a 500 (RecursionError); ~478 deep it was stored, and every
    later turn of the session failed until the history expired."""
    config = {"configurable": {"session_id": f"deep-{depth}"}}
    for op in ("invoke", "stream"):
        status, _, body = memory_server.post(
            f"/v1/chains/explain/{op}", {"input": {"topic": nested(depth)}, "config": config}
        )
        assert status == 400, body
        assert body["error"]["param"] == "input.topic"
        assert body["error"]["type"] == "invalid_request_error"
    status, body = invoke(memory_server, "explain", {"input": {"topic": "rain"}, "config": config})
    assert status == 200, body
    status, body = invoke(memory_server, "explain", {"input": {"topic": "snow"}, "config": config})
    assert status == 200, body


def test_inputs_within_the_bounds_still_run(memory_server: ServerProcess) -> None:
    config = {"configurable": {"session_id": "bounds"}}
    status, body = invoke(
        memory_server, "explain", {"input": {"topic": nested(32)}, "config": config}
    )
    assert status == 200, body
    many = {"input": {"topic": [0] * 10_001}, "config": config}
    status, body = invoke(memory_server, "explain", many)
    assert status == 400, body
    assert "more than 10000" in body["error"]["message"]  # type: ignore[index]


def test_chain_errors_name_the_parameter_and_code(memory_server: ServerProcess) -> None:
    status, body = invoke(memory_server, "explain", {"input": {"topic": "x"}})
    assert status == 400, body
    assert body["error"]["param"] == "config.configurable.session_id"  # type: ignore[index]
    config = {"configurable": {"session_id": "long"}}
    status, body = invoke(
        memory_server, "explain", {"input": {"topic": "word " * 2000}, "config": config}
    )
    assert status == 400, body
    assert body["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    assert body["error"]["param"] == "input"  # type: ignore[index]


def stream_status(
    server: ServerProcess, payload: dict[str, object]
) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and whole body of a chain stream request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request(
        "POST",
        "/v1/chains/explain/stream",
        json.dumps(payload),
        {"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    try:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_a_chain_stream_refuses_before_its_200_like_invoke(
    memory_server: ServerProcess, redis_server: RedisServer
) -> None:
    """A prompt too long is a 400 and a memory store down a 503 with Retry-After, as /invoke
    answers them, not a 200 followed by an error event."""
    config = {"configurable": {"session_id": "stream-refusals"}}
    long = {"input": {"topic": "word " * 2000}, "config": config}
    status, headers, raw = stream_status(memory_server, long)
    assert status == 400, raw
    assert headers["content-type"] == "application/json"
    assert json.loads(raw)["error"]["code"] == "context_length_exceeded"

    redis_server.stop()
    down = {"input": {"topic": "rain"}, "config": config}
    assert invoke(memory_server, "explain", down)[0] == 503
    status, headers, raw = stream_status(memory_server, down)
    assert status == 503, raw
    assert headers["retry-after"] == "1"
    assert json.loads(raw)["error"]["type"] == "service_unavailable"
    redis_server.start()  # the same port: the session works again
    status, headers, raw = stream_status(memory_server, down)
    assert status == 200, raw
    assert raw.decode().rstrip().endswith("event: end")
