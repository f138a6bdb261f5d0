"""Structured output benchmark: how often SmolLM2-135M's JSON outputs and tool calls are valid
with constrained decoding and without it, on the same prompts, side by side in one run, and what
the constraint costs in decode speed.

Unconstrained requests get the best a prompt can do: the schema (or the tools and the call format)
is in the prompt, and the first JSON value anywhere in the reply counts (as the chains' parser
reads it). Valid means: parses, and matches the schema (tool calls: a known tool, arguments
matching its schema). Both modes run every prompt greedily, 8 at a time, in one engine.

    python bench/structured.py [--tokens 128] [--out bench/results/structured.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        },
        "required": ["name", "age", "languages"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                    "required": ["sku", "quantity"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["status", "items"],
        "additionalProperties": False,
    },
    "sentiment": {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "attendees": {"type": "integer"},
        },
        "required": ["title", "date", "attendees"],
        "additionalProperties": False,
    },
}
PROMPTS: dict[str, list[str]] = {
    "person": [
        "Anna is 31 and speaks French and German.",
        "Describe a retired teacher from Lisbon.",
        "Make up a person who speaks three languages.",
        "Tom, 8 years old, only speaks English.",
    ],
    "order": [
        "Two books (SKU B-1) and a pen (SKU P-9) have shipped.",
        "An order of 3 mugs, still pending.",
        "The customer cancelled the order for a lamp.",
        "Five apples were delivered yesterday.",
    ],
    "sentiment": [
        "I loved this film, the music was wonderful.",
        "The delivery was late and the box was broken.",
        "It is a chair. It has four legs.",
        "Best coffee in town, I go every morning!",
    ],
    "event": [
        "Team lunch on 12 March 2026 with 8 people.",
        "The product launch is planned for 2027-01-15, about 200 guests.",
        "Book club next Friday, usually six of us.",
        "A wedding on the 3rd of June 2026 with 120 guests.",
    ],
}
TOOL_QUESTIONS = [
    "How many miles is 42 km?",
    "Where is my order A1234?",
    "Convert 3 kg to pounds.",
    "What is the status of order 77?",
    "I ran 10 miles, how many km is that?",
    "Has order Z-9 shipped?",
    "What's 100 lb in kg?",
    "Track order 555 please.",
]
TOOL_PARAMS = {
    "convert_units": {
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "from_unit": {"enum": ["km", "mi", "kg", "lb"]},
            "to_unit": {"enum": ["km", "mi", "kg", "lb"]},
        },
        "required": ["value", "from_unit", "to_unit"],
        "additionalProperties": False,
    },
    "order_status": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "maxLength": 16}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def valid_json(text: str, schema: dict[str, Any]) -> bool:
    """The first JSON value in the text matches the schema (as a chain's json step reads it)."""
    from llmchain_server.chains.parsers import parse
    from llmchain_server.config import OutputParser

    try:
        parse(text, OutputParser(type="json", json_schema=schema))
    except ValueError:  # ParseError
        return False
    return True


def valid_calls(text: str) -> bool:
    from llmchain_server.dataplane.structured import read_calls

    _, calls = read_calls(text)
    if not calls:
        return False
    try:
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), TOOL_PARAMS[call.name])
    except (KeyError, ValueError, jsonschema.ValidationError):
        return False
    return True


