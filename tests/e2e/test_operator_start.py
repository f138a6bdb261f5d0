"""`llmchain operator` started the way kopf users start operators during development: from a
shell, against a cluster where the chart was never installed."""

from __future__ import annotations

import subprocess

from tests.support.cluster import Cluster
from tests.support.operator import LLMCHAIN
from tests.support.redis import free_port


def test_a_missing_lease_namespace_is_one_clear_line(cluster: Cluster) -> None:
    result = subprocess.run(
        [
            str(LLMCHAIN),
            "operator",
            "--lease-namespace",
            "no-such-namespace",
            "--metrics-port",
            str(free_port()),
            "--liveness-port",
            str(free_port()),
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "Error: the leader Lease's namespace 'no-such-namespace' does not exist"
    ), last
    assert "--lease-namespace" in last and "--no-leader-election" in last
