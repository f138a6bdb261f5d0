"""The index folder `llmchain index build` writes and the retriever reads:

- `index.faiss`: the chunks' vectors (Faiss: flat inner product, IVF or HNSW; the vectors are
  normalised, so inner product is cosine similarity);
- `chunks.jsonl`: one line per chunk, in the index's order: its source document, its character
  span there, and its text;
- `bm25/`: a BM25 index of the same chunks (bm25s), for keyword and hybrid retrieval;
- `manifest.json`: what was built from what (the corpus and embedding model digests, chunking,
  index kind), the counts, the skipped documents and a digest over every file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmchain_server.model.manifest import file_digest
from llmchain_server.model.progress import Progress, wait_until

FORMAT = "llmchain-index/1"
MANIFEST = "manifest.json"
VECTORS = "index.faiss"
CHUNKS = "chunks.jsonl"
BM25 = "bm25"
KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexManifest:
    digest: str
    corpus_digest: str
    model_digest: str
    kind: str
    documents: int
    chunks: int
    data: dict[str, Any]
    """The manifest as written: every field (chunking, skipped documents, files...)."""

    @classmethod
    def read(cls, folder: Path) -> IndexManifest:
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{folder} has no {MANIFEST}: build it with `llmchain index build`"
            ) from None
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an index manifest ({FORMAT})")
        try:
            return cls(
                digest=str(data["digest"]),
                corpus_digest=str(data["corpusDigest"]),
                model_digest=str(data["embeddingModelDigest"]),
                kind=str(data["kind"]),
                documents=int(data["documents"]),
                chunks=int(data["chunks"]),
                data=data,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: field {e} is missing or malformed") from None


def read_index_manifest(folder: Path) -> IndexManifest | None:
    try:
        return IndexManifest.read(folder)
    except ValueError:
        return None


def intact(folder: Path, manifest: IndexManifest) -> bool:
    """Every file the manifest lists is there with its checksum."""
    for name, entry in manifest.data.get("files", {}).items():
        path = folder / name
        if not path.is_file() or file_digest(path) != entry.get("sha256"):
            return False
    return True


def wait_for_index(folder: Path, build_digest: str, timeout: float, poll: float = 2.0) -> None:
    """Block until `folder` holds an index with `build_digest` (the index build Job writes the
    manifest last, so a manifest with the digest means a complete index)."""
    progress = Progress("wait", label="index")

    def found() -> IndexManifest | None:
        manifest = read_index_manifest(folder)
        if manifest is None or manifest.data.get("buildDigest") != build_digest:
            return None
        return manifest

    manifest = wait_until(
        found,
        timeout,
        poll,
        progress,
        f"waiting for the index build Job to write {folder}",
        f"no index with build digest {build_digest} appeared in {folder} within {timeout:.0f} s",
    )
    progress.say(f"found {folder} ({manifest.documents} documents, {manifest.chunks} chunks)")
