"""Server benchmark: end to end over HTTP, streaming chat completions with unique prompts and
64 new tokens, at 1, 8 and 32 concurrent clients: aggregate tokens/s, TTFT p50/p99, request
latency p50/p99, and requests lost. Side by side in one run with llama-cpp-python's
OpenAI-compatible server on the same GGUF (started with `--interrupt_requests False`: by default
it cuts running streams when a new request arrives). Also the cache: hit latency p50/p99 against
a miss on our server.

A client honours 429 + Retry-After by waiting and retrying; a request is lost when it never gets
a complete response or its stream ends without `[DONE]`.

    python bench/server.py [--clients 1 8 32] [--out bench/results/server.json]

Also our server with whole-prompt prefill and no prefix cache (`oursUnchunked`), or with
`--before-tree DIR` the server of an earlier checkout (`oursBefore`), for inter-token latency
before and after, and llama.cpp's own
`llama-server -np 8` when hack/build-llama-server.sh has built it. `--long-prompts` makes every
fourth client send a ~500-token prompt. Each side records its command, peak RSS, and whether it
crashed (reported, not raised).

llama-server built for this CPU (GGML_NATIVE) segfaults loading this GGUF on some AVX-512/AMX
CPUs. Where it crashes, it is tried again with `--no-repack` and as the portable build
(`hack/build-llama-server.sh --portable`, built here when missing, ~10 minutes): the fastest at
the first level (one client by default) among those that ran is the reference,
`llamaServerAttempts` lists every try.

Needs the bench virtualenv (hack/bench-env.sh) with llama-cpp-python's server extra, unless
`--skip-llama-cpp-python`.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
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
LLAMA_PORTABLE = LLAMA_SERVER.with_name("llama-server-portable")
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
        first, pieces, done, arrivals = None, 0, False, []
        while line := response.readline():
            text = line.decode().strip()
            if text == "data: [DONE]":
                done = True
            elif text.startswith("data: {"):
                delta = json.loads(text[6:])["choices"]
                if delta and delta[0].get("delta", {}).get("content"):
                    pieces += 1
                    arrivals.append(time.monotonic())
                    first = first or arrivals[-1]
        conn.close()
        end = time.monotonic()
        out.append(
            {
                "ok": response.status == 200 and done,
                "ttft": (first or end) - started,
                "latency": end - started,
                "pieces": pieces,
                "end": end,
                "gaps": [b - a for a, b in itertools.pairwise(arrivals)],
            }
        )
        return
    out.append(
        {"ok": False, "ttft": 0.0, "latency": 0.0, "pieces": 0, "end": time.monotonic(), "gaps": []}
    )


LONG = (
    "Summarise this report in two sentences. "
    + (
        "The river rose overnight, the bridge was closed, and the town council met at dawn to "
        "decide which roads to open first. "
    )
    * 16
)
"""A ~500-token prompt: with --long-prompts every fourth client sends one, the load where a
newcomer's prefill stalls the running streams unless it is chunked."""


LOST: dict[str, Any] = {
    "ok": False,
    "ttft": 0.0,
    "latency": 0.0,
    "pieces": 0,
    "end": 0.0,
    "gaps": [],
}


def prompt_for(tag: str, clients: int, i: int, long_prompts: bool) -> str:
    if long_prompts and i % 4 == 3:
        return f"[{tag} {clients}/{i}] {LONG}"
    return f"[{tag} {clients}/{i}] Write a short paragraph about the number {i}."


def load(port: int, model: str, clients: int, tag: str, long_prompts: bool) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=one_request,
            args=(port, model, prompt_for(tag, clients, i, long_prompts), runs),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs += [LOST] * (clients - len(runs))  # a request whose client raised
    wall = max([start, *(r["end"] for r in runs if r["ok"])]) - start or float("nan")
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
        "interTokenP50": pct([g for r in ok for g in r["gaps"]], 0.5),
        "interTokenP99": pct([g for r in ok for g in r["gaps"]], 0.99),
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


def build_model(out: str, env: dict[str, str] | None = None) -> None:
    """The int4 test model into `out`, by the CLI of the code on PYTHONPATH in `env`."""
    say(f"building the int4 model into {out}")
    subprocess.run(
        [sys.executable, "-m", "llmchain_cli", "model", "build", "--source",
         str(gguf_path()), "--quantization", "int4", "--out", out],
        check=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def peak_rss_mib(pid: int) -> float:
    """A running process's peak resident memory (VmHWM), in MiB; NaN once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def llama_build_info(binary: Path) -> dict[str, Any]:
    """What a llama-server build is: its version line and cmake flags (as
    hack/build-llama-server.sh configures it)."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60
        )
        version = (done.stdout + done.stderr).strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        version = [f"unknown: {e}"]
    native = "OFF" if binary.name.endswith("-portable") else "ON"
    flags = ["-DCMAKE_BUILD_TYPE=Release", f"-DGGML_NATIVE={native}", "-DBUILD_SHARED_LIBS=OFF",
             "-DLLAMA_CURL=OFF"]  # fmt: skip
    return {"binary": str(binary), "version": version[-2:], "cmakeFlags": flags}


