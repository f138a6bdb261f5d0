"""Fidelity benchmark: every precision and MatMulNBits accuracy plan against llama.cpp's goldens
and against our own fp32 build, on this CPU's kernel family and, with --emulate-avx2, on the
AVX2 kernels under Debian's qemu-user (`qemu-x86_64 -cpu Haswell`: onnxruntime then sees AVX2 and
FMA and no AVX-512). Each model runs in its own process; the emulated ones take ~5-10 minutes
each on 2 cores.

    python bench/fidelity.py [--quantizations none fp16 int8 int4] [--plans int8 recommended exact]
                             [--emulate-avx2] [--out bench/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import fidelity  # noqa: E402
from tests.support.model import GGUF_SHA256, gguf_path  # noqa: E402

from llmchain_server.engine.cpu import cpu_kernels  # noqa: E402
from llmchain_server.model import build_model  # noqa: E402


def say(message: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_worker(folder: Path, out: Path, emulated: bool) -> tuple[fidelity.LogProbs, float]:
    args = ["-m", "tests.support.fidelity", str(folder), str(out)]
    started = time.perf_counter()
    if emulated:
        fidelity.emulate(args, timeout=3600)
    else:
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, timeout=3600)
    return fidelity.load(out), time.perf_counter() - started


def emulated_kernels() -> dict[str, Any]:
    code = "import json; from llmchain_server.engine.cpu import cpu_kernels as k; "
    code += "print(json.dumps(k().to_json()))"
    return json.loads(fidelity.emulate(["-c", code], timeout=300))  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantizations", nargs="+", default=["none", "fp16", "int8", "int4"])
    parser.add_argument("--plans", nargs="+", default=["int8", "recommended", "exact"])
    parser.add_argument("--emulate-avx2", action="store_true")
    parser.add_argument("--emulated-quantizations", nargs="+", default=["int4"])
    parser.add_argument("--emulated-plans", nargs="+", default=["int8", "recommended"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fidelity.json")
    args = parser.parse_args()
    if args.emulate_avx2 and not shutil.which(fidelity.EMULATOR[0]):
        sys.exit("qemu-x86_64 is missing: apt-get install qemu-user")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:

        def folder(q: str, plan: str) -> Path:
            out = Path(tmp) / f"{q}-{plan}"
            if not out.exists():
                say(f"building {q} ({plan})")
                build_model(str(gguf_path()), out, q, sha256=GGUF_SHA256, accuracy=plan)
            return out

        # The reference for every row, emulated ones included: fp32 differs between the
        # families only in the last bits (no int8 rounding to amplify the summation order).
        say(f"running the fp32 reference on {cpu_kernels().family}")
        fp32, _ = run_worker(folder("none", "recommended"), Path(tmp) / "fp32.npz", False)
        runs = [
            (q, plan, False)
            for q in args.quantizations
            for plan in (args.plans if q in ("int4", "int8") else ["recommended"])
        ]
        if args.emulate_avx2:
            runs += [(q, p, True) for q in args.emulated_quantizations for p in args.emulated_plans]
        seen_by = {False: cpu_kernels().to_json()}
        if args.emulate_avx2:
            seen_by[True] = emulated_kernels()
        for q, plan, emulated in runs:
            seen = seen_by[emulated]
            say(f"running {q} ({plan}) on {seen['kernels']}{' (emulated)' if emulated else ''}")
            ours, seconds = run_worker(folder(q, plan), Path(tmp) / "out.npz", emulated)
            row = {
                "kernels": seen["kernels"],
                "emulated": emulated,
                "quantization": q,
                "plan": plan if q in ("int4", "int8") else None,
                "seconds": round(seconds, 1),
                "llamaCpp": fidelity.against_llama(ours),
                "fp32": fidelity.against_fp32(ours, fp32),
                "continuations": fidelity.continuation_misses(ours, fp32),
            }
            rows.append(row)
            say(line(row))
    result = {
        "benchmark": "fidelity",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cpu": cpu_kernels().to_json(),
        "thresholds": {"decisiveNats": fidelity.DECISIVE, "confidentNats": fidelity.CONFIDENT},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    say(f"wrote {args.out}")


def line(row: dict[str, Any]) -> str:
    ll, fp, cont = row["llamaCpp"], row["fp32"], row["continuations"]
    return (
        f"{row['quantization']} {row['plan'] or '-'} on {row['kernels']}: llama.cpp agreement "
        f"{ll['agreement']:.4f} (decisive {ll['decisiveAgreement']:.4f}), KL {ll['kl']:.4f}; "
        f"fp32 agreement {fp['agreement']:.4f}, KL {fp['kl']:.4f}; continuation misses "
        f"{len(cont['misses'])}/{cont['compared']}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| kernels | precision | plan | agreement | decisive agreement | KL | "
        "vs fp32 agreement | vs fp32 KL | continuation misses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ll, fp, cont = r["llamaCpp"], r["fp32"], r["continuations"]
        kernels = r["kernels"] + (" (emulated)" if r["emulated"] else "")
        lines.append(
            f"| {kernels} | {r['quantization']} | {r['plan'] or '-'} | {ll['agreement']:.4f} | "
            f"{ll['decisiveAgreement']:.4f} | {ll['kl']:.4f} | {fp['agreement']:.4f} | "
            f"{fp['kl']:.5f} | {len(cont['misses'])}/{cont['compared']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
