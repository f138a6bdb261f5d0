"""Hostile-load benchmark: /healthz latency (p50/p99/max, a fresh connection ten times a second,
as a kubelet probes) and a normal conversation's turn latency while many clients send 1 MB
prompts, trickle headers and bodies, hold idle connections and read long streams slowly (the
load of tests/support/hostile.py, which tests/integration/test_hostile.py asserts on).

    python bench/hostile_load.py [--seconds 30] [--out bench/results/hostile-load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.hostile import SERVER_ENV, HostileLoad  # noqa: E402
from tests.support.model import GGUF_SHA256, gguf_path  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

from llmchain_server.model import build_model  # noqa: E402


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--model", type=Path, help="a built model folder (default: build int4)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile-load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            say("building the int4 model")
            model = Path(tmp) / "int4"
            build_model(str(gguf_path()), model, "int4", sha256=GGUF_SHA256)
        server = ServerProcess(model, env=SERVER_ENV)
        try:
            server.wait_ready()
            say(f"hostile load for {args.seconds:.0f} s")
            result = HostileLoad(server.port).run(args.seconds)
        finally:
            code = server.stop()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = {
        "benchmark": "hostile-load",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "serverEnv": SERVER_ENV,
        "serverExit": code,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    h, c = result["healthz"], result["conversation"]
    print(
        f"/healthz: {h['count']} probes, p50 {h.get('p50_ms')} ms, p99 {h.get('p99_ms')} ms, "
        f"max {h.get('max_ms')} ms, failures {len(h['failures'])}; conversation: {c['count']} "
        f"turns, p50 {c.get('p50_ms')} ms, failures {len(c['failures'])}"
    )
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