def run_llama_server(clients: list[int], long_prompts: bool) -> tuple[dict[str, Any], list[Any]]:
    """`llama-server -np 8`: the native build; where it crashes, the native build with
    --no-repack and the portable build too. The reference (the fastest single client among the
    tries that ran, else the first try) and every try."""

    def attempt(binary: Path, extra: list[str]) -> dict[str, Any]:
        port = free_port()
        cmd = [str(binary), "-m", str(gguf_path()), "--port", str(port), "-np", "8", "-c", "8192",
               "-t", str(os.cpu_count() or 2), "--alias", "smollm2", *extra]  # fmt: skip
        label = " ".join(["llama-server -np 8", *extra]) + f" ({binary.name})"
        side = run_side(label, cmd, {}, port, "smollm2", "/v1/models", clients, long_prompts)
        side["build"] = llama_build_info(binary)
        return side

    attempts = [attempt(LLAMA_SERVER, [])]
    if not complete(attempts[0], clients):
        attempts.append(attempt(LLAMA_SERVER, ["--no-repack"]))
        if not LLAMA_PORTABLE.exists():
            say("building the portable llama-server (GGML_NATIVE=OFF) to try it as well")
            subprocess.run(
                [str(ROOT / "hack" / "build-llama-server.sh"), "--portable"], check=False
            )
        if LLAMA_PORTABLE.exists():
            attempts.append(attempt(LLAMA_PORTABLE, []))
        else:
            say("the portable llama-server did not build: no fallback")
    return fastest(attempts, clients) or attempts[0], attempts


def complete(side: dict[str, Any], clients: list[int]) -> bool:
    """Whether a side ran every level without crashing, and served some of the first."""
    return (
        "crashed" not in side
        and len(side["levels"]) == len(clients)
        and side["levels"][0]["tokensPerSecond"] > 0  # False for NaN: everything lost
    )


def fastest(attempts: list[dict[str, Any]], clients: list[int]) -> dict[str, Any] | None:
    """The complete try with the most tokens/s at the first level (one client by default)."""
    ran = [a for a in attempts if complete(a, clients)]
    if not ran:
        return None
    return max(ran, key=lambda a: float(a["levels"][0]["tokensPerSecond"]))


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}" + (" (SIGSEGV)" if code == -11 else "")
    return f"exit status {code}"


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 60 s (llama-server was seen ignoring SIGTERM mid-load)."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=60)


