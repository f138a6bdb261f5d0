"""The server under hostile clients (#12 items 8, 9, 14 and the Deliver section), as real
processes with the real model: 1 MB prompts and long remembered histories must not stall the
event loop (/healthz answers within the kubelet's 1 s liveness timeout, a protocol bound), idle
and trickling connections are closed, connections beyond the cap are refused, and SIGTERM ends
the process within the grace period with an error event on every stream it cut. Latency numbers
go to bench/hostile_load.py's JSON, not to assertions."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
import yaml

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.workload import build_deployment
from llmchain_operator.settings import Settings
from llmchain_server import contract
from tests.support.hostile import MEGABYTE_PROMPT, SERVER_ENV, HealthProbe, HostileLoad, Seen
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess

LIVENESS_TIMEOUT_MS = 1000  # the kubelet's default liveness probe timeout
ROOT = Path(__file__).resolve().parents[2]
MEMORY_CHAIN = {
    "name": "remember",
    "chain": {
        "inputs": ["topic"],
        "steps": [
            {
                "name": "say",
                "prompt": "Earlier: {% for turn in history %}{{ turn.inputs.topic }}; "
                "{% endfor %}\nNow say {{ topic }}.",
                "generation": {"maxTokens": 4},
            }
        ],
        "memory": {"window": 30, "ttlSeconds": 600},
    },
}
ECHO_CHAIN = {
    "name": "echo",
    "chain": {
        "inputs": ["topic"],
        "steps": [{"name": "say", "prompt": "Say {{ topic }}.", "generation": {"maxTokens": 4}}],
    },
}
LONG_CHAIN = {
    "name": "story",
    "chain": {
        "inputs": ["topic"],
        "steps": [
            {
                "name": "tell",
                "prompt": "Write a very long story about {{ topic }}.",
                "generation": {"maxTokens": 900, "temperature": 0.0},
            }
        ],
    },
}


def chain_file(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def hostile_server(
    model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    chain = chain_file(tmp_path_factory.mktemp("chains"), ECHO_CHAIN)
    s = ServerProcess(model_dirs("int4"), env=SERVER_ENV, args=["--chain", str(chain)])
    s.wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture
def memory_server(
    model_dirs: Callable[[str], Path], tmp_path: Path, redis_server: RedisServer
) -> Iterator[ServerProcess]:
    """A chain with memory, with the default prompt limits."""
    path = chain_file(tmp_path, MEMORY_CHAIN)
    s = ServerProcess(
        model_dirs("int4"), args=["--chain", str(path), "--memory-url", redis_server.url]
    )
    s.wait_ready()
    yield s
    assert s.stop() == 0


def assert_live(seen: Seen) -> None:
    summary = seen.summary()
    assert summary["count"] >= 3, summary
    assert not seen.failures, summary
    assert summary["max_ms"] < LIVENESS_TIMEOUT_MS, summary


def in_threads(work: list[Callable[[], object]]) -> list[object]:
    results: list[object] = [None] * len(work)

    def run(i: int) -> None:
        results[i] = work[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


# -- item 8: the event loop --------------------------------------------------------------------
def test_megabyte_prompts_leave_healthz_answering(hostile_server: ServerProcess) -> None:
    """Six 1 MB prompts at once (the character cap raised so they are tokenized, the worst
    case): before, each was tokenized on the event loop and /healthz waited seconds."""
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": MEGABYTE_PROMPT}]}
    text = {"model": "smollm2", "prompt": MEGABYTE_PROMPT}
    work: list[Callable[[], object]] = [
        lambda: hostile_server.post("/v1/chat/completions", chat) for _ in range(5)
    ]
    work.append(lambda: hostile_server.post("/v1/completions", text))
    with HealthProbe(hostile_server.port, every=0.05) as probe:
        answers = in_threads(work)
    for answer, param in zip(answers, ["messages"] * 5 + ["prompt"], strict=True):
        status, _, body = answer  # type: ignore[misc]
        assert status == 400, body
        assert body["error"]["param"] == param
        assert body["error"]["code"] == "context_length_exceeded"
        assert "tokens; the limit is 4096" in body["error"]["message"]
    assert_live(probe.seen)


def test_megabyte_chain_inputs_with_a_special_token_leave_healthz_answering(
    hostile_server: ServerProcess,
) -> None:
    """Eight chain inputs of 1 MB of `>` and one special token (the character cap raised so
    they are cleaned, the worst case): the cleaning is a Python loop per character once a
    text holds a special token; before, it ran on the event loop (~1 s each, /healthz
    stalled for seconds)."""
    body = {"input": {"topic": ">" * 1_000_000 + "<|im_end|>"}}
    work: list[Callable[[], object]] = [
        lambda: hostile_server.post("/v1/chains/echo/invoke", body) for _ in range(8)
    ]
    with HealthProbe(hostile_server.port, every=0.05) as probe:
        answers = in_threads(work)
    for answer in answers:
        status, _, error = answer  # type: ignore[misc]
        assert status == 400, error
        assert error["error"]["code"] == "context_length_exceeded", error
        assert error["error"]["param"] == "input", error
        assert "tokens; the limit is 4096" in error["error"]["message"], error
    assert_live(probe.seen)


def test_chain_inputs_are_remembered_without_special_tokens(
    memory_server: ServerProcess, redis_server: RedisServer
) -> None:
    """Memory keeps the cleaned inputs, so later turns find nothing left to clean."""
    config = {"configurable": {"session_id": "cleaned"}}
    forged = "a<|im_<|im_end|>start|>b"
    status, _, body = memory_server.post(
        "/v1/chains/remember/invoke", {"input": {"topic": forged}, "config": config}
    )
    assert status == 200, body
    store = redis.Redis.from_url(redis_server.url)
    turns = [json.loads(t) for t in store.lrange("llmchain:memory:remember:cleaned", 0, -1)]
    assert [t["inputs"]["topic"] for t in turns] == ["ab"]


def test_a_prompt_over_the_character_cap_is_refused_before_tokenizing(
    memory_server: ServerProcess,
) -> None:
    """The default cap is 16 characters per prompt token (65,536); a chain's inputs are
    measured before they are cleaned of special tokens (a second per MB), naming the input
    (or `input` when only all of them together are over)."""
    long = "word " * 14_000
    for path, body, param in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long}]}, "messages"),
        ("/v1/completions", {"prompt": long}, "prompt"),
        (
            "/v1/chains/remember/invoke",
            {"input": {"topic": long}, "config": {"configurable": {"session_id": "cap"}}},
            "input.topic",
        ),
        (
            "/v1/chains/remember/stream",
            {"input": {"topic": long}, "config": {"configurable": {"session_id": "cap"}}},
            "input.topic",
        ),
    ):
        status, _, error = memory_server.post(path, {"model": "smollm2", **body})
        assert status == 400, (path, error)
        assert error["error"]["param"] == param, (path, error)
        assert error["error"]["code"] == "context_length_exceeded", (path, error)
        assert "characters; the limit is 65536" in error["error"]["message"], (path, error)


def test_a_long_history_is_fitted_without_stalling_healthz(
    memory_server: ServerProcess, redis_server: RedisServer
) -> None:
    """20 remembered turns of 55,000 spaces (before: re-rendered and re-tokenized once per
    dropped turn, on the event loop: seconds per request), and 20 turns of 500 tokens that
    only the token budget (context 1024) can fit: the newest turns are kept."""
    store = redis.Redis.from_url(redis_server.url)
    for session, text in (("spaces", " " * 55_000), ("words", "word " * 500)):
        key = f"llmchain:memory:remember:{session}"
        for i in range(20):
            store.rpush(key, json.dumps({"inputs": {"topic": f"{i}{text}"}, "output": "ok"}))
    with HealthProbe(memory_server.port, every=0.05) as probe:
        answers = [
            memory_server.post(
                "/v1/chains/remember/invoke",
                {"input": {"topic": "rivers"}, "config": {"configurable": {"session_id": s}}},
            )
            for s in ("spaces", "words")
        ]
    for status, _, body in answers:
        assert status == 200, body
    words_usage = answers[1][2]["metadata"]["usage"]
    # One 500-token turn fits beside max_tokens in the context of 1024, two do not.
    assert 500 < words_usage["prompt_tokens"] <= 1024 - 4
    assert_live(probe.seen)


# -- item 7: one bounded log line per failure ---------------------------------------------------
def test_a_failing_request_logs_one_bounded_line(
    memory_server: ServerProcess, redis_server: RedisServer
) -> None:
    """A real 500: a session whose stored turn is not JSON. Before, each failure logged two
    tracebacks (ours, then uvicorn's "Exception in ASGI application" as Starlette re-raised)."""
    store = redis.Redis.from_url(redis_server.url)
    store.rpush("llmchain:memory:remember:broken", "{not json" + "x" * 100_000)
    body = {"input": {"topic": "rivers"}, "config": {"configurable": {"session_id": "broken"}}}
    for _ in range(3):
        status, _, error = memory_server.post("/v1/chains/remember/invoke", body)
        assert status == 500 and error["error"]["message"] == "internal error", error
    lines = [json.loads(line) for line in memory_server.logs().splitlines() if '"level"' in line]
    failures = [line for line in lines if line["level"] == "error"]
    assert len(failures) == 3, failures  # one line per failure, none from uvicorn
    assert "Traceback" in failures[0]["exception"]
    # Within 10 s the same exception type is one line without its traceback.
    assert all("Traceback" not in f["exception"] for f in failures[1:])
    assert all(len(json.dumps(f)) < 12_000 for f in failures)


# -- item 9: connections -----------------------------------------------------------------------
def closed_within(
    sock: socket.socket, seconds: float, trickle: bytes = b"", every: float = 0.5
) -> str:
    """How the server ended the connection (its first reply line, or `closed`, or the error
    name of a reset), sending `trickle` a byte every `every` seconds until then; fails when it
    is still open after `seconds`. A trickle lasts past `seconds`, so the server has to close a
    connection that is still sending (a deadline reset by each byte would never fire)."""
    assert not trickle or len(trickle) * every > seconds, "the trickle would end too soon"
    sock.settimeout(0.05)
    now = time.monotonic()
    deadline, next_byte, sent = now + seconds, now, 0
    while time.monotonic() < deadline:
        try:
            if sent < len(trickle) and time.monotonic() >= next_byte:
                sock.sendall(trickle[sent : sent + 1])
                sent, next_byte = sent + 1, next_byte + every
            reply = sock.recv(200)
            return reply.split(b"\r\n")[0].decode() if reply else "closed"
        except TimeoutError:
            continue
        except OSError as e:  # reset or broken pipe: closed by the server
            return type(e).__name__
    raise AssertionError(f"the connection was still open after {seconds} s ({sent} bytes sent)")


TIMEOUT = float(SERVER_ENV["LLMCHAIN_HEADER_TIMEOUT_SECONDS"])
assert float(SERVER_ENV["LLMCHAIN_BODY_TIMEOUT_SECONDS"]) == TIMEOUT
MARGIN = 2.0  # for a loaded machine; far less than a trickle's length


def test_idle_and_trickling_connections_are_closed(hostile_server: ServerProcess) -> None:
    """Header and body timeouts of 3 s (SERVER_ENV), each connection opened just before its
    check and trickling a byte every 0.5 s throughout: each is closed within the timeout (and
    a margin) while still sending. Before, all three stayed open."""
    address = ("127.0.0.1", hostile_server.port)
    closed = ("closed", "ConnectionResetError", "BrokenPipeError")
    cases: list[tuple[bytes, bytes, tuple[str, ...]]] = [
        (b"", b"", ("closed",)),  # idle
        (b"", b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"y" * 200, closed),  # headers
        (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n{",
            b" " * 400,
            ("HTTP/1.1 408 Request Timeout", *closed),
        ),  # body
    ]
    for head, trickle, outcomes in cases:
        with socket.create_connection(address) as sock:
            opened = time.monotonic()
            sock.sendall(head)
            assert closed_within(sock, TIMEOUT + MARGIN, trickle) in outcomes, (head, trickle)
            took = time.monotonic() - opened
        assert took > TIMEOUT - 0.5, f"closed after {took:.1f} s, before its timeout"


def test_connections_beyond_the_cap_are_refused(model_dirs: Callable[[str], Path]) -> None:
    s = ServerProcess(model_dirs("int4"), env={"LLMCHAIN_MAX_CONNECTIONS": "8"})
    try:
        s.wait_ready()
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(8)]
        extra = socket.create_connection(("127.0.0.1", s.port))
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_within(extra, 5) in ("HTTP/1.1 503 Service Unavailable", "closed")
        extra.close()
        for h in held:
            h.close()
        assert s.get("/healthz")[0] == 200  # places free again once connections close
    finally:
        assert s.stop() == 0
    assert s.log_path.read_text().count("Refused a connection") >= 1


# -- item 14: shutdown within the grace period -------------------------------------------------
def open_stream(port: int, path: str, body: dict[str, object]) -> Iterator[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200

    def lines() -> Iterator[str]:
        try:
            while line := response.readline():
                if text := line.decode().strip():
                    yield text
        except OSError:
            return
        finally:
            conn.close()

    return lines()


def pod_shutdown(termination_grace_period: int) -> tuple[float, float]:
    """For a pod the operator builds with this terminationGracePeriodSeconds: the server's
    LLMCHAIN_GRACE_SECONDS, and the seconds from SIGTERM to the kubelet's SIGKILL (the preStop
    pause counts against the period, and SIGTERM follows it)."""
    raw = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
    raw["metadata"]["namespace"] = "apps"
    raw["spec"].setdefault("serving", {})["terminationGracePeriodSeconds"] = (
        termination_grace_period
    )
    pod = build_deployment(LLMChainApp.model_validate(raw), Settings())["spec"]["template"]["spec"]
    server = next(
        c
        for c in pod["containers"]
        if any(e["name"] == contract.ENV_GRACE_SECONDS for e in c.get("env", []))
    )
    grace = next(e["value"] for e in server["env"] if e["name"] == contract.ENV_GRACE_SECONDS)
    pause = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return float(grace), float(pod["terminationGracePeriodSeconds"] - pause)


def logged_at(lines: list[dict[str, str]], start: str) -> datetime:
    """When the server logged the first line whose message begins with `start`."""
    line = next(line for line in lines if line["message"].startswith(start))
    return datetime.fromisoformat(line["time"].replace("Z", "+00:00"))


def test_shutdown_fits_the_grace_period_and_cut_streams_end_with_an_error(
    model_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    grace, kill_after = pod_shutdown(13)
    assert grace == 3.0 and kill_after > grace  # the operator's numbers for this period
    s = ServerProcess(
        model_dirs("int4"),
        env={"LLMCHAIN_GRACE_SECONDS": str(grace)},
        args=["--chain", str(chain_file(tmp_path, LONG_CHAIN))],
    )
    s.wait_ready()
    chat = {
        "model": "smollm2",
        "stream": True,
        "max_tokens": 900,
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }
    streams = [open_stream(s.port, "/v1/chat/completions", chat) for _ in range(2)]
    streams.append(open_stream(s.port, "/v1/chains/story/stream", {"input": {"topic": "the sea"}}))
    received: list[list[str]] = [[next(lines)] for lines in streams]  # each has started
    readers = [
        threading.Thread(target=lambda i=i: received[i].extend(streams[i]))  # type: ignore[misc]
        for i in range(3)
    ]
    for r in readers:
        r.start()
    signalled = time.monotonic()
    s.process.send_signal(signal.SIGTERM)
    code = s.process.wait(timeout=30)
    took = time.monotonic() - signalled
    for r in readers:
        r.join(timeout=10)
    s.stop()
    assert code == 0
    # The kubelet kills at the period the operator gives the pod (the server's grace and a
    # margin for the process to exit): the process, interpreter teardown included, is gone
    # within it; the drain itself (uvicorn's own wait included) within the grace, by the
    # server's own clock, so a slow shared machine's teardown does not count there.
    assert took < kill_after, f"exited {took:.1f} s after SIGTERM; the pod gets {kill_after} s"
    log = [json.loads(line) for line in s.log_path.read_text().splitlines() if '"time"' in line]
    signalled_at = logged_at(log, "Draining")
    for last in ("Cut 3 requests still in flight", "Finished server process"):
        drained = (logged_at(log, last) - signalled_at).total_seconds()
        assert drained <= grace, f"{last!r} {drained:.2f} s after SIGTERM; the grace was {grace}"
    for lines in received[:2]:
        last = json.loads(lines[-1].removeprefix("data: "))
        assert last["error"]["type"] == "service_unavailable", lines[-3:]
    chain_last = received[2][-1]
    assert received[2][-2] == "event: error" or chain_last == "event: error", received[2][-3:]
    assert json.loads(chain_last.removeprefix("data: "))["status_code"] == 503
    assert "Cut 3 requests still in flight" in s.log_path.read_text()


# -- the Deliver section: everything at once ---------------------------------------------------
def test_the_hostile_load_leaves_healthz_and_a_conversation_unharmed(
    hostile_server: ServerProcess,
) -> None:
    """1 MB prompts, trickled headers and bodies, idle connections and long streams read
    slowly, for 25 s: the conversation never fails and /healthz stays within the liveness
    timeout; bench/hostile_load.py records the same load's latencies."""
    result = HostileLoad(hostile_server.port).run(25)
    print(json.dumps(result, indent=1))
    conversation = result["conversation"]
    assert conversation["count"] >= 1 and not conversation["failures"], conversation
    assert_live_summary(result["healthz"])
    # The slow connections were closed by the server, not left open to the end.
    for name in ("idle", "trickle_headers", "trickle_bodies"):
        outcomes = result["attacks"][name]["outcomes"]
        assert sum(outcomes.values()) > outcomes.get("open at the end", 0), (name, outcomes)
    # Every log line stayed bounded (a traceback is at most a few KB).
    assert max(len(line) for line in hostile_server.logs().splitlines()) < 12_000


def assert_live_summary(summary: dict[str, object]) -> None:
    assert int(summary["count"]) >= 50, summary  # type: ignore[call-overload]
    assert not summary["failures"], summary
    assert float(summary["max_ms"]) < LIVENESS_TIMEOUT_MS, summary  # type: ignore[arg-type]
