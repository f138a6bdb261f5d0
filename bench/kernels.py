"""What onnxruntime's MatMulNBits computes on each CPU kernel family: one node of the decoder's
shape (the QKV projection: K 576, N 960, blocks of 32; 4-bit with zero point 0 as the Q4_1
repack, 8-bit with zero point 128 as the Q8_0 head) at accuracy levels 4 and 0, run natively and
under `qemu-x86_64 -cpu Haswell` (the AVX2 kernels), against two references computed here in
float64: the exact product, and the int8-activation product (each row's blocks of 32 quantized
to max|a|/127, rounded to nearest even, then summed exactly).

    python bench/kernels.py [--rows 1 2 16] [--out bench/results/kernels.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
K, N, BLOCK = 576, 960, 32
Array = npt.NDArray[np.float64]  # float64 references


def weights(bits: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], int]:
    """Random blocks (q, scales) and the zero point: 0 for 4 bits (the Q4_1 repack), 128 for 8."""
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2**bits, size=(N, K), dtype=np.uint8)
    scales = (rng.random((N, K // BLOCK), dtype=np.float32) * 0.02 + 0.001).astype(np.float32)
    return q, scales, 0 if bits == 4 else 128


def model(
    q: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], zero: int, level: int
) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    bits = 4 if zero == 0 else 8
    blocks = q.reshape(N, K // BLOCK, BLOCK)
    packed = blocks if bits == 8 else (blocks[..., 0::2] | (blocks[..., 1::2] << 4))
    zp_count = N * (K // BLOCK) if bits == 8 else N * ((K // BLOCK + 1) // 2)
    zp = np.full(zp_count, zero, np.uint8)
    node = helper.make_node(
        "MatMulNBits",
        ["a", "b", "scales", "zp"],
        ["y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=bits,
        block_size=BLOCK,
        accuracy_level=level,
    )
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
        [
            numpy_helper.from_array(np.ascontiguousarray(packed.astype(np.uint8)), "b"),
            numpy_helper.from_array(scales.reshape(-1), "scales"),
            numpy_helper.from_array(zp, "zp"),
        ],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    m.ir_version = 10
    return m.SerializeToString()


def int8_reference(a: Array, dense_q: Array, scales: Array) -> Array:
    """The product with each row's activation blocks quantized to int8 (max|a|/127, RNE)."""
    rows = a.reshape(a.shape[0], K // BLOCK, BLOCK).astype(np.float32)
    amax = np.abs(rows).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    qa = np.rint(rows * inv).astype(np.float64)  # numpy rounds half to even, as cvtps2dq does
    sa = (amax / np.float32(127)).astype(np.float32).astype(np.float64)[..., 0]
    wq = dense_q.reshape(N, K // BLOCK, BLOCK)
    dots = np.einsum("mbk,nbk->mnb", qa, wq)  # exact integer sums, in float64
    return np.einsum("mnb,mb,nb->mn", dots, sa, scales.astype(np.float64))


def run(session_bytes: Path, a_path: Path, out: Path) -> None:
    import onnxruntime as ort

    s = ort.InferenceSession(session_bytes.read_bytes(), providers=["CPUExecutionProvider"])
    np.save(out, s.run(None, {"a": np.load(a_path)})[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 16])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    parser.add_argument("--worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run(*args.worker)
        return
    sys.path.insert(0, str(ROOT))
    from tests.support.fidelity import EMULATOR, emulate

    from llmchain_server.engine.cpu import cpu_kernels

    native = cpu_kernels().family
    families = [native] + (["avx2"] if native != "avx2" and shutil.which(EMULATOR[0]) else [])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path, a_path = Path(tmp) / "m.onnx", Path(tmp) / "a.npy"
        for bits in (4, 8):
            q, scales, zero = weights(bits)
            signed = q.astype(np.float64) - zero
            dense = signed * np.repeat(scales.astype(np.float64), BLOCK, axis=1)
            for level in (4, 0):
                path.write_bytes(model(q, scales, zero, level))
                for m in args.rows:
                    a = np.random.default_rng(m).standard_normal((m, K)).astype(np.float32)
                    a[:, ::97] *= 20  # a few outlier channels, as real activations have
                    np.save(a_path, a)
                    exact = a.astype(np.float64) @ dense.T
                    int8 = int8_reference(a.astype(np.float64), signed, scales)
                    outs = {}
                    for family in families:
                        out = Path(tmp) / f"{family}.npy"
                        worker = [__file__, "--worker", str(path), str(a_path), str(out)]
                        if family == native:
                            subprocess.run([sys.executable, *worker], check=True, timeout=600)
                        else:
                            emulate(worker, timeout=600)
                        outs[family] = np.load(out).astype(np.float64)
                    scale = float(np.abs(exact).max())
                    row: dict[str, Any] = {"bits": bits, "level": level, "rows": m}
                    for family, y in outs.items():
                        row[family] = {
                            "vsExact": float(np.abs(y - exact).max() / scale),
                            "vsInt8Reference": float(np.abs(y - int8).max() / scale),
                        }
                    if len(outs) == 2:
                        a_out, b_out = outs.values()
                        row["betweenFamilies"] = float(np.abs(a_out - b_out).max() / scale)
                        row["identical"] = bool(np.array_equal(a_out, b_out))
                    results.append(row)
                    print(json.dumps(row), flush=True)
    result = {
        "benchmark": "kernels",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_kernels().to_json(),
        "note": "errors are max |difference| / max |exact output|",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
