"""Model folders: fetching a source, converting it to a quantized ONNX decoder, manifests."""

from llmchain_server.model.build import BuildError, build_model, wait_for_model
from llmchain_server.model.fetch import FetchError
from llmchain_server.model.manifest import read_manifest, verify

__all__ = ["BuildError", "FetchError", "build_model", "read_manifest", "verify", "wait_for_model"]
