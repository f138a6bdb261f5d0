"""The pod the operator renders for the seed's example, run for real as local processes (see
tests/support/pod.py for the four rewrites a single machine needs): its init step builds the
model from the URL in the example, the cache sidecar and the server start with the rendered
commands, the probes' paths and ports answer 200, and the chain answers."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.support.cluster import ROOT
from tests.support.model import ModelFileServer, gguf_path
from tests.support.pod import LocalPod

EXAMPLE = ROOT / "examples" / "01-qa-chain" / "app.yaml"


def rendered() -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "llmchain_cli", "render", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return list(yaml.safe_load_all(out))


def test_the_rendered_pod_runs_and_answers(tmp_path: Path) -> None:
    docs = rendered()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}  # type: ignore[index]
    files = ModelFileServer(gguf_path())
    pod = LocalPod(deployment, configmaps, tmp_path, proxy=files.url)  # type: ignore[arg-type]
    try:
        pod.start()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert pod.wait_probe("server", probe) == 200
        base = pod.probe_url("server", "readinessProbe").removesuffix("/readyz")
        with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["qa-chain"]
        ask = json.dumps({"input": {"question": "What is the capital of France?"}}).encode()
        answers = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{base}/v1/chains/qa-chain/invoke",
                data=ask,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as r:
                assert r.status == 200
                answers.append(json.loads(r.read())["output"])
        assert answers[0] and answers[0] == answers[1]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "llmchain_cache_hits_total 1.0" in metrics  # the sidecar cached the second ask
        assert 'quantization="int8"' in metrics  # built by the init step as the example says
        assert any(
            "models.llmchain.local" in line
            for line in (tmp_path / "model.log").read_text().splitlines()
        )
    finally:
        codes = pod.stop()
        files.close()
    assert codes[0] == 0  # the server drained and exited cleanly
