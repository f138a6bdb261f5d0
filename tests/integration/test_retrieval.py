"""Retrieval on the real server: `llmchain index build` over the docs-QA example's documents
(examples/05-docs-qa/docs) with all-MiniLM-L6-v2, then a chain whose retrieval step feeds the
model's prompt (the example's chain), served by `llmchain serve --index`. Bad documents, an
index from another model and a chain without an index are refused with their reason."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from llmchain_server.dataplane.embeddings import EmbeddingMetrics, Embeddings
from llmchain_server.engine.embedder import Embedder
from llmchain_server.retrieval.build import IndexBuildError, build_index
from llmchain_server.retrieval.chunking import Chunking
from llmchain_server.retrieval.index_folder import IndexManifest
from llmchain_server.retrieval.retriever import MODES, Found, Retriever
from tests.support.cluster import ROOT
from tests.support.model import ModelFileServer
from tests.support.server import ServerProcess

EXAMPLE = ROOT / "examples" / "05-docs-qa"
DOCS = EXAMPLE / "docs"
CHUNKING = Chunking(64, 16)


def example_chain() -> dict[str, Any]:
    """The example app's chain, as `llmchain serve --chain` reads it."""
    app: dict[str, Any] = yaml.safe_load((EXAMPLE / "app.yaml").read_text())
    return {"name": app["metadata"]["name"], "chain": app["spec"]["chain"]}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, embedding_dirs: Callable[[str], Path]) -> Path:
    out = tmp_path_factory.mktemp("index") / "docs"
    build_index(DOCS, embedding_dirs("int8"), out, CHUNKING)
    return out


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    model_dirs: Callable[[str], Path],
    embedding_dirs: Callable[[str], Path],
    index: Path,
) -> Iterator[ServerProcess]:
    chain = tmp_path_factory.mktemp("chain") / "chain.yaml"
    chain.write_text(yaml.safe_dump(example_chain()))
    s = ServerProcess(
        model_dirs("int4"),
        args=[
            "--chain", str(chain),
            "--embedding-model", str(embedding_dirs("int8")),
            "--index", str(index),
        ],
    )  # fmt: skip
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def test_the_index_records_its_corpus_and_model(
    index: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    manifest = IndexManifest.read(index)
    assert manifest.documents == len(list(DOCS.glob("*.md")))
    assert manifest.chunks > manifest.documents  # 64-token chunks: several per document
    assert manifest.kind == "flat"  # auto: a small corpus gets the exact index
    model = json.loads((embedding_dirs("int8") / "manifest.json").read_text())
    assert manifest.model_digest == model["digest"]
    chunks = [json.loads(line) for line in (index / "chunks.jsonl").open()]
    for chunk in chunks:  # each chunk is its document's text, verbatim
        assert chunk["text"] == (DOCS / chunk["source"]).read_text()[chunk["start"] : chunk["end"]]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_index_kind_and_mode_finds_the_page(
    tmp_path: Path, embedding_dirs: Callable[[str], Path], kind: str
) -> None:
    out = tmp_path / kind
    assert build_index(DOCS, embedding_dirs("int8"), out, CHUNKING, kind)["kind"] == kind
    question = "How often should the CA be rotated?"

    async def search() -> tuple[dict[str, Found], Found]:
        embedder = Embedder(embedding_dirs("int8"), provider="cpu")
        embeddings = Embeddings(embedder, "minilm", EmbeddingMetrics(CollectorRegistry()))
        retriever = Retriever(out, embeddings)
        found = {mode: await retriever.search(question, 3, mode=mode) for mode in MODES}
        strict = await retriever.search(question, 3, threshold=0.99)
        await embeddings.close()
        return found, strict

    found, strict = asyncio.run(search())
    for mode, result in found.items():
        assert result.passages[0].source == "security.md", mode
        scores = [p.score for p in result.passages]
        assert scores == sorted(scores, reverse=True), mode
        assert all(-1 <= p.similarity <= 1 for p in result.passages)
    dense = found["dense"].passages
    for p in dense:  # the index's inner product is the reconstructed vector's cosine
        assert p.score == pytest.approx(p.similarity, abs=1e-5)
    assert strict.passages == []  # nothing is that close


def test_a_second_build_of_the_same_corpus_is_reused(
    tmp_path: Path, index: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(index, out)
    stamp = (out / "index.faiss").stat().st_mtime_ns
    again = build_index(DOCS, embedding_dirs("int8"), out, CHUNKING)
    assert again["digest"] == IndexManifest.read(index).digest
    assert (out / "index.faiss").stat().st_mtime_ns == stamp
    (out / "chunks.jsonl").write_text("{}\n")  # damaged: rebuilt, not reused
    repaired = build_index(DOCS, embedding_dirs("int8"), out, CHUNKING)
    assert repaired["digest"] == again["digest"]
    changed = tmp_path / "docs"
    shutil.copytree(DOCS, changed)
    (changed / "new.md").write_text("# New page\n\nHeronfeed now speaks gRPC on port 7400.\n")
    rebuilt = build_index(changed, embedding_dirs("int8"), out, CHUNKING)
    assert rebuilt["corpusDigest"] != again["corpusDigest"]
    assert rebuilt["documents"] == again["documents"] + 1


def test_the_chain_answers_from_retrieved_passages(server: ServerProcess) -> None:
    question = "Which port do producers connect to on a fresh Heronfeed install?"
    status, _, body = server.post("/v1/chains/docs-qa/invoke", {"input": {"question": question}})
    assert status == 200, body
    sources = body["metadata"]["sources"]
    assert sources and sources[0]["source"] == "installing.md"
    assert all(s["step"] == "context" for s in sources)
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
    assert isinstance(body["output"], str) and body["output"].strip()


def test_a_batch_lists_each_inputs_sources(server: ServerProcess) -> None:
    questions = ["How often should the CA be rotated?", "On which port are metrics served?"]
    status, _, body = server.post(
        "/v1/chains/docs-qa/batch", {"inputs": [{"question": q} for q in questions]}
    )
    assert status == 200, body
    first, second = body["metadata"]["sources"]
    assert first[0]["source"] == "security.md"
    assert second[0]["source"] == "monitoring.md"


def test_a_query_longer_than_the_encoder_reads_is_cut_and_said(server: ServerProcess) -> None:
    question = "Where is the write-ahead log? " + "Please answer precisely. " * 80
    status, _, body = server.post("/v1/chains/docs-qa/invoke", {"input": {"question": question}})
    assert status == 200, body  # over 256 encoder tokens, within the model's context
    assert body["metadata"]["truncated_queries"] == ["context"]
    assert len(body["metadata"]["sources"]) == 3  # searched with its beginning


def test_an_index_from_another_model_is_refused(
    tmp_path: Path,
    model_dirs: Callable[[str], Path],
    embedding_dirs: Callable[[str], Path],
    index: Path,
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(example_chain()))
    done = subprocess.run(
        [
            sys.executable, "-m", "llmchain_cli", "serve",
            "--model", str(model_dirs("int4")),
            "--chain", str(chain),
            "--embedding-model", str(embedding_dirs("none")),  # the index has int8's vectors
            "--index", str(index),
            "--port", "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "was built with embedding model sha256:" in done.stderr
    assert "rebuild the index" in done.stderr


def test_a_retrieval_chain_without_an_index_is_refused(
    tmp_path: Path, model_dirs: Callable[[str], Path]
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(example_chain()))
    done = subprocess.run(
        [
            sys.executable, "-m", "llmchain_cli", "serve",
            "--model", str(model_dirs("int4")), "--chain", str(chain), "--port", "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "step context is a retrieval step" in done.stderr


def test_bad_documents_are_skipped_with_their_reason(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "empty.md").write_text("  \n\n")
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "huge.md").write_bytes(b"a" * (10 * 2**20 + 1))
    (docs / ".hidden.md").write_text("not a document")
    manifest = build_index(docs, embedding_dirs("int8"), tmp_path / "out", CHUNKING)
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "empty.md": "is empty",
        "image.png": "is binary (it holds NUL bytes)",
        "latin1.txt": "is not UTF-8 (byte 3 is 0xe9)",
        "huge.md": "is 10485761 bytes, over the 10485760 bytes a document may hold",
    }
    assert manifest["documents"] == len(list(DOCS.glob("*.md")))


def test_a_corpus_of_nothing_usable_is_an_error(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_text("")
    with pytest.raises(IndexBuildError, match=r"no usable document in .* \(1 skipped\)"):
        build_index(docs, embedding_dirs("int8"), tmp_path / "out", CHUNKING)


def test_documents_from_a_url_are_checked_against_their_sha256(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    archive = tmp_path / "docs.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(DOCS, arcname="docs")
    files = ModelFileServer(archive)  # serves the archive at /model.gguf
    try:
        import hashlib

        good = hashlib.sha256(archive.read_bytes()).hexdigest()
        command = [
            sys.executable, "-m", "llmchain_cli", "index", "build",
            "--documents", f"{files.url}/model.gguf",
            "--embedding-model", str(embedding_dirs("int8")),
            "--cache-dir", str(tmp_path / "cache"),
            "--chunk-size", "64", "--chunk-overlap", "16",
        ]  # fmt: skip
        done = subprocess.run(
            [*command, "--sha256", good, "--out", str(tmp_path / "a")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert IndexManifest.read(tmp_path / "a").documents == len(list(DOCS.glob("*.md")))
        bad = subprocess.run(
            [*command, "--sha256", "0" * 64, "--out", str(tmp_path / "b")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert bad.returncode != 0
        assert "sha256" in bad.stderr and not (tmp_path / "b").exists()
    finally:
        files.close()


def test_documents_that_changed_since_the_operator_read_them_are_refused(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    """The operator passes the corpus digest of the ConfigMaps it read (--corpus-digest): an
    index of other documents is never written under that build digest."""
    from llmchain_server.retrieval.documents import read_corpus

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    read = read_corpus(docs).digest
    (docs / "installing.md").write_text("Edited after the operator read it.\n")
    command = [
        sys.executable, "-m", "llmchain_cli", "index", "build", "--documents", str(docs),
        "--embedding-model", str(embedding_dirs("int8")), "--out", str(tmp_path / "index"),
        "--digest", "sha256:build", "--corpus-digest", read,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"not {read}: they changed after the build was asked for" in done.stderr, done.stderr
    assert not (tmp_path / "index").exists()
    command[-1] = read_corpus(docs).digest
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_single_document_from_a_url_is_cited_by_its_url_name(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    page = DOCS / "installing.md"
    files = ModelFileServer(page)  # serves the page at /model.gguf
    try:
        import hashlib

        out = tmp_path / "index"
        command = [
            sys.executable, "-m", "llmchain_cli", "index", "build",
            "--documents", f"{files.url}/model.gguf",
            "--sha256", hashlib.sha256(page.read_bytes()).hexdigest(),
            "--embedding-model", str(embedding_dirs("int8")),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        sources = {json.loads(line)["source"] for line in (out / "chunks.jsonl").open()}
        assert sources == {"model.gguf"}
    finally:
        files.close()
