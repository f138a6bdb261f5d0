"""The model folder's `manifest.json`: what was built from what, and a content digest over every
file, so a folder is verified before it is served and a finished build is recognised."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmchain_server.model.progress import Progress

FORMAT = "llmchain-model/1"
BUILDER = "llmchain-model-build/2"
MANIFEST = "manifest.json"


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
    """sha256 over the sorted `name sha256` lines: equal folders, equal digests."""
    lines = "".join(f"{name} {files[name]['sha256']}\n" for name in sorted(files))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {
        p.name: {"sha256": file_digest(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": FORMAT,
        "builder": BUILDER,
        **fields,
        "digest": content_digest(files),
        "files": files,
        "totalBytes": sum(f["bytes"] for f in files.values()),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if not isinstance(data.get("digest"), str) or not isinstance(data.get("files"), dict):
        return None
    return data


def verify(folder: Path, deep: bool = True) -> dict[str, Any]:
    """The manifest, after checking each listed file's size (and checksum when `deep`)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"{folder} has no valid {MANIFEST}; build it with `llmchain model build`")
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise ValueError(f"{folder}: {name} is missing or has the wrong size")
        if deep and file_digest(path) != info["sha256"]:
            raise ValueError(f"{folder}: {name} does not match its checksum in {MANIFEST}")
    return manifest
