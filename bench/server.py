"""Server benchmark: end to end over HTTP, streaming chat completions with unique prompts and
64 new tokens, at 1, 8 and 32 concurrent clients: aggregate tokens/s, TTFT p50/p99, request
latency p50/p99, and requests lost. Side by side in one run with llama-cpp-python's
OpenAI-compatible server on the same GGUF (started with `--interrupt_requests False`: by default
it cuts running streams when a new request arrives). Also the cache: hit latency p50/p99 against
a miss on our server.

A client honours 429 + Retry-After by waiting and retrying; a request is lost when it never gets
a complete response or its stream ends without `[DONE]`.

    python bench/server.py [--clients 1 8 32] [--out bench/results/server.json]

Needs the bench virtualenv (hack/bench-env.sh) with llama-cpp-python's server extra.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.model import gguf_path  # noqa: E402
from tests.support.redis import RedisServer, free_port  # noqa: E402

from llmchain_server.engine.cpu import cpu_kernels  # noqa: E402

BENCH_PYTHON = Path.home() / ".cache" / "llmchain" / "bench-venv" / "bin" / "python"
LLAMA_SERVER = Path.home() / ".cache" / "llmchain" / "bench-bin" / "llama-server"
TOKENS = 64


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def one_request(port: int, model: str, prompt: str, out: list[dict[str, Any]]) -> None:
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": TOKENS,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }
    )
    started = time.monotonic()
    for _ in range(100):  # retries after 429
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status == 429:
            time.sleep(float(response.getheader("Retry-After") or "1"))
            response.read()
            conn.close()
            continue
        first, pieces, done = None, 0, False
        while line := response.readline():
            text = line.decode().strip()
            if text == "data: [DONE]":
                done = True
            elif text.startswith("data: {"):
                delta = json.loads(text[6:])["choices"]
                if delta and delta[0].get("delta", {}).get("content"):
                    pieces += 1
                    first = first or time.monotonic()
        conn.close()
        end = time.monotonic()
        out.append(
            {
                "ok": response.status == 200 and done,
                "ttft": (first or end) - started,
                "latency": end - started,
                "pieces": pieces,
                "end": end,
            }
        )
        return
    out.append({"ok": False, "ttft": 0.0, "latency": 0.0, "pieces": 0, "end": time.monotonic()})


def load(port: int, model: str, clients: int, tag: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=one_request,
            args=(
                port,
                model,
                f"[{tag} {clients}/{i}] Write a short paragraph about the number {i}.",
                runs,
            ),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in runs) - start
    ok = [r for r in runs if r["ok"]]

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {
        "clients": clients,
        "lost": len(runs) - len(ok),
        "tokensPerSecond": sum(r["pieces"] for r in ok) / wall,
        "ttftP50": pct([r["ttft"] for r in ok], 0.5),
        "ttftP99": pct([r["ttft"] for r in ok], 0.99),
        "latencyP50": pct([r["latency"] for r in ok], 0.5),
        "latencyP99": pct([r["latency"] for r in ok], 0.99),
    }


def cache_latencies(port: int, model: str, repeats: int = 20) -> dict[str, float]:
    def ask() -> float:
        body = json.dumps(
            {
                "model": model,
                "max_tokens": TOKENS,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Name three rivers."}],
            }
        )
        started = time.monotonic()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
        return time.monotonic() - started

    miss = ask()
    hits = sorted(ask() for _ in range(repeats))
    return {
        "missSeconds": miss,
        "hitP50Seconds": statistics.median(hits),
        "hitP99Seconds": hits[-1],
    }


def run_side(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    model: str,
    ready: str,
    clients: list[int],
) -> dict[str, Any]:
    say(f"starting {name}")
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", process)
        one_request(port, model, "warm up", [])
        result: dict[str, Any] = {"levels": []}
        for level in clients:
            entry = load(port, model, level, name)
            say(
                f"  {name} {level:2d} clients: {entry['tokensPerSecond']:.1f} tokens/s, TTFT p50 "
                f"{entry['ttftP50']:.2f} s, lost {entry['lost']}"
            )
            result["levels"].append(entry)
        return result
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "server.json")
    args = parser.parse_args()
    if not BENCH_PYTHON.exists():
        sys.exit(f"{BENCH_PYTHON} is missing: run hack/bench-env.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        say("building the int4 model")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "llmchain_cli",
                "model",
                "build",
                "--source",
                str(gguf_path()),
                "--quantization",
                "int4",
                "--out",
                f"{tmp}/m",
            ],
            check=True,
            capture_output=True,
        )
        redis = RedisServer(workdir=Path(tmp))
        redis.start()
        ours_port = free_port()
        ours_cmd = [
            sys.executable,
            "-m",
            "llmchain_cli",
            "serve",
            "--model",
            f"{tmp}/m",
            "--port",
            str(ours_port),
            "--model-name",
            "smollm2",
            "--redis-url",
            redis.url,
            "--log-level",
            "WARNING",
        ]
        ours_env = {"LLMCHAIN_MAX_BATCH_SIZE": "16", "LLMCHAIN_MAX_CONTEXT": "1024"}
        ours = run_side("ours", ours_cmd, ours_env, ours_port, "smollm2", "/readyz", args.clients)
        process = subprocess.Popen(
            ours_cmd,
            env={**os.environ, **ours_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"http://127.0.0.1:{ours_port}/readyz", process)
        ours["cache"] = cache_latencies(ours_port, "smollm2")
        process.terminate()
        process.wait(timeout=60)
        redis.stop()
    llama_port = free_port()
    llama = run_side(
        "llama-cpp-python",
        [
            str(BENCH_PYTHON),
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf_path()),
            "--port",
            str(llama_port),
            "--n_threads",
            str(os.cpu_count() or 2),
            "--n_ctx",
            "2048",
            "--interrupt_requests",
            "False",
            "--model_alias",
            "smollm2",
        ],
        {},
        llama_port,
        "smollm2",
        "/v1/models",
        args.clients,
    )
    sides = {"ours": ours, "llamaCppPython": llama}
    if LLAMA_SERVER.exists():
        port = free_port()
        sides["llamaServerNp8"] = run_side(
            "llama-server -np 8",
            [
                str(LLAMA_SERVER),
                "-m",
                str(gguf_path()),
                "--port",
                str(port),
                "-np",
                "8",
                "-c",
                "8192",
                "-t",
                str(os.cpu_count() or 2),
                "--alias",
                "smollm2",
            ],
            {},
            port,
            "smollm2",
            "/v1/models",
            args.clients,
        )
    else:
        say(f"{LLAMA_SERVER} is missing (hack/build-llama-server.sh): skipped llama-server")
    result = {
        "benchmark": "server",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": cpu_kernels().to_json(),  # the kernel family our server ran (same machine)
        "newTokens": TOKENS,
        **sides,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| clients | ours tok/s | llama-cpp-python tok/s | ratio | ours TTFT p50/p99 s | "
        "theirs TTFT p50/p99 s | ours latency p50/p99 s | lost ours/theirs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for a, b in zip(ours["levels"], llama["levels"], strict=True):
        print(
            f"| {a['clients']} | {a['tokensPerSecond']:.1f} | {b['tokensPerSecond']:.1f} | "
            f"{a['tokensPerSecond'] / b['tokensPerSecond']:.2f} | {a['ttftP50']:.2f}/"
            f"{a['ttftP99']:.2f} | {b['ttftP50']:.2f}/{b['ttftP99']:.2f} | "
            f"{a['latencyP50']:.2f}/{a['latencyP99']:.2f} | {a['lost']}/{b['lost']} |"
        )
    if "llamaServerNp8" in sides:
        for a, b in zip(ours["levels"], sides["llamaServerNp8"]["levels"], strict=True):
            print(
                f"vs llama-server -np 8 at {a['clients']}: {b['tokensPerSecond']:.1f} tok/s "
                f"(ratio {a['tokensPerSecond'] / b['tokensPerSecond']:.2f}), TTFT p50 "
                f"{b['ttftP50']:.2f} s, lost {b['lost']}"
            )
    c = ours["cache"]
    print(
        f"cache: miss {c['missSeconds'] * 1000:.0f} ms, hit p50 {c['hitP50Seconds'] * 1000:.1f}"
        f" ms, p99 {c['hitP99Seconds'] * 1000:.1f} ms"
    )
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
