"""The second half of `make demo`: run the pod the operator applied for the demo app as local
processes (KWOK runs no containers), then ask it the seed's question through the chain endpoint
and through the `openai` client, show the cache hit and a few live metrics.

    python hack/demo_pod.py KUBECONFIG NAMESPACE APP
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.model import ModelFileServer, gguf_path  # noqa: E402
from tests.support.pod import LocalPod  # noqa: E402

WORKDIR = ROOT / ".cluster" / "demo-pod"
QUESTION = "What is the capital of France?"


def say(text: str) -> None:
    print(text, flush=True)


def kubectl_get(kubeconfig: str, namespace: str, kind: str, name: str) -> dict[str, object]:
    out = subprocess.run(
        [
            str(ROOT / ".toolchain" / "bin" / "kubectl"),
            "--kubeconfig",
            kubeconfig,
            "-n",
            namespace,
            "get",
            kind,
            name,
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return yaml.safe_load(out)  # type: ignore[no-any-return]


def post(url: str, payload: dict[str, object]) -> tuple[float, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=300) as r:
        body = json.loads(r.read())
    return time.monotonic() - started, body


def main() -> None:
    kubeconfig, namespace, app = sys.argv[1:4]
    say("\n== The pod, run for real")
    say(
        "KWOK runs no containers: the Ready pod the cluster reports is simulated. The server, its\n"
        "cache sidecar and its model init step now run here as local processes, from the\n"
        "Deployment and ConfigMap the operator applied (see tests/support/pod.py)."
    )
    deployment = kubectl_get(kubeconfig, namespace, "deployment", app)
    chain_cm = kubectl_get(kubeconfig, namespace, "configmap", f"{app}-chain")
    subprocess.run([sys.executable, str(ROOT / "hack" / "demo_pod.py"), "--stop"], check=False)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    files = ModelFileServer(gguf_path())  # answers for the model URL's host, as an HTTP proxy
    pod = LocalPod(deployment, {f"{app}-chain": chain_cm}, WORKDIR, proxy=files.url, say=say)
    try:
        pod.start()
    finally:
        files.close()
        (WORKDIR / "pids").write_text("\n".join(map(str, pod.pids())) + "\n")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pod.wait_probe("server", probe)
        say(f"  {probe}: {pod.probe_url('server', probe)} → 200")
    base = pod.probe_url("server", "readinessProbe").removesuffix("/readyz")

    say(f"\n== Asking {QUESTION!r}")
    chain_url = f"{base}/v1/chains/{app}/invoke"
    first, answer = post(chain_url, {"input": {"question": QUESTION}})
    say(f"chain endpoint  POST {chain_url}\n  → {answer['output']!r}  ({first * 1000:.0f} ms)")
    again, repeat = post(chain_url, {"input": {"question": QUESTION}})
    say(
        f"the same ask again (temperature 0, so cacheable): {again * 1000:.0f} ms from the cache "
        f"sidecar, same answer: {repeat['output'] == answer['output']}"
    )
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    model = client.models.list().data[0].id
    started = time.monotonic()
    # The seed's prompt as a chat message: the same words the chain's template renders.
    reply = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=48,
        messages=[{"role": "user", "content": f"Question: {QUESTION}\nAnswer:"}],
    )
    say(
        f"openai client   chat.completions model={model}\n"
        f"  → {reply.choices[0].message.content!r}  "
        f"({(time.monotonic() - started) * 1000:.0f} ms)"
    )

    say("\n== Live metrics (GET /metrics)")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if (
                line.startswith(
                    (
                        "llmchain_requests_total",
                        "llmchain_cache_",
                        "llmchain_model_info",
                        "llmchain_generated_tokens_total",
                        "llmchain_time_to_first_token_seconds_count",
                        "llmchain_time_to_first_token_seconds_sum",
                    )
                )
                and "_created" not in line
            ):
                say(f"  {line}")
    say(
        f"\nThe pod keeps running at {base} (logs in {WORKDIR}); `make demo-down` stops "
        "everything the demo started."
    )


def stop() -> None:
    pids = WORKDIR / "pids"
    if not pids.exists():
        return
    for pid in pids.read_text().split():
        subprocess.run(["kill", pid], check=False, capture_output=True)
    pids.unlink()


if __name__ == "__main__":
    if sys.argv[1:] == ["--stop"]:
        stop()
    else:
        main()
