"""A hostile load on a running chain server, shared by tests/integration/test_hostile.py and
bench/hostile_load.py: many slow and huge requests at once (1 MB prompts, trickled headers and
bodies, idle connections, long streams read slowly) while one client measures /healthz the way a
kubelet does (a fresh connection each time) and another keeps a normal conversation going.

Each attacker and client is a thread; `HostileLoad.run(seconds)` returns what they saw."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MEGABYTE_PROMPT = "lorem ipsum dolor sit amet " * 37_000  # 999,000 characters of words


@dataclass
class Seen:
    """What one kind of client saw: latencies (s) and outcomes (status codes or error names)."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, outcome: str, failure: str | None = None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.outcomes[outcome] += 1
            if failure is not None:
                self.failures.append(failure)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {"count": len(lat), "outcomes": dict(self.outcomes)}
        if lat:
            out.update(
                p50_ms=round(1000 * statistics.median(lat), 1),
                p99_ms=round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
                max_ms=round(1000 * lat[-1], 1),
            )
        out["failures"] = self.failures[:10]
        return out


class HealthProbe:
    """A kubelet's liveness probe, `every` seconds on a fresh connection, in a thread; use as
    a context manager, then read `seen`."""

    def __init__(self, port: int, every: float = 0.1) -> None:
        self.port = port
        self.every = every
        self.seen = Seen()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
                failure = None if status == 200 else f"/healthz answered {status}"
                self.seen.add(time.monotonic() - started, str(status), failure)
            except OSError as e:
                self.seen.add(time.monotonic() - started, type(e).__name__, f"/healthz: {e!r}")
            self._stop.wait(self.every)


class HostileLoad:
    def __init__(
        self,
        port: int,
        model: str = "smollm2",
        huge: int = 4,
        trickle_headers: int = 8,
        trickle_bodies: int = 8,
        idle: int = 50,
        streams: int = 2,
    ) -> None:
        self.port = port
        self.model = model
        self.counts = {
            "huge": huge,
            "trickle_headers": trickle_headers,
            "trickle_bodies": trickle_bodies,
            "idle": idle,
            "streams": streams,
        }
        self.stop = threading.Event()
        self.health = Seen()  # the probe's, once run
        self.conversation = Seen()
        self.attacks = {name: Seen() for name in self.counts}

    # -- running ------------------------------------------------------------------------------
    def run(self, seconds: float) -> dict[str, Any]:
        threads = [threading.Thread(target=self._conversation, daemon=True)]
        for name, count in self.counts.items():
            attack = getattr(self, f"_{name}")
            threads += [threading.Thread(target=attack, daemon=True) for _ in range(count)]
        for t in threads:
            t.start()
        with HealthProbe(self.port) as probe:
            time.sleep(seconds)  # the load's duration is the point here
            self.stop.set()
        self.health = probe.seen
        for t in threads:
            t.join(timeout=30)
        return {
            "seconds": seconds,
            "attackers": self.counts,
            "healthz": self.health.summary(),
            "conversation": self.conversation.summary(),
            "attacks": {name: seen.summary() for name, seen in self.attacks.items()},
        }

    def _connect(self, timeout: float = 30) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def _post(self, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    # -- the two clients under test -----------------------------------------------------------
    def _conversation(self) -> None:
        """A user chatting: every turn sends the whole conversation so far; 429s are retried
        after their Retry-After, as the OpenAI clients do."""
        messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
        turn = 0
        while not self.stop.is_set():
            turn += 1
            messages.append({"role": "user", "content": f"Name a colour (turn {turn})."})
            body = {"model": self.model, "messages": messages[-9:], "max_tokens": 8}
            started = time.monotonic()
            outcome, failure = "", None
            for _ in range(60):
                try:
                    status, raw = self._post("/v1/chat/completions", body)
                except OSError as e:
                    outcome, failure = type(e).__name__, f"turn {turn}: {e!r}"
                    break
                outcome = str(status)
                if status == 429:
                    time.sleep(1)
                    continue
                if status != 200:
                    failure = f"turn {turn}: {status} {raw[:300]!r}"
                else:
                    answer = json.loads(raw)["choices"][0]["message"]["content"]
                    messages.append({"role": "assistant", "content": answer})
                break
            else:
                failure = f"turn {turn}: still 429 after 60 tries"
            self.conversation.add(time.monotonic() - started, outcome, failure)

    # -- attackers ----------------------------------------------------------------------------
    def _huge(self) -> None:
        """1 MB prompts, one after another."""
        body = {
            "model": self.model,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": MEGABYTE_PROMPT}],
        }
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status, _ = self._post("/v1/chat/completions", body)
                self.attacks["huge"].add(time.monotonic() - started, str(status))
            except OSError as e:
                self.attacks["huge"].add(time.monotonic() - started, type(e).__name__)

    def _trickle(self, name: str, head: bytes, rest: bytes) -> None:
        """Sends `head` at once, then `rest` a byte every half second, until closed."""
        while not self.stop.is_set():
            started = time.monotonic()
            outcome = "open at the end"
            try:
                with self._connect() as s:
                    s.sendall(head)
                    for byte in rest:
                        if self.stop.wait(0.5):
                            break
                        s.sendall(bytes([byte]))
                    else:
                        s.shutdown(socket.SHUT_WR)
                    if not self.stop.is_set():
                        reply = s.recv(100)
                        outcome = reply.split(b"\r\n")[0].decode() if reply else "closed"
            except OSError as e:
                outcome = type(e).__name__
            self.attacks[name].add(time.monotonic() - started, outcome)

    def _trickle_headers(self) -> None:
        request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 50
        self._trickle("trickle_headers", b"", request)

    def _trickle_bodies(self) -> None:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        self._trickle("trickle_bodies", head, b"{" + b" " * 999)

    def _idle(self) -> None:
        """Connects and sends nothing; reconnects when closed."""
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with self._connect(timeout=1) as s:
                    outcome = "open at the end"
                    while not self.stop.is_set():
                        try:
                            if s.recv(100) == b"":
                                outcome = "closed"
                                break
                        except TimeoutError:
                            continue
            except OSError as e:
                outcome = type(e).__name__
            self.attacks["idle"].add(time.monotonic() - started, outcome)

    def _streams(self) -> None:
        """Long streams, read slowly."""
        body = {
            "model": self.model,
            "stream": True,
            "max_tokens": 400,
            "messages": [{"role": "user", "content": "Write a very long story."}],
        }
        while not self.stop.is_set():
            started = time.monotonic()
            outcome = "?"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request(
                    "POST",
                    "/v1/chat/completions",
                    json.dumps(body),
                    {"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                outcome = str(response.status)
                while not self.stop.is_set() and response.readline():
                    time.sleep(0.02)
                conn.close()
            except OSError as e:
                outcome = type(e).__name__
            self.attacks["streams"].add(time.monotonic() - started, outcome)


SERVER_ENV = {
    "LLMCHAIN_MAX_CONCURRENCY": "8",
    "LLMCHAIN_MAX_BODY_BYTES": "2000000",
    # Raised far above the default, so the 1 MB prompts are tokenized (the worst case for the
    # event loop) and then refused for their tokens.
    "LLMCHAIN_MAX_PROMPT_CHARS": "2000000",
    "LLMCHAIN_HEADER_TIMEOUT_SECONDS": "3",
    "LLMCHAIN_BODY_TIMEOUT_SECONDS": "3",
}
"""The server's settings under the hostile load (test and benchmark alike)."""
