"""The documents an index is built from: every file under a folder (a mounted ConfigMap, a
path on a volume) or one file (a fetched URL), read as UTF-8 text. A document that is empty,
binary, larger than the cap or not UTF-8 is skipped with its reason (the build reports each
one); nothing else is dropped. The corpus digest covers every file read, skipped ones too, so
any change to the corpus is a new digest."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmchain_server.model.archives import is_archive, unpack
from llmchain_server.model.fetch import fetch, is_url, redact
from llmchain_server.model.manifest import content_digest

MAX_DOCUMENT_BYTES = 10 * 2**20
"""Larger files are skipped: a documentation page is far smaller; a huge file is a mistake."""


@dataclass(frozen=True)
class Document:
    source: str
    """The file's path under the corpus root (its name, for a single file)."""
    text: str


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


@dataclass(frozen=True)
class Corpus:
    documents: list[Document]
    skipped: list[Skipped]
    digest: str
    """sha256 over every file's path and content checksum (manifest.content_digest)."""


def read_corpus(root: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> Corpus:
    """Every regular file under `root` (or `root` itself), hidden ones (a ConfigMap volume's
    `..data` links) and symbolic links leaving `root` excepted, in path order."""
    if not root.exists():
        raise ValueError(f"documents {root} do not exist")
    files = [root] if root.is_file() else _files(root)
    documents: list[Document] = []
    skipped: list[Skipped] = []
    checksums: dict[str, dict[str, str]] = {}
    for path in files:
        name = path.name if path == root else str(path.relative_to(root))
        size = path.stat().st_size
        if size > max_bytes:
            skipped.append(
                Skipped(name, f"is {size} bytes, over the {max_bytes} bytes a document may hold")
            )
            checksums[name] = {"sha256": f"size:{size}"}  # never read: its size stands in
            continue
        data = path.read_bytes()
        checksums[name] = {"sha256": hashlib.sha256(data).hexdigest()}
        problem, text = _text(data)
        if problem:
            skipped.append(Skipped(name, problem))
        else:
            documents.append(Document(name, text))
    return Corpus(documents, skipped, content_digest(checksums))


def _files(root: Path) -> list[Path]:
    real_root = root.resolve()
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # ConfigMap volumes: ..data, ..2026_12_07...; editors' and VCS files
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(real_root):
            continue  # a link out of the corpus
        found.append(path)
    return found


def _text(data: bytes) -> tuple[str | None, str]:
    """(why the bytes are not a document, or None; the text)."""
    if b"\x00" in data:
        return "is binary (it holds NUL bytes)", ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 (byte {e.start} is {data[e.start]:#04x})", ""
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return "is empty", ""
    return None, text


@contextlib.contextmanager
def documents_at(source: str, sha256: str | None, cache_dir: Path | None) -> Iterator[Path]:
    """The documents of `source` on disk: a local path as it is; a URL (its sha256 required, so
    a changed file is never indexed under an old digest) fetched, and unpacked into a temporary
    folder when it is a zip or tar archive."""
    if not is_url(source):
        yield Path(source)
        return
    if not sha256:
        raise ValueError(f"documents {redact(source)}: give their sha256 (--sha256)")
    fetched = fetch(source, sha256, cache_dir)
    with tempfile.TemporaryDirectory(prefix="llmchain-documents-") as tmp:
        if is_archive(fetched.path):
            unpack(fetched.path, Path(tmp))
            yield Path(tmp)
            return
        # One document: named as the URL names it (passages cite it), not as the cache does.
        name = urllib.parse.unquote(urllib.parse.urlsplit(source).path).rpartition("/")[2]
        document = Path(tmp) / (name if name.strip(".") and "\0" not in name else "document")
        try:
            os.link(fetched.path, document)
        except OSError:  # another filesystem
            shutil.copyfile(fetched.path, document)
        yield document
