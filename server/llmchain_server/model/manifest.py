"""The model folder's `manifest.json`: what was built from what, and a content digest over every
file, so a folder is verified before it is served and a finished build is recognised."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain_server.contract import MODEL_BUILD_RECIPE, files_digest
from llmchain_server.model.fields import Fields, FolderError
from llmchain_server.model.progress import Progress

FORMAT = "llmchain-model/1"
BUILDER = MODEL_BUILD_RECIPE
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    """One file of the folder as the manifest lists it."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`, typed: the fields the engine and `llmchain model wait` read."""

    digest: str
    """sha256 over every file's name and checksum (`content_digest`)."""
    builder: str
    quantization: str
    build_digest: str | None
    """The digest the operator asked this build for (`--digest`), when it asked."""
    files: Mapping[str, FileEntry]
    data: dict[str, Any] = field(repr=False, compare=False)
    """The manifest as read, every field (source, parameters, totalBytes...)."""

    @classmethod
    def read(cls, f: Fields) -> Manifest:
        if f.text("format") != FORMAT:
            raise f.error("format", f"is not {FORMAT!r}")
        return cls(
            digest=f.text("digest"),
            builder=f.text("builder"),
            quantization=f.text("quantization"),
            build_digest=f.optional_text("buildDigest"),
            files={
                name: FileEntry(sha256=entry.text("sha256"), bytes=entry.integer("bytes"))
                for name, entry in f.sections("files").items()
            },
            data=f.data,
        )


def file_digest(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, hex, reporting bytes read to `progress` when given."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress.bytes(done)
    return digest.hexdigest()


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the sorted `name sha256` lines (contract.files_digest): equal folders, equal
    digests."""
    return files_digest({name: entry["sha256"] for name, entry in files.items()})


def write_manifest(
    folder: Path,
    *,
    source: dict[str, Any],
    quantization: str,
    build_digest: str | None,
    parameters: int,
) -> dict[str, Any]:
    """Write the manifest of every other file in `folder`; returns it."""
    files: dict[str, dict[str, Any]] = {
        p.name: {"sha256": file_digest(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": FORMAT,
        "builder": BUILDER,
        "source": source,
        "quantization": quantization,
        "buildDigest": build_digest,
        "parameters": parameters,
        "digest": content_digest(files),
        "files": files,
        "totalBytes": sum(f["bytes"] for f in files.values()),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished build in `folder`, or None (none, or not one of ours)."""
    try:
        return _read(folder).data
    except FolderError:
        return None


def check(folder: Path, deep: bool = True) -> Manifest:
    """The manifest, typed, after checking each listed file's size (and checksum when `deep`);
    a FolderError names what is wrong."""
    manifest = _read(folder)
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry.bytes:
            raise FolderError(f"{folder}: {name} is missing or has the wrong size")
        if deep and file_digest(path) != entry.sha256:
            raise FolderError(f"{folder}: {name} does not match its checksum in {MANIFEST}")
    return manifest


def verify(folder: Path, deep: bool = True) -> dict[str, Any]:
    """The manifest, after checking each listed file's size (and checksum when `deep`)."""
    return check(folder, deep).data


def _read(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not path.is_file():
        raise FolderError(f"{folder} has no valid {MANIFEST}; build it with `llmchain model build`")
    return Manifest.read(Fields.load(path))
