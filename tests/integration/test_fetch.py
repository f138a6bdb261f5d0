"""Fetching a model source from a hostile or careless HTTP server (a real one on 127.0.0.1): a
size cap, http(s)-only redirects, no file:// copies, and nothing left in the cache after a
refusal, a failure or an interruption; a good file still downloads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmchain_server.model import FetchError, build_model
from llmchain_server.model.fetch import CHUNK, fetch

LLMCHAIN = [sys.executable, "-m", "llmchain_cli"]
GOOD = bytes(range(256)) * (3 * 4096)  # 3 MiB
GOOD_SHA256 = hashlib.sha256(GOOD).hexdigest()
CAP = 4 * 2**20
ENDLESS_LIMIT = 256 * 2**20  # the "endless" body ends here, so an unfixed fetch still returns


class HostileServer:
    """Serves /good.bin (3 MiB) and hostile answers: /endless (no Content-Length, 256 MiB),
    /huge (Content-Length 10 TB, then 1 MiB and a close), /slow (trickles 64 KiB a second),
    redirects to ftp://, file:// and /good.bin, and /ranged (/endless, resumable: a Range
    gets a 206 from there). Counts the bytes each path sent and keeps the Range it was asked."""

    def __init__(self, local_file: Path) -> None:
        self.sent: dict[str, int] = {}
        self.ranges: dict[str, str | None] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                routes = {
                    "/good.bin": lambda: self._body(GOOD, len(GOOD)),
                    "/endless": self._endless,
                    "/huge": lambda: self._body(b"\0" * 2**20, 10**13),
                    "/slow": self._slow,
                    "/to-ftp": lambda: self._redirect("ftp://127.0.0.1/model.gguf"),
                    "/to-file": lambda: self._redirect(local_file.as_uri()),
                    "/to-good": lambda: self._redirect("/good.bin"),
                    "/ranged": self._ranged,
                }
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                owner.sent[self.path] = 0
                owner.ranges[self.path] = self.headers.get("Range")
                with contextlib.suppress(OSError):  # the client went away: sent is counted
                    route()

            def _write(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                owner.sent[self.path] += len(data)

            def _body(self, data: bytes, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self._write(data)

            def _endless(self) -> None:
                self.send_response(200)  # HTTP/1.0, no Content-Length: the body ends at close
                self.end_headers()
                block = b"x" * 65536
                while owner.sent[self.path] < ENDLESS_LIMIT:
                    self._write(block)

            def _ranged(self) -> None:
                asked = self.headers.get("Range", "")
                if not asked.startswith("bytes="):
                    self._endless()
                    return
                start = int(asked.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)  # no Content-Length: the body ends at close
                self.send_header("Content-Range", f"bytes {start}-{ENDLESS_LIMIT - 1}/*")
                self.end_headers()
                block = b"x" * 65536
                while owner.sent[self.path] < ENDLESS_LIMIT - start:
                    self._write(block)

            def _slow(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(GOOD)))
                self.end_headers()
                for start in range(0, len(GOOD), 65536):
                    self._write(GOOD[start : start + 65536])
                    time.sleep(1)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def local_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("local") / "good.bin"
    path.write_bytes(GOOD)
    return path


@pytest.fixture(scope="module")
def hostile(local_file: Path) -> Iterator[HostileServer]:
    server = HostileServer(local_file)
    yield server
    server.close()


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_an_endless_body_stops_at_the_cap_and_leaves_nothing(
    tmp_path: Path, hostile: HostileServer
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=rf"/endless is larger than the cap of {CAP} bytes") as e:
        fetch(f"{hostile.url}/endless", GOOD_SHA256, cache, max_bytes=CAP)
    written = int(str(e.value).split("stopped after ")[1].split(" bytes")[0])
    assert CAP < written <= CAP + CHUNK
    assert cache_files(cache) == []
    time.sleep(0.5)  # the server notices the closed connection
    assert hostile.sent["/endless"] < ENDLESS_LIMIT


def test_a_kept_partial_larger_than_the_cap_is_discarded_not_resumed(
    tmp_path: Path, hostile: HostileServer
) -> None:
    """A .partial a broken-off run with a larger cap left: resuming it would read with a
    negative size, which http.client takes as "to the end" (the cap no longer holds)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"sha256-{GOOD_SHA256}.partial").write_bytes(b"x" * (CAP + 2**20))
    (cache / f"sha256-{GOOD_SHA256}.partial.validator").write_text('"v1"')
    with pytest.raises(FetchError, match=rf"/ranged is larger than the cap of {CAP} bytes"):
        fetch(f"{hostile.url}/ranged", GOOD_SHA256, cache, max_bytes=CAP)
    assert hostile.ranges["/ranged"] is None  # started over, not resumed
    assert cache_files(cache) == []
    time.sleep(0.5)  # the server notices the closed connection
    assert hostile.sent["/ranged"] < ENDLESS_LIMIT


