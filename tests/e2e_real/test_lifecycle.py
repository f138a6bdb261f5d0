"""A second local cluster of its own (its own folder, so its own network namespace, addresses and
cgroups): every process SIGKILLed, `up` still succeeds; `down` leaves nothing on the host."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.support.cluster import CLUSTER_SCRIPT, Cluster
from tests.support.realnode import leftovers, node_env

KERNEL_SETTINGS = (
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
)


def _host_state(cluster_dir: Path) -> dict[str, object]:
    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    return {
        "nft tables": run("nft", "list", "tables"),
        "network namespaces": run("ip", "netns", "list"),
        "links": run("ip", "-o", "link", "show"),
        "routes": run("ip", "route", "show"),
        "kernel settings": {k: Path(f"/proc/sys/{k}").read_text() for k in KERNEL_SETTINGS},
        "mounts": [
            m
            for m in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(cluster_dir) in m
        ],
    }


def _cluster(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(CLUSTER_SCRIPT), command], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"cluster.sh {command}:\n{result.stdout}\n{result.stderr}"
    return result


def _every_process(cluster_dir: Path) -> list[int]:
    """The control plane's processes (kwokctl's PID files), the node's (its network
    namespace) and the pods' (the node's cgroups)."""
    pids = {
        int(f.read_text()) for f in (cluster_dir / "clusters" / "llmchain" / "pids").glob("*.pid")
    }
    env = node_env(cluster_dir)
    listed = subprocess.run(
        ["ip", "netns", "pids", env["NETNS"]], capture_output=True, text=True, check=True
    ).stdout
    pids |= {int(p) for p in listed.split()}
    for procs in Path("/sys/fs/cgroup/memory", env["CGROUP_ROOT"]).rglob("cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    return sorted(pids)


def test_sigkilled_cluster_comes_back_up_and_down_leaves_nothing(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "cluster"
    env = {**os.environ, "LLMCHAIN_CLUSTER_DIR": str(cluster_dir)}
    before = _host_state(cluster_dir)

    _cluster("up", env)
    pids = _every_process(cluster_dir)
    assert len(pids) >= 8, pids  # etcd, apiserver, kcm, scheduler, kwok, containerd, kubelet, ...
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert leftovers(cluster_dir), "SIGKILL should leave the namespace, veth and cgroups behind"

    started = _cluster("up", env)
    assert "Ready" in started.stdout
    node = Cluster(cluster_dir / "kubeconfig.yaml").get("node", "real-node-0")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"

    _cluster("down", env)
    assert leftovers(cluster_dir) == ""
    assert _host_state(cluster_dir) == before