def run_all(engine: Any, jobs: list[tuple[list[int], Any]]) -> list[tuple[str, Any, float]]:
    """Each job's text, last chunk and seconds, 8 at a time (the engine batches them)."""
    out: list[Any] = [None] * len(jobs)
    gate = threading.Semaphore(8)

    def one(i: int) -> None:
        with gate:
            started = time.perf_counter()
            chunks = list(engine.generate(*jobs[i]))
            out[i] = ("".join(c.text for c in chunks), chunks[-1], time.perf_counter() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "structured.json")
    args = parser.parse_args()
    from tests.support.model import GGUF_SHA256, gguf_path

    from llmchain_server.dataplane.structured import (
        Tool,
        json_grammar,
        tools_grammar,
        with_tools,
    )
    from llmchain_server.engine import Engine, EngineSettings, SamplingParams
    from llmchain_server.engine.cpu import cpu_kernels
    from llmchain_server.model import build_model

    with tempfile.TemporaryDirectory() as tmp:
        say("building the int4 model")
        build_model(str(gguf_path()), Path(tmp) / "model", "int4", sha256=GGUF_SHA256)
        engine = Engine(
            Path(tmp) / "model", EngineSettings(provider="cpu", max_batch=8, context=1024)
        )
    engine.start()
    tok = engine.tokenizer

    def prompt(messages: list[tuple[str, str]]) -> list[int]:
        turns = [{"role": r, "content": c} for r, c in messages]
        return tok.encode(tok.render_chat(turns))

    tools = [Tool(n, f"{n.replace('_', ' ')}", p) for n, p in TOOL_PARAMS.items()]
    results: dict[str, Any] = {}
    for mode in ("unconstrained", "constrained"):
        jobs: list[tuple[list[int], Any]] = []
        kinds: list[tuple[str, Any]] = []
        for name, schema in SCHEMAS.items():
            for text in PROMPTS[name]:
                ask = f"{text}\nAnswer with JSON matching this schema: {json.dumps(schema)}"
                grammar = json_grammar(schema) if mode == "constrained" else None
                jobs.append((prompt([("user", ask)]), SamplingParams(args.tokens, grammar=grammar)))
                kinds.append(("json", schema))
        for question in TOOL_QUESTIONS:
            grammar = tools_grammar(tools, required=True) if mode == "constrained" else None
            messages = with_tools([("user", question)], tools)
            jobs.append((prompt(messages), SamplingParams(args.tokens, grammar=grammar)))
            kinds.append(("tools", None))
        say(f"{mode}: {len(jobs)} requests")
        started = time.perf_counter()
        before = engine.stats.generated_tokens
        outputs = run_all(engine, jobs)
        wall = time.perf_counter() - started
        tokens = engine.stats.generated_tokens - before
        verdicts = [
            valid_json(text, schema) if kind == "json" else valid_calls(text)
            for (text, _, _), (kind, schema) in zip(outputs, kinds, strict=True)
        ]
        json_ok = [v for v, (k, _) in zip(verdicts, kinds, strict=True) if k == "json"]
        tool_ok = [v for v, (k, _) in zip(verdicts, kinds, strict=True) if k == "tools"]
        results[mode] = {
            "requests": len(jobs),
            "jsonValid": sum(json_ok),
            "jsonTotal": len(json_ok),
            "toolCallsValid": sum(tool_ok),
            "toolCallsTotal": len(tool_ok),
            "cutByMaxTokens": sum(o[1].finish_reason == "length" for o in outputs),
            "tokens": tokens,
            "wallSeconds": wall,
            "tokensPerSecond": tokens / wall,
            "latencyP50Seconds": statistics.median(o[2] for o in outputs),
            "samples": [o[0][:160] for o in outputs[:: max(1, len(outputs) // 6)]],
        }
        r = results[mode]
        say(
            f"  JSON valid {r['jsonValid']}/{r['jsonTotal']}, tool calls valid "
            f"{r['toolCallsValid']}/{r['toolCallsTotal']}, {r['tokensPerSecond']:.1f} tokens/s"
        )
    stats = engine.stats
    engine.stop()
    result = {
        "benchmark": "structured",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": cpu_kernels().to_json(),
        "maxTokens": args.tokens,
        "results": results,
        "constrainedOutputs": stats.constrained,
        "closedEarly": stats.constrained_closed,
        "cut": stats.constrained_cut,
        "maskMillisecondsPerToken": 1000
        * stats.constraint_seconds
        / max(1, results["constrained"]["tokens"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    c, u = results["constrained"], results["unconstrained"]
    print("| measure | constrained | unconstrained |")
    print("| --- | --- | --- |")
    print(
        f"| valid JSON outputs | {c['jsonValid']}/{c['jsonTotal']} | "
        f"{u['jsonValid']}/{u['jsonTotal']} |"
    )
    print(
        f"| valid tool calls | {c['toolCallsValid']}/{c['toolCallsTotal']} | "
        f"{u['toolCallsValid']}/{u['toolCallsTotal']} |"
    )
    print(f"| cut by max_tokens | {c['cutByMaxTokens']} | {u['cutByMaxTokens']} |")
    print(f"| tokens/s (8 at a time) | {c['tokensPerSecond']:.1f} | {u['tokensPerSecond']:.1f} |")
    print(f"| mask ms per constrained token | {result['maskMillisecondsPerToken']:.3f} | - |")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
