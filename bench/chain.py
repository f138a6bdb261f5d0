"""Chain benchmark: the seed's kind of app, a two-step support chain with conversation memory
(rewrite the customer's message as a standalone question, then answer it), 8 conversations at
once, 6 turns each. Every turn re-sends the whole history, and both steps start with the same
system prompt and history. Side by side in one run:

- `ours`: our chain endpoint (`/v1/chains/support/stream`), memory in Redis, prefix cache on;
- `oursNoPrefixCache`: the same with LLMCHAIN_PREFIX_CACHE_TOKENS=0 (every prompt from scratch);
- `langchainLlamaServer`: how the seed's readers build it today: LangChain on the client
  (ChatPromptTemplate, RunnableWithMessageHistory over an in-memory history, ChatOpenAI,
  streaming) calling `llama-server -np 8` on the same GGUF;
- `langchainOurs`: that same client code against our OpenAI endpoint.

Both servers hold the same KV capacity: 8 sequences of 1024 tokens. Reported per turn number:
TTFT (first streamed token of the answer) and turn latency p50/p99, requests lost, and each
server's peak RSS (VmHWM).

    python bench/chain.py [--conversations 8] [--turns 6] [--out bench/results/chain.json]

Needs `llama-server` (hack/build-llama-server.sh); without it that side is skipped and said so.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server import (  # noqa: E402
    LLAMA_SERVER,
    build_model,
    llama_build_info,
    peak_rss_mib,
    say,
    stop,
    wait_ready,
)
from tests.support.model import gguf_path  # noqa: E402
from tests.support.redis import RedisServer, free_port  # noqa: E402

from llmchain_server.engine.cpu import cpu_kernels  # noqa: E402

SYSTEM = (
    "You are a support agent for an online shop. Answer the customer politely and briefly, "
    "in one or two sentences, and never invent order details."
)
REWRITE = "Rewrite the customer's last message as one standalone question."
MESSAGES = [
    "Hi, I am customer {i}. My order number {order} has not arrived yet.",
    "I ordered it two weeks ago. When will it come?",
    "Can you check where the parcel is now?",
    "What happens if it is lost?",
    "Can I get a refund instead?",
    "Thanks. Please summarise what we agreed.",
]
REWRITE_TOKENS, ANSWER_TOKENS = 32, 48
SLOTS, CONTEXT = 8, 1024

HISTORY = (
    "{% for turn in history %}Customer: {{ turn.inputs.message }}\n"
    "Agent: {{ turn.output }}\n{% endfor %}Customer: {{ message }}\n"
)
CHAIN = {
    "name": "support",
    "chain": {
        "inputs": ["message"],
        "memory": {"window": 20, "ttlSeconds": 3600},
        "steps": [
            {
                "name": "standalone",
                "system": SYSTEM,
                "prompt": HISTORY + "\n" + REWRITE,
                "generation": {"maxTokens": REWRITE_TOKENS, "temperature": 0.0},
            },
            {
                "name": "reply",
                "system": SYSTEM,
                "prompt": HISTORY + "(Standalone question: {{ standalone }})\nAgent:",
                "generation": {"maxTokens": ANSWER_TOKENS, "temperature": 0.0},
            },
        ],
    },
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def message(conversation: int, turn: int) -> str:
    return MESSAGES[turn].format(i=conversation, order=1000 + conversation)


# -- clients ---------------------------------------------------------------------------------
def chain_turn(port: int, conversation: int, turn: int) -> tuple[float, float, bool]:
    """One turn through our chain's stream: (TTFT, latency, complete)."""
    body = json.dumps(
        {
            "input": {"message": message(conversation, turn)},
            "config": {"configurable": {"session_id": f"bench-{conversation}"}},
        }
    )
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chains/support/stream", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        response.read()
        return 0.0, 0.0, False
    first, event, ended = 0.0, "", False
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
            ended = ended or event == "end"
        elif line.startswith("data:") and event == "data" and not first:
            first = time.monotonic() - started
        elif line.startswith("data:") and event == "error":
            return 0.0, 0.0, False
    conn.close()
    return first, time.monotonic() - started, ended and first > 0