def test_the_default_cap_comes_from_the_environment(
    tmp_path: Path, hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHAIN_MAX_SOURCE_BYTES", "2Mi")
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=rf"larger than the cap of {2 * 2**20} bytes"):
        fetch(f"{hostile.url}/endless", None, cache)
    assert cache_files(cache) == []


def test_a_content_length_above_the_cap_is_refused_before_reading(
    tmp_path: Path, hostile: HostileServer
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(
        FetchError,
        match=rf"/huge is 10000000000000 bytes \(Content-Length\), above the cap of {CAP} bytes",
    ):
        fetch(f"{hostile.url}/huge", None, cache, max_bytes=CAP)
    assert cache_files(cache) == []


@pytest.mark.parametrize("path,scheme", [("/to-ftp", "ftp"), ("/to-file", "file")])
def test_a_redirect_to_another_scheme_is_refused(
    tmp_path: Path, hostile: HostileServer, path: str, scheme: str
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(
        FetchError,
        match=rf"{path} redirected to a {scheme}:// URL .*only http:// and https:// redirects",
    ):
        fetch(f"{hostile.url}{path}", GOOD_SHA256, cache)
    assert cache_files(cache) == []


def test_a_file_url_is_refused_before_the_cache_is_touched(
    tmp_path: Path, local_file: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=rf"file:// URLs are not fetched: pass {local_file}"):
        fetch(local_file.as_uri(), GOOD_SHA256, cache)
    assert not cache.exists()


def test_another_scheme_is_named(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"ftp:// URLs are not fetched: only http:// and https://"):
        fetch("ftp://127.0.0.1/model.gguf", None, cache)
    assert not cache.exists()


def test_a_good_file_and_an_http_redirect_still_work(
    tmp_path: Path, hostile: HostileServer
) -> None:
    cache = tmp_path / "cache"
    fetched = fetch(f"{hostile.url}/to-good", GOOD_SHA256, cache, max_bytes=len(GOOD))
    assert fetched.path.read_bytes() == GOOD
    assert cache_files(cache) == [f"sha256-{GOOD_SHA256}"]  # no .lock, no .validator


def test_a_checksum_failure_leaves_nothing(tmp_path: Path, hostile: HostileServer) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch(f"{hostile.url}/good.bin", "0" * 64, cache)
    assert cache_files(cache) == []


def test_the_build_passes_the_cap_down(tmp_path: Path, hostile: HostileServer) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"larger than the cap of 1048576 bytes"):
        build_model(
            f"{hostile.url}/endless",
            tmp_path / "m",
            "int4",
            cache_dir=cache,
            max_source_bytes=2**20,
        )
    assert cache_files(cache) == []
    assert cache_files(tmp_path) == ["cache"]  # no build lock, no temporary folder


def test_the_cli_takes_the_cap_as_a_flag(tmp_path: Path, hostile: HostileServer) -> None:
    cache = tmp_path / "cache"
    result = subprocess.run(
        [
            *LLMCHAIN,
            "model",
            "build",
            "--source",
            f"{hostile.url}/huge",
            "--out",
            str(tmp_path / "m"),
            "--cache-dir",
            str(cache),
            "--max-source-bytes",
            "1Gi",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"above the cap of {2**30} bytes" in result.stderr
    assert cache_files(cache) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_download_leaves_nothing(
    tmp_path: Path, hostile: HostileServer, signum: int
) -> None:
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        [
            *LLMCHAIN,
            "model",
            "build",
            "--source",
            f"{hostile.url}/slow",
            "--sha256",
            GOOD_SHA256,
            "--out",
            str(tmp_path / "m"),
            "--cache-dir",
            str(cache),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not any(n.endswith(".partial") for n in cache_files(cache)):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert cache_files(cache) == []
    assert cache_files(tmp_path) == ["cache"]


def _count_under_lock(lock: str, counter: str, rounds: int) -> None:
    from llmchain_server.model.locks import locked

    for _ in range(rounds):
        with locked(Path(lock)):
            value = int(Path(counter).read_text())
            time.sleep(0.001)  # widen the read-modify-write window
            Path(counter).write_text(str(value + 1))


def test_a_lock_that_removes_itself_still_excludes(tmp_path: Path) -> None:
    """Lock files are unlinked on release; a waiter holding the unlinked file locks again."""
    import multiprocessing

    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = tmp_path / "x.lock"
    workers = [
        multiprocessing.get_context("spawn").Process(
            target=_count_under_lock, args=(str(lock), str(counter), 100)
        )
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 4
    assert counter.read_text() == "400"
    assert not lock.exists()
