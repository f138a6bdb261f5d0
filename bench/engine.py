"""Engine benchmark: our engine against llama.cpp (llama-cpp-python) on the same GGUF, the same
prompts and the same number of new tokens, side by side in one run.

Each side runs in its own process (so peak RSS is its own): ours in this virtualenv, llama.cpp in
the bench virtualenv (hack/bench-env.sh builds llama-cpp-python, ~12 minutes on 2 cores).
Measured: single-stream decode tokens/s and time to first token; aggregate tokens/s at 1, 4, 8 and
16 concurrent requests (llama-cpp-python serves one request at a time, as its server does, so its
requests run back to back); model build time (ours), load time, peak RSS.

`--accuracy` runs ours once per accuracy plan (model/accuracy.py: `int8`, `recommended`, `exact`),
side by side, to show what each costs, `--rounds N` N times alternately (medians reported);
`--no-llama` leaves llama.cpp out (then the first plan is the reference). The JSON names the CPU
kernel family each side ran, and llama.cpp's build (its system info line: the CPU features it was
compiled for) and run options.

llama.cpp built for this CPU (GGML_NATIVE) segfaults loading this GGUF on some AVX-512/AMX CPUs.
A crash is reported, not raised, and then llama.cpp is tried again without weight repacking
(`--no-repack`'s model parameter) and as a portable build (GGML_NATIVE=OFF, AVX2; `hack/bench-env.sh
--portable` builds it, ~12 minutes, when missing): the fastest that runs is the reference, and
`llamaCppAttempts` lists every try.

    python bench/engine.py [--tokens 64] [--concurrency 1 4 8 16] [--accuracy recommended int8]
                           [--quantization int4|int8] [--rounds N] [--no-llama]
                           [--out bench/results/engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = Path.home() / ".cache" / "llmchain" / "bench-venv" / "bin" / "python"
PORTABLE_PYTHON = Path.home() / ".cache" / "llmchain" / "bench-venv-portable" / "bin" / "python"
TOPICS = [
    "the sea",
    "a lighthouse",
    "winter",
    "a library",
    "trains",
    "bread",
    "the moon",
    "a garden",
    "bees",
    "rain",
    "mountains",
    "a market",
    "music",
    "clocks",
    "rivers",
    "maps",
]


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "paragraph": {"type": "string"}},
    "required": ["topic", "paragraph"],
    "additionalProperties": False,
}
"""The constrained runs' schema: free text inside JSON, so outputs run about as long as free
ones (a constrained output ends where its JSON does, at most `--tokens`)."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def messages(i: int) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"Write a short paragraph about {TOPICS[i % 16]}, with "
            "three facts a child would enjoy and one question at the end.",
        }
    ]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- our engine ----------------------------------------------------------------------------------
