"""A load client that runs inside the cluster (a Job's pod, from the server image: Python's
standard library only), against an app's Service, for the autoscaling tests and `make demo`.

    python load_client.py URL MODEL HIGH LOW [PHASE_DIR]

Keeps HIGH requests in flight (unique prompts, so the response cache answers none of them) until
the file PHASE_DIR/low exists, then LOW requests until PHASE_DIR/stop exists; the test moves the
phases with `kubectl exec ... touch`. Every request opens its own connection (no idle keep-alive
connection can meet a pod that is shutting down: a refused or reset connection is a real
failure, never retried). Prints one JSON line per 5 s of progress and, on stop, a summary:
requests finished and failed per phase, and the first failures' messages.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any


class Load:
    def __init__(self, url: str, model: str, phase_dir: str) -> None:
        self.url, self.model, self.phase_dir = url, model, phase_dir
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.failures: list[str] = []
        self.serial = 0

    def phase(self) -> str:
        for name in ("stop", "low"):
            if os.path.exists(os.path.join(self.phase_dir, name)):
                return name
        return "high"

    def record(self, phase: str, ok: bool, failure: str = "") -> None:
        with self.lock:
            counts = self.counts.setdefault(phase, {"ok": 0, "failed": 0})
            counts["ok" if ok else "failed"] += 1
            if failure and len(self.failures) < 20:
                self.failures.append(f"{phase}: {failure}")

    def one(self, phase: str) -> bool:
        with self.lock:
            self.serial += 1
            serial = self.serial
        body = json.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "user", "content": f"Request {serial}: count from one to twenty."}
                ],
                "max_tokens": 48,
                "temperature": 0.7,
                "seed": serial,
            }
        ).encode()
        request = urllib.request.Request(
            self.url, body, {"Content-Type": "application/json", "Connection": "close"}
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                answer = json.load(reply)
            if not answer.get("choices"):
                self.record(phase, False, f"no choices: {str(answer)[:200]}")
                return False
            self.record(phase, True)
            return True
        except urllib.error.HTTPError as error:
            self.record(phase, False, f"HTTP {error.code}: {error.read()[:200]!r}")
        except Exception as error:  # a cut, refused or timed-out request is a failure
            self.record(phase, False, f"{type(error).__name__}: {error}")
        return False

    def worker(self, index: int, high: int, low: int) -> None:
        while True:
            phase = self.phase()
            if phase == "stop":
                return
            if index >= (high if phase == "high" else low):
                time.sleep(0.2)
                continue
            if not self.one(phase):
                time.sleep(1)  # counted; no failure storm

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": json.loads(json.dumps(self.counts)), "failures": list(self.failures)}


def main() -> None:
    url, model, high, low = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    phase_dir = sys.argv[5] if len(sys.argv) > 5 else "/tmp"
    load = Load(url, model, phase_dir)
    threads = [
        threading.Thread(target=load.worker, args=(i, high, low), daemon=True)
        for i in range(max(high, low))
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        progress = {"t": round(time.monotonic() - started), "phase": load.phase()}
        print(json.dumps({**progress, **load.summary()["counts"]}), flush=True)
    print("SUMMARY " + json.dumps(load.summary()), flush=True)


if __name__ == "__main__":
    main()
