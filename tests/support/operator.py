"""The operator as a real process, authenticated as its own ServiceAccount (the chart's RBAC)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cluster import ROOT, Cluster
from tests.support.redis import free_port

LLMCHAIN = ROOT / ".venv" / "bin" / "llmchain"


def install_operator_identity(cluster: Cluster, workdir: Path) -> Path:
    """Apply the CRD and the operator's RBAC; return a kubeconfig holding the SA's token."""
    path = workdir / "operator-kubeconfig.yaml"
    subprocess.run(
        [str(ROOT / "hack" / "operator.sh"), "identity", str(path)],
        check=True,
        env=cluster.env,
        timeout=120,
    )
    return path


def _die_with_parent() -> None:
    """Linux: SIGTERM the operator when the test process dies, so none is left running to
    compete for the leader lease in a later run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class OperatorProcess:
    """`llmchain operator` started with the ServiceAccount's kubeconfig; restartable."""

    kubeconfig: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    liveness_port: int = 0
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port, self.liveness_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        self.process = subprocess.Popen(
            [
                str(LLMCHAIN),
                "operator",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                *self.args,
            ],
            env=env,
            preexec_fn=_die_with_parent,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log.read_text()[-3000:]}")
            if self.alive():
                return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"operator not live after 60s: {self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