def run_ours(
    tokens: int, levels: list[int], threads: int, accuracy: str, quantization: str
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.support.model import gguf_path

    from llmchain_server.engine import Engine, EngineSettings, Grammar, SamplingParams
    from llmchain_server.engine.cpu import cpu_kernels

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()  # in its own process: its memory is not the server's
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
                quantization,
                "--accuracy",
                accuracy,
                "--out",
                f"{tmp}/model",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        engine = Engine(
            Path(tmp) / "model",
            EngineSettings(
                provider="cpu", max_batch=max(levels), max_waiting=64, context=512, threads=threads
            ),
        )
        engine.start()
        load_seconds = time.perf_counter() - started
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    prompts = [
        engine.tokenizer.encode(engine.tokenizer.render_chat(messages(i)))
        for i in range(max(levels))
    ]

    def one(i: int, submitted: float, out: list[dict[str, float]]) -> None:
        first = None
        count = 0
        for _ in engine.generate(prompts[i], params):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None
        out.append(
            {
                "ttft": first - submitted,
                "decode": (count - 1) / (end - first),
                "tokens": count,
                "end": end,
            }
        )

    result = {
        "quantization": quantization,
        "accuracy": accuracy,
        "cpu": cpu_kernels().to_json(),
        "buildSeconds": build_seconds,
        "loadSeconds": load_seconds,
        "promptTokens": statistics.mean(len(p) for p in prompts),
    }
    result.update(measure(lambda i, t, o: one(i, t, o), levels, concurrent=True))
    say("  the same, every request constrained by a JSON schema (constrained decoding)")
    params = SamplingParams(max_tokens=tokens, grammar=Grammar.json_schema(ANSWER_SCHEMA))
    before = engine.stats.constraint_seconds, engine.stats.generated_tokens
    result["constrained"] = measure(lambda i, t, o: one(i, t, o), levels, concurrent=True)
    seconds = engine.stats.constraint_seconds - before[0]
    count = engine.stats.generated_tokens - before[1]
    result["constrained"]["maskMillisecondsPerToken"] = 1000 * seconds / max(1, count)
    result["constrained"]["cutOutputs"] = engine.stats.constrained_cut
    result["constrained"]["closedOutputs"] = engine.stats.constrained_closed
    engine.stop()
    result["peakRssMiB"] = peak_rss_mib()
    return result


# -- llama.cpp -----------------------------------------------------------------------------------
def run_llama(tokens: int, levels: list[int], threads: int, repack: bool) -> dict[str, Any]:
    import jinja2
    import llama_cpp
    from llama_cpp import Llama

    sys.path.insert(0, str(ROOT))
    from tests.support.model import gguf_path

    if not repack:  # llama-server's --no-repack; Llama() does not expose the model parameter
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def no_repack() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = no_repack
    system_info = llama_cpp.llama_print_system_info().decode().strip()
    say(f"llama.cpp {llama_cpp.__version__}: {system_info}")
    options = {"n_ctx": 512, "n_batch": 512, "n_threads": threads, "repack": repack}
    started = time.perf_counter()
    llm = Llama(
        model_path=str(gguf_path()), n_ctx=512, n_batch=512, n_threads=threads, verbose=False
    )
    load_seconds = time.perf_counter() - started
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    prompts = [
        llm.tokenize(
            template.render(messages=messages(i), add_generation_prompt=True).encode(),
            add_bos=False,
            special=True,
        )
        for i in range(max(levels))
    ]
    eos = int(llm.metadata["tokenizer.ggml.eos_token_id"])
    # llama-cpp-python's server runs one request at a time; here one worker thread does too (a
    # fresh OpenMP thread team per calling thread would slow llama.cpp down, unfairly).
    jobs: queue.Queue[tuple[int, float, list[dict[str, float]], threading.Event]] = queue.Queue()

    def serve() -> None:
        while True:
            i, submitted, out, done = jobs.get()
            first = None
            count = 0
            for _ in llm.create_completion(
                prompts[i], max_tokens=tokens, temperature=0.0, stream=True, logit_bias={eos: -1e9}
            ):
                count += 1
                if first is None:
                    first = time.perf_counter()
            end = time.perf_counter()
            assert first is not None
            out.append(
                {
                    "ttft": first - submitted,
                    "decode": (count - 1) / (end - first),
                    "tokens": count,
                    "end": end,
                }
            )
            done.set()

    threading.Thread(target=serve, daemon=True).start()

    def one(i: int, submitted: float, out: list[dict[str, float]]) -> None:
        done = threading.Event()
        jobs.put((i, submitted, out, done))
        done.wait()

    result: dict[str, Any] = {
        "build": {
            "version": llama_cpp.__version__,
            "python": sys.executable,
            "systemInfo": system_info,
        },
        "options": options,
        "loadSeconds": load_seconds,
        "promptTokens": statistics.mean(len(p) for p in prompts),
    }
    result.update(measure(one, levels, concurrent=True))
    result["peakRssMiB"] = peak_rss_mib()
    return result


def run_llama_sides(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[Any]]:
    """llama.cpp as the reference: the native build; where it crashes, the native build without
    repacking and the portable build too. The fastest single stream that ran, and every try."""
    attempts = [side("llama", BENCH_PYTHON, args)]
    if "crashed" in attempts[0]:
        attempts.append(side("llama", BENCH_PYTHON, args, repack=False))
        if not PORTABLE_PYTHON.exists():
            say("building the portable llama.cpp (GGML_NATIVE=OFF) to try it as well")
            subprocess.run([str(ROOT / "hack" / "bench-env.sh"), "--portable"], check=False)
        if PORTABLE_PYTHON.exists():
            attempts.append(side("llama", PORTABLE_PYTHON, args))
        else:
            say("the portable llama.cpp did not build: no fallback")
    return fastest(attempts), attempts


def fastest(attempts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The try with the fastest single-stream decode among those that did not crash."""
    ran = [a for a in attempts if "crashed" not in a]
    if not ran:
        return None
    return max(ran, key=lambda a: float(a["singleStream"]["decodeTokensPerSecond"]))


def measure(one: Any, levels: list[int], concurrent: bool) -> dict[str, Any]:
    """Single stream (median of 3) and each concurrency level: clients start together."""
    singles: list[dict[str, float]] = []
    for i in range(3):
        one(i, time.perf_counter(), singles)
    out: dict[str, Any] = {
        "singleStream": {
            "decodeTokensPerSecond": statistics.median(s["decode"] for s in singles),
            "ttftSeconds": statistics.median(s["ttft"] for s in singles),
        },
        "concurrency": {},
    }
    for level in levels:
        runs: list[dict[str, float]] = []
        start = time.perf_counter()
        clients = [threading.Thread(target=one, args=(i, start, runs)) for i in range(level)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = max(r["end"] for r in runs) - start
        ttfts = sorted(r["ttft"] for r in runs)
        out["concurrency"][str(level)] = {
            "aggregateTokensPerSecond": sum(r["tokens"] for r in runs) / wall,
            "ttftP50Seconds": statistics.median(ttfts),
            "ttftMaxSeconds": ttfts[-1],
            "wallSeconds": wall,
        }
        rate = out["concurrency"][str(level)]["aggregateTokensPerSecond"]
        say(f"  {level:2d} concurrent: {rate:.1f} tokens/s")
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over runs of the same shape (other values from the first)."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = median_of([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = value
    return out


def side(
    name: str,
    python: Path,
    args: argparse.Namespace,
    accuracy: str = "recommended",
    repack: bool = True,
) -> dict[str, Any]:
    """One side in its own process. A llama.cpp worker that crashes is reported, not raised."""
    what = f", {args.quantization}, accuracy {accuracy}" if name == "ours" else ""
    what += "" if repack else ", no weight repacking"
    say(f"running {name} ({python}{what})")
    cmd = [
        str(python),
        __file__,
        "--worker",
        name,
        "--tokens",
        str(args.tokens),
        "--threads",
        str(args.threads),
        "--accuracy",
        accuracy,
        "--quantization",
        args.quantization,
        "--concurrency",
        *map(str, args.concurrency),
        *([] if repack else ["--no-repack"]),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, check=name == "ours", timeout=1800)
    if done.returncode != 0:
        # bench/server.py's; imported here, not at the top: the llama worker runs this file in
        # the bench virtualenv, which has no llmchain_server
        from server import describe_exit

        crashed = describe_exit(done.returncode)
        say(f"  {name} crashed: {crashed}; its numbers are left out")
        return {"crashed": crashed, "python": str(python), "repack": repack}
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def table(ours: dict[str, Any], llama: dict[str, Any], names: tuple[str, str]) -> str:
    rows = [
        ("single-stream decode tokens/s", "singleStream", "decodeTokensPerSecond"),
        ("single-stream TTFT s", "singleStream", "ttftSeconds"),
    ]
    lines = [f"| measure | {names[0]} | {names[1]} | ratio |", "| --- | --- | --- | --- |"]
    for label, group, key in rows:
        a, b = ours[group][key], llama[group][key]
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    for level, entry in ours["concurrency"].items():
        a = entry["aggregateTokensPerSecond"]
        b = llama["concurrency"][level]["aggregateTokensPerSecond"]
        lines.append(f"| aggregate tokens/s at {level} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
        a, b = entry["ttftP50Seconds"], llama["concurrency"][level]["ttftP50Seconds"]
        lines.append(f"| TTFT p50 s at {level} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    for label, key in (("load s", "loadSeconds"), ("peak RSS MiB", "peakRssMiB")):
        lines.append(
            f"| {label} | {ours[key]:.1f} | {llama[key]:.1f} | {ours[key] / llama[key]:.2f} |"
        )
    if "buildSeconds" in llama:
        a, b = ours["buildSeconds"], llama["buildSeconds"]
        lines.append(f"| model build s | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    else:
        lines.append(f"| model build s (ours only) | {ours['buildSeconds']:.1f} | - | - |")
    return "\n".join(lines)


def constrained_table(ours: dict[str, Any]) -> str:
    """Constrained against free decoding, both ours, in the same run."""
    free, bound = ours, ours["constrained"]
    lines = ["| measure | constrained | free | ratio |", "| --- | --- | --- | --- |"]
    a = bound["singleStream"]["decodeTokensPerSecond"]
    b = free["singleStream"]["decodeTokensPerSecond"]
    lines.append(f"| single-stream decode tokens/s | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    for level, entry in bound["concurrency"].items():
        a = entry["aggregateTokensPerSecond"]
        b = free["concurrency"][level]["aggregateTokensPerSecond"]
        lines.append(f"| aggregate tokens/s at {level} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    lines.append(f"| mask ms per token | {bound['maskMillisecondsPerToken']:.3f} | - | - |")
    lines.append(f"| outputs cut by max_tokens | {bound['cutOutputs']} | - | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    parser.add_argument(
        "--accuracy", nargs="+", default=["recommended"], choices=["recommended", "int8", "exact"]
    )
    parser.add_argument("--quantization", default="int4", choices=["int4", "int8"])
    parser.add_argument("--rounds", type=int, default=1, help="runs of ours per plan (median)")
    parser.add_argument("--no-llama", action="store_true", help="compare accuracy plans only")
    parser.add_argument("--worker", choices=["ours", "llama"])
    parser.add_argument("--no-repack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        result = run_ours(
            args.tokens, args.concurrency, args.threads, args.accuracy[0], args.quantization
        )
        print(json.dumps(result))
        return
    if args.worker == "llama":
        print(
            json.dumps(run_llama(args.tokens, args.concurrency, args.threads, not args.no_repack))
        )
        return
    if not args.no_llama and not BENCH_PYTHON.exists():
        sys.exit(f"{BENCH_PYTHON} is missing: run hack/bench-env.sh first (builds llama.cpp)")
    # Rounds alternate the plans, so a noisy neighbour slows them alike; medians are reported.
    rounds: dict[str, list[dict[str, Any]]] = {plan: [] for plan in args.accuracy}
    for r in range(args.rounds):
        for plan in args.accuracy:
            say(f"round {r + 1} of {args.rounds}")
            rounds[plan].append(side("ours", Path(sys.executable), args, plan))
    plans = {plan: {**median_of(runs), "rounds": len(runs)} for plan, runs in rounds.items()}
    ours = plans[args.accuracy[0]]
    llama, attempts = (None, []) if args.no_llama else run_llama_sides(args)
    result = {
        "benchmark": "engine",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": ours["cpu"],
        "newTokens": args.tokens,
        "threads": args.threads,
        "ours": ours,
        "oursByAccuracy": plans,
        "llamaCpp": llama,
        "llamaCppAttempts": attempts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    first = args.accuracy[0]
    if llama is None and not args.no_llama:
        say("llama.cpp crashed in every build tried: no reference this run")
    if llama is not None:
        for plan, entry in plans.items():
            print(table(entry, llama, (f"ours ({args.quantization}, {plan})", "llama.cpp")))
    for plan, entry in list(plans.items())[1:]:
        print(table(entry, ours, (f"ours ({plan})", f"ours ({first})")))
    print(constrained_table(ours))
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