def run_side(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    model: str,
    ready: str,
    clients: list[int],
    long_prompts: bool = False,
) -> dict[str, Any]:
    """One server under load, level by level. A server that crashes (llama.cpp's native
    build segfaults loading this GGUF on some AVX-512 CPUs) is reported, not raised."""
    say(f"starting {name}")
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    result: dict[str, Any] = {"levels": [], "command": [Path(cmd[0]).name, *cmd[1:]], "env": env}
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", process)
        one_request(port, model, "warm up", [])
        for level in clients:
            entry = load(port, model, level, name, long_prompts)
            say(
                f"  {name} {level:2d} clients: {entry['tokensPerSecond']:.1f} tokens/s, TTFT p50 "
                f"{entry['ttftP50']:.2f} s p99 {entry['ttftP99']:.2f} s, inter-token p99 "
                f"{entry['interTokenP99'] * 1000:.0f} ms, lost {entry['lost']}"
            )
            result["levels"].append(entry)
            if process.poll() is not None:
                break
        result["peakRssMiB"] = peak_rss_mib(process.pid)
    except (RuntimeError, TimeoutError) as e:
        say(f"  {name} did not come up: {e}")
    finally:
        if process.poll() is not None:
            result["crashed"] = describe_exit(process.returncode)
            say(f"  {name} crashed: {result['crashed']}; its numbers are left out")
        stop(process)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "server.json")
    parser.add_argument(
        "--long-prompts",
        action="store_true",
        help="every fourth client sends a ~500-token prompt (the load chunked prefill is for)",
    )
    parser.add_argument(
        "--skip-llama-cpp-python", action="store_true", help="only llama-server as reference"
    )
    parser.add_argument(
        "--before-tree",
        type=Path,
        help="a checkout of an earlier commit (git worktree add): its server is the 'before' "
        "side instead of ours with chunking and the prefix cache off",
    )
    args = parser.parse_args()
    if not args.skip_llama_cpp_python and not BENCH_PYTHON.exists():
        sys.exit(f"{BENCH_PYTHON} is missing: run hack/bench-env.sh first")
    sides: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(f"{tmp}/m")
        redis = RedisServer(workdir=Path(tmp))
        redis.start()
        ours_port = free_port()
        ours_cmd = [sys.executable, "-m", "llmchain_cli", "serve", "--model", f"{tmp}/m",
                    "--port", str(ours_port), "--model-name", "smollm2", "--redis-url",
                    redis.url, "--log-level", "WARNING"]  # fmt: skip
        ours_env = {"LLMCHAIN_MAX_BATCH_SIZE": "16", "LLMCHAIN_MAX_CONTEXT": "1024"}
        # "before": whole prompts prefilled at once and no prefix cache (the engine until #14)
        unchunked = {
            **ours_env,
            "LLMCHAIN_PREFILL_CHUNK_TOKENS": "100000",
            "LLMCHAIN_PREFIX_CACHE_TOKENS": "0",
        }
        before = ("oursUnchunked", ours_cmd, unchunked)
        if args.before_tree:  # an earlier commit's server, on a model folder it built itself
            tree = args.before_tree.resolve()
            path = os.pathsep.join(str(tree / d) for d in ("server", "cli", "operator"))
            old_env = {**ours_env, "PYTHONPATH": path}
            build_model(f"{tmp}/m-before", old_env)
            old_cmd = [*ours_cmd[:5], f"{tmp}/m-before", *ours_cmd[6:]]
            before = ("oursBefore", old_cmd, old_env)
        for name, cmd, env in (("ours", ours_cmd, ours_env), before):
            sides[name] = run_side(
                name, cmd, env, ours_port, "smollm2", "/readyz", args.clients, args.long_prompts
            )
        process = subprocess.Popen(
            ours_cmd,
            env={**os.environ, **ours_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"http://127.0.0.1:{ours_port}/readyz", process)
        sides["ours"]["cache"] = cache_latencies(ours_port, "smollm2")
        process.terminate()
        process.wait(timeout=60)
        redis.stop()
    if not args.skip_llama_cpp_python:
        llama_port = free_port()
        sides["llamaCppPython"] = run_side(
            "llama-cpp-python",
            [str(BENCH_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf_path()),
             "--port", str(llama_port), "--n_threads", str(os.cpu_count() or 2), "--n_ctx",
             "2048", "--interrupt_requests", "False", "--model_alias", "smollm2"],
            {}, llama_port, "smollm2", "/v1/models", args.clients, args.long_prompts,
        )  # fmt: skip
    attempts: list[Any] = []
    if LLAMA_SERVER.exists():
        sides["llamaServerNp8"], attempts = run_llama_server(args.clients, args.long_prompts)
    else:
        say(f"{LLAMA_SERVER} is missing (hack/build-llama-server.sh): skipped llama-server")
    result = {
        "benchmark": "server",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": cpu_kernels().to_json(),  # the kernel family our server ran (same machine)
        "newTokens": TOKENS,
        "longPrompts": args.long_prompts,
        **sides,
        "llamaServerAttempts": attempts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| side | clients | tok/s | TTFT p50/p99 s | inter-token p50/p99 ms | latency p50/p99 s "
        "| lost | peak RSS MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, side in sides.items():
        for a in side["levels"]:
            print(
                f"| {name} | {a['clients']} | {a['tokensPerSecond']:.1f} | {a['ttftP50']:.2f}/"
                f"{a['ttftP99']:.2f} | {a['interTokenP50'] * 1000:.0f}/"
                f"{a['interTokenP99'] * 1000:.0f} | {a['latencyP50']:.2f}/{a['latencyP99']:.2f} "
                f"| {a['lost']} | {side.get('peakRssMiB', float('nan')):.0f} |"
            )
        if "crashed" in side:
            print(f"| {name} | crashed: {side['crashed']} |")
    c = sides["ours"].get("cache")
    if c:
        print(
            f"cache: miss {c['missSeconds'] * 1000:.0f} ms, hit p50 "
            f"{c['hitP50Seconds'] * 1000:.1f} ms, p99 {c['hitP99Seconds'] * 1000:.1f} ms"
        )
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
