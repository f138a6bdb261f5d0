"""Model folders: fetching a source, converting it to a quantized ONNX decoder, manifests, and
reading a built folder (folder.py).

The names below load their module on first use, so reading a folder (what the engine does)
never loads the builder and its onnx and gguf."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmchain_server.model.build import BuildError, build_model, wait_for_model
    from llmchain_server.model.fetch import FetchError
    from llmchain_server.model.manifest import read_manifest, verify

_MODULES = {
    "BuildError": "build",
    "build_model": "build",
    "wait_for_model": "build",
    "FetchError": "fetch",
    "read_manifest": "manifest",
    "verify": "manifest",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["BuildError", "FetchError", "build_model", "read_manifest", "verify", "wait_for_model"]