def chain_client(port: int) -> Callable[[int, int], tuple[float, float, bool]]:
    return partial(chain_turn, port)


def langchain_client(port: int) -> Callable[[int, int], tuple[float, float, bool]]:
    """The chain built on the client with LangChain, against an OpenAI-compatible server."""
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.runnables.history import RunnableWithMessageHistory
    from langchain_openai import ChatOpenAI

    def llm(tokens: int) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="unused",  # type: ignore[arg-type]
            model="smollm2",
            temperature=0,
            max_tokens=tokens,  # type: ignore[call-arg]
            timeout=600,
            max_retries=0,
        )

    standalone = (
        ChatPromptTemplate.from_messages(
            [
                ("system", SYSTEM),
                MessagesPlaceholder("history"),
                ("human", "{message}\n\n" + REWRITE),
            ]
        )
        | llm(REWRITE_TOKENS)
        | StrOutputParser()
    )
    reply = (
        ChatPromptTemplate.from_messages(
            [
                ("system", SYSTEM),
                MessagesPlaceholder("history"),
                ("human", "{message}\n(Standalone question: {standalone})"),
            ]
        )
        | llm(ANSWER_TOKENS)
        | StrOutputParser()
    )
    histories: dict[str, InMemoryChatMessageHistory] = {}
    lock = threading.Lock()

    def history(session: str) -> InMemoryChatMessageHistory:
        with lock:
            return histories.setdefault(session, InMemoryChatMessageHistory())

    chain = RunnableWithMessageHistory(
        RunnablePassthrough.assign(standalone=standalone) | reply,  # type: ignore[arg-type]
        history,
        input_messages_key="message",
        history_messages_key="history",
    )

    def turn(conversation: int, number: int) -> tuple[float, float, bool]:
        started = time.monotonic()
        first = 0.0
        parts = []
        try:
            for piece in chain.stream(
                {"message": message(conversation, number)},
                config={"configurable": {"session_id": f"bench-{conversation}"}},
            ):
                if piece and not first:
                    first = time.monotonic() - started
                parts.append(piece)
        except Exception as e:  # a lost turn, counted
            say(f"  turn failed: {type(e).__name__}: {e}")
            return 0.0, 0.0, False
        return first, time.monotonic() - started, bool(parts) and first > 0

    return turn


