"""Retrieval benchmark, side by side in one run:

1. recall on the docs-QA example (examples/05-docs-qa: 8 documents, 24 labelled questions): for
   dense (all-MiniLM-L6-v2 int8), BM25 (bm25s) and hybrid retrieval, the share of questions whose
   expected answer text is in the top 1, 3 and 5 passages, and whose source document is in the top
   5;
2. the example's answers with retrieval and without (SmolLM2-135M int4, greedy, the example's
   chain against the seed's bare "Question: ... Answer:" chain): the share of answers that contain
   the expected answer text;
3. Faiss flat, IVF and HNSW indexes against a NumPy brute-force search, on clustered synthetic
   384-dimensional unit vectors (10,000 and 100,000): build seconds, one query's latency (median
   of 200), and recall@10 against the exact neighbours.

    .venv/bin/python bench/retrieval.py [--sizes 10000 100000] [--out bench/results/retrieval.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "05-docs-qa"
EXAMPLE_APP = yaml.safe_load((EXAMPLE / "app.yaml").read_text())
CHUNKING = EXAMPLE_APP["spec"]["retrieval"]["chunking"]
CHUNK_SIZE, CHUNK_OVERLAP = CHUNKING["size"], CHUNKING["overlap"]
BARE_CHAIN = {
    "name": "docs-qa",
    "chain": {
        "inputs": ["question"],
        "steps": [
            {
                "name": "answer",
                "type": "llm",
                "prompt": "Question: {{ question }}\nAnswer:",
                "generation": {"maxTokens": 48, "temperature": 0.0},
            }
        ],
    },
}


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def contains(text: str, answer: str) -> bool:
    return answer.lower() in text.lower()


async def recall(index: Path, embedding: Path) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from llmchain_server.dataplane.embeddings import EmbeddingMetrics, Embeddings
    from llmchain_server.engine.embedder import Embedder
    from llmchain_server.retrieval.retriever import Retriever

    embeddings = Embeddings(
        Embedder(embedding, provider="cpu"), "minilm", EmbeddingMetrics(CollectorRegistry())
    )
    retriever = Retriever(index, embeddings)
    questions = json.loads((EXAMPLE / "questions.json").read_text())
    results: dict[str, Any] = {}
    for mode in ("dense", "bm25", "hybrid"):
        hits = {1: 0, 3: 0, 5: 0}
        sources = 0
        for q in questions:
            found = (await retriever.search(q["question"], 5, mode=mode)).passages
            for k in hits:
                hits[k] += any(contains(p.text, q["answer"]) for p in found[:k])
            sources += any(p.source == q["source"] for p in found)
        results[mode] = {f"answer_recall@{k}": v / len(questions) for k, v in hits.items()}
        results[mode]["source_recall@5"] = sources / len(questions)
        say(f"recall {mode}: {results[mode]}")
    await embeddings.close()
    return results


def answers(model: Path, embedding: Path, index: Path, tmp: Path) -> dict[str, Any]:
    from tests.support.server import ServerProcess

    questions = json.loads((EXAMPLE / "questions.json").read_text())
    outcome: dict[str, Any] = {}
    chains = {
        "with_retrieval": {"name": "docs-qa", "chain": EXAMPLE_APP["spec"]["chain"]},
        "without_retrieval": BARE_CHAIN,
    }
    for name, chain in chains.items():
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(chain))
        args = ["--chain", str(path), "--embedding-model", str(embedding), "--index", str(index)]
        server = ServerProcess(model, args=args, env={"LLMCHAIN_MAX_CONTEXT": "2048"})
        try:
            server.wait_ready()
            right = []
            for q in questions:
                status, _, body = server.post(
                    "/v1/chains/docs-qa/invoke", {"input": {"question": q["question"]}}
                )
                if status != 200:
                    raise RuntimeError(f"{name}: {status} {body}")
                right.append(contains(str(body["output"]), q["answer"]))
        finally:
            server.stop()
        outcome[name] = {"correct": sum(right), "of": len(questions)}
        say(f"answers {name}: {sum(right)}/{len(questions)} contain the expected text")
    return outcome


def clustered(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((256, d)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def indexes(sizes: list[int]) -> dict[str, Any]:
    import faiss

    from llmchain_server.retrieval.build import make_index

    faiss.omp_set_num_threads(1)  # as the retriever searches: one query, one thread

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for n in sizes:
        vectors = clustered(n, 384, rng)
        queries = clustered(200, 384, rng)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        row: dict[str, Any] = {}
        times = []
        for q in queries:
            start = time.perf_counter()
            scores = vectors @ q
            top = np.argpartition(-scores, 10)[:10]
            top[np.argsort(-scores[top])]
            times.append(time.perf_counter() - start)
        row["numpy"] = {
            "build_s": 0.0,
            "query_ms": 1e3 * statistics.median(times),
            "recall@10": 1.0,
        }
        for kind in ("flat", "ivf", "hnsw"):
            start = time.perf_counter()
            index = make_index(vectors, kind)
            built = time.perf_counter() - start
            times, found = [], []
            for q in queries:
                start = time.perf_counter()
                _, ids = index.search(q[None, :], 10)
                times.append(time.perf_counter() - start)
                found.append(ids[0])
            hit = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
            row[kind] = {
                "build_s": built,
                "query_ms": 1e3 * statistics.median(times),
                "recall@10": float(hit),
            }
        for r in row.values():
            r["query_vs_numpy"] = r["query_ms"] / row["numpy"]["query_ms"]
        out[str(n)] = row
        say(
            f"{n} vectors: "
            + ", ".join(
                f"{k} build {r['build_s']:.2f} s, query {r['query_ms']:.3f} ms "
                f"({r['query_vs_numpy']:.2f}x numpy), recall@10 {r['recall@10']:.3f}"
                for k, r in row.items()
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skip-answers", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/retrieval.json")
    args = parser.parse_args()
    from tests.support.model import (
        EMBEDDING_ZIP_SHA256,
        GGUF_SHA256,
        embedding_zip,
        gguf_path,
    )

    from llmchain_server.engine.cpu import cpu_kernels
    from llmchain_server.model import build_model
    from llmchain_server.retrieval.build import build_index
    from llmchain_server.retrieval.chunking import Chunking

    results: dict[str, Any] = {"cpu": cpu_kernels().to_json()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        say("building the embedding model (int8) and the example's index")
        embedding = root / "minilm"
        build_model(str(embedding_zip()), embedding, "int8", EMBEDDING_ZIP_SHA256)
        index = root / "index"
        started = time.perf_counter()
        manifest = build_index(
            EXAMPLE / "docs", embedding, index, Chunking(CHUNK_SIZE, CHUNK_OVERLAP)
        )
        results["example_index"] = {
            "documents": manifest["documents"],
            "chunks": manifest["chunks"],
            "build_s": time.perf_counter() - started,
        }
        results["recall"] = asyncio.run(recall(index, embedding))
        if not args.skip_answers:
            say("building SmolLM2-135M int4 for the answers")
            model = root / "smollm2"
            build_model(str(gguf_path()), model, "int4", GGUF_SHA256)
            results["answers"] = answers(model, embedding, index, root)
    say("Faiss indexes against NumPy brute force")
    results["indexes"] = indexes(args.sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
