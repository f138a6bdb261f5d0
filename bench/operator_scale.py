"""Operator scale benchmark: N LLMChainApps created at once, time until all are Ready.

The reference, in the same run, is `kubectl apply --server-side` of the same child objects
pre-rendered by `llmchain render` (rendering is not timed), until all their Deployments are
ready. The ratio of the two is the operator's overhead. Also recorded: the operator's peak RSS.

    python bench/operator_scale.py [--sizes 100 500 1000] [--out bench/results/operator_scale.json]

Needs the local cluster (`make cluster-up`); stops a demo operator if one runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import Cluster, create_namespace, start_cluster  # noqa: E402
from tests.support.operator import OperatorProcess, install_operator_identity  # noqa: E402

QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
LLMCHAIN = ROOT / ".venv" / "bin" / "llmchain"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def apps_yaml(count: int) -> str:
    docs = []
    for index in range(count):
        app = copy.deepcopy(QA)
        app["metadata"]["name"] = f"app-{index:04d}"
        docs.append(yaml.safe_dump(app))
    return "---\n".join(docs)


def fresh_namespace(cluster: Cluster, name: str) -> None:
    cluster.kubectl(
        "delete", "namespace", name, "--ignore-not-found", "--wait=true", "--timeout=300s"
    )
    # The operator's pods are never run: KWOK's fake nodes turn them Ready.
    create_namespace(cluster, name, fake_nodes=True)


def count_ready_apps(cluster: Cluster, namespace: str) -> int:
    ready = 0
    for app in cluster.get("-n", namespace, "lca")["items"]:
        for cond in app.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready += 1
    return ready


def count_ready_deployments(cluster: Cluster, namespace: str) -> int:
    items = cluster.get("-n", namespace, "deployments")["items"]
    return sum(1 for d in items if d.get("status", {}).get("readyReplicas", 0) >= 1)


def wait_all(count: int, probe: Any, what: str, timeout: float = 1800) -> float:
    start = time.monotonic()
    last_report = start
    while True:
        done = probe()
        if done >= count:
            return time.monotonic() - start
        now = time.monotonic()
        if now - last_report >= 10:
            say(f"  {what}: {done}/{count} after {now - start:.0f}s")
            last_report = now
        if now - start > timeout:
            raise TimeoutError(f"{what}: only {done}/{count} after {timeout}s")
        time.sleep(1)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counters(operator: OperatorProcess) -> dict[str, float]:
    """The operator's reconciles (all results) and echo-skipped ones so far, from /metrics."""
    out = {"reconciles": 0.0, "echoes": 0.0}
    for line in operator.metrics().splitlines():
        if line.startswith("llmchain_operator_reconciles_total{"):
            out["reconciles"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("llmchain_operator_child_echoes_total "):
            out["echoes"] = float(line.rsplit(" ", 1)[1])
    return out


def run_size(cluster: Cluster, operator: OperatorProcess, count: int, work: Path) -> dict[str, Any]:
    manifests = apps_yaml(count)
    (work / f"apps-{count}.yaml").write_text(manifests)

    ref_ns = f"bench-ref-{count}"
    fresh_namespace(cluster, ref_ns)
    rendered = subprocess.run(
        [str(LLMCHAIN), "render", str(work / f"apps-{count}.yaml"), "-n", ref_ns],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (work / f"children-{count}.yaml").write_text(rendered)
    objects = sum(1 for d in yaml.safe_load_all(rendered) if d)
    say(f"N={count}: reference, kubectl apply --server-side of {objects} pre-rendered objects")
    start = time.monotonic()
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=bench-reference",
        "-f",
        str(work / f"children-{count}.yaml"),
    )
    applied = time.monotonic() - start
    reference = applied + wait_all(
        count, lambda: count_ready_deployments(cluster, ref_ns), "reference Deployments ready"
    )
    say(f"N={count}: reference ready in {reference:.1f}s (apply {applied:.1f}s)")
    cluster.kubectl("delete", "namespace", ref_ns, "--wait=false")

    op_ns = f"bench-op-{count}"
    fresh_namespace(cluster, op_ns)
    say(f"N={count}: operator, {count} LLMChainApps applied at once")
    before = counters(operator)
    start = time.monotonic()
    cluster.kubectl("-n", op_ns, "apply", "--server-side", "-f", str(work / f"apps-{count}.yaml"))
    operator_seconds = wait_all(count, lambda: count_ready_apps(cluster, op_ns), "apps Ready")
    say(f"N={count}: operator ready in {operator_seconds:.1f}s")
    rss = peak_rss_mib(operator.process.pid) if operator.process else float("nan")
    after = counters(operator)
    cluster.kubectl("delete", "namespace", op_ns, "--wait=false")
    return {
        "apps": count,
        "child_objects": objects,
        "operator_seconds_to_all_ready": round(operator_seconds, 2),
        "reference_seconds_to_all_ready": round(reference, 2),
        "overhead_ratio": round(operator_seconds / reference, 2),
        "operator_peak_rss_mib": round(rss, 1),
        # until all were Ready: reconciles run, and reconciles skipped (every child event that
        # asked for one only reported the operator's own write)
        "reconciles_per_app": round((after["reconciles"] - before["reconciles"]) / count, 2),
        "echo_skips_per_app": round((after["echoes"] - before["echoes"]) / count, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/operator_scale.json")
    args = parser.parse_args()

    cluster, _ = start_cluster()
    subprocess.run([str(ROOT / "hack/operator.sh"), "stop"], check=True)
    # Both sides apply the same objects, ServiceMonitors and PrometheusRules included.
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / ".toolchain" / "crds")
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        operator = OperatorProcess(install_operator_identity(cluster, work), work)
        operator.start()
        try:
            results = [run_size(cluster, operator, n, work) for n in args.sizes]
        finally:
            operator.stop()
    report = {
        "benchmark": "operator_scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "kubernetes": json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"][
            "gitVersion"
        ],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {args.out}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