# -- one side --------------------------------------------------------------------------------
def conversations(
    turn: Callable[[int, int], tuple[float, float, bool]], count: int, turns: int
) -> dict[str, Any]:
    results: list[list[tuple[float, float, bool]]] = [[] for _ in range(count)]

    def talk(i: int) -> None:
        for n in range(turns):
            results[i].append(turn(i, n))

    started = time.monotonic()
    threads = [threading.Thread(target=talk, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    by_turn = []
    for n in range(turns):
        ok = [r[n] for r in results if len(r) > n and r[n][2]]
        by_turn.append(
            {
                "turn": n + 1,
                "ttftP50": pct([t for t, _, _ in ok], 0.5),
                "ttftP99": pct([t for t, _, _ in ok], 0.99),
                "latencyP50": pct([lat for _, lat, _ in ok], 0.5),
                "latencyP99": pct([lat for _, lat, _ in ok], 0.99),
                "lost": count - len(ok),
            }
        )
    all_ok = [x for r in results for x in r if x[2]]
    return {
        "wallSeconds": wall,
        "lost": count * turns - len(all_ok),
        "latencyP50": pct([lat for _, lat, _ in all_ok], 0.5),
        "latencyP99": pct([lat for _, lat, _ in all_ok], 0.99),
        "byTurn": by_turn,
    }


def run_side(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    client: Callable[[], Callable[[int, int], tuple[float, float, bool]]],
    count: int,
    turns: int,
) -> dict[str, Any]:
    say(f"starting {name}")
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(ready_url, process)
        result = conversations(client(), count, turns)
        result["peakRssMiB"] = peak_rss_mib(process.pid)
        result["command"] = [Path(cmd[0]).name, *cmd[1:]]
        if process.poll() is not None:
            result["crashed"] = f"exit status {process.returncode}"
        first, last = result["byTurn"][0], result["byTurn"][-1]
        say(
            f"  {name}: turn 1 TTFT p50 {first['ttftP50']:.2f} s, turn {turns} TTFT p50 "
            f"{last['ttftP50']:.2f} s; latency p50 {result['latencyP50']:.2f} s, p99 "
            f"{result['latencyP99']:.2f} s; lost {result['lost']}; peak RSS "
            f"{result['peakRssMiB']:.0f} MiB"
        )
        return result
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chain.json")
    args = parser.parse_args()
    count, turns = args.conversations, min(args.turns, len(MESSAGES))
    sides: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(f"{tmp}/m")
        chain = Path(tmp) / "chain.json"  # JSON is YAML
        chain.write_text(json.dumps(CHAIN))
        env = {"LLMCHAIN_MAX_BATCH_SIZE": str(SLOTS), "LLMCHAIN_MAX_CONTEXT": str(CONTEXT)}
        for name, extra in (
            ("ours", {}),
            ("oursNoPrefixCache", {"LLMCHAIN_PREFIX_CACHE_TOKENS": "0"}),
            ("langchainOurs", {}),
        ):
            redis = RedisServer(workdir=Path(tmp))
            redis.start()
            port = free_port()
            cmd = [sys.executable, "-m", "llmchain_cli", "serve", "--model", f"{tmp}/m",
                   "--port", str(port), "--model-name", "smollm2", "--chain", str(chain),
                   "--memory-url", redis.url, "--log-level", "WARNING"]  # fmt: skip
            client = partial(langchain_client if name == "langchainOurs" else chain_client, port)
            try:
                sides[name] = run_side(
                    name, cmd, {**env, **extra}, f"http://127.0.0.1:{port}/readyz", client,
                    count, turns,
                )  # fmt: skip
                sides[name]["env"] = {**env, **extra}
            finally:
                redis.stop()
    if LLAMA_SERVER.exists():
        port = free_port()
        cmd = [str(LLAMA_SERVER), "-m", str(gguf_path()), "--port", str(port), "-np",
               str(SLOTS), "-c", str(SLOTS * CONTEXT), "-t", str(os.cpu_count() or 2),
               "--alias", "smollm2"]  # fmt: skip
        sides["langchainLlamaServer"] = run_side(
            "LangChain + llama-server -np 8", cmd, {}, f"http://127.0.0.1:{port}/health",
            partial(langchain_client, port), count, turns,
        )  # fmt: skip
        sides["langchainLlamaServer"]["build"] = llama_build_info(LLAMA_SERVER)
    else:
        say(f"{LLAMA_SERVER} is missing (hack/build-llama-server.sh): skipped llama-server")
    result = {
        "benchmark": "chain",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": cpu_kernels().to_json(),
        "conversations": count,
        "turns": turns,
        "kvCapacity": {"sequences": SLOTS, "tokensEach": CONTEXT},
        "chain": CHAIN,
        **sides,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(sides)
    print("| turn | " + " | ".join(f"{n} TTFT p50/p99 s | {n} latency p50/p99 s" for n in names))
    print("| --- " * (1 + 2 * len(names)) + "|")
    for n in range(turns):
        cells = []
        for name in names:
            t = sides[name]["byTurn"][n]
            cells.append(f"{t['ttftP50']:.2f}/{t['ttftP99']:.2f}")
            cells.append(f"{t['latencyP50']:.2f}/{t['latencyP99']:.2f}")
        print(f"| {n + 1} | " + " | ".join(cells) + " |")
    for name in names:
        s = sides[name]
        print(
            f"{name}: wall {s['wallSeconds']:.1f} s, latency p50 {s['latencyP50']:.2f} s p99 "
            f"{s['latencyP99']:.2f} s, lost {s['lost']}, peak RSS {s['peakRssMiB']:.0f} MiB"
        )
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
