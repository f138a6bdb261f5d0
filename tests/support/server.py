"""The chain server as a real process (`llmchain serve`), on a free port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.redis import free_port


class ServerProcess:
    def __init__(
        self,
        model: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        name: str = "smollm2",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmchain-serve-{self.port}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmchain_cli",
                "serve",
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--model-name",
                name,
                *(args or []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LLMCHAIN_MAX_CONTEXT": "1024", **(env or {})},
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llmchain serve exited {self.process.returncode}:\n{self.logs()}"
                )
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llmchain serve not ready in {timeout} s:\n{self.logs()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers.items()), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, timeout=5)

    def post(
        self, path: str, payload: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, h, raw = self.request(
            "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
        )
        return status, h, json.loads(raw) if raw else None

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code
