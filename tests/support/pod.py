"""Run a rendered pod as local processes: what KWOK cannot show (it marks pods Ready without
running them). The containers' commands, arguments, environment and mounted files are the
rendered ones, with four rewrites a single machine needs, each named here:
  - mount paths map to folders under `workdir` (a ConfigMap volume becomes its files);
  - container ports map to free local ports (in arguments and URLs too), so tests can run side
    by side; the probes are checked on the mapped ports;
  - the cache sidecar's `valkey-server` runs as Debian's `redis-server` (same protocol, same
    arguments);
  - the model URL's host (cluster DNS) is reached through `http_proxy`, pointing at a local
    HTTP server that serves the wheel's GGUF: the URL itself is untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.redis import free_port

Manifest = dict[str, Any]
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class LocalPod:
    deployment: Manifest
    configmaps: dict[str, Manifest]
    workdir: Path
    proxy: str | None = None
    ports: dict[int, int] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    say: Any = print

    @property
    def spec(self) -> Manifest:
        return self.deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]

    # -- rewrites ----------------------------------------------------------------------------
    def _mounts(self, container: Manifest) -> dict[str, Path]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mapped: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            local = self.workdir / "volumes" / mount["name"]
            if not local.exists():
                local.mkdir(parents=True)
                source = volumes[mount["name"]]
                if "configMap" in source:
                    data = self.configmaps[source["configMap"]["name"]]["data"]
                    for key, text in data.items():
                        (local / key).write_text(text)
            mapped[mount["mountPath"]] = local
        return mapped

    def _port(self, port: int) -> int:
        if port not in self.ports:
            self.ports[port] = free_port()
        return self.ports[port]

    def _rewrite(self, text: str, mounts: dict[str, Path], env: dict[str, str]) -> str:
        text = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)
        for path in sorted(mounts, key=len, reverse=True):
            if text == path or text.startswith(path + "/"):
                return str(mounts[path]) + text[len(path) :]
        for port, local in self.ports.items():
            text = re.sub(rf"(127\.0\.0\.1|localhost):{port}\b", rf"\g<1>:{local}", text)
        return text

    def _command(self, container: Manifest) -> tuple[list[str], dict[str, str]]:
        for p in container.get("ports", []):
            self._port(p["containerPort"])
        mounts = self._mounts(container)
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "resourceFieldRef" in item:  # no limit set: the node's CPUs, as Kubernetes does
                env[item["name"]] = str(os.cpu_count() or 1)
        env = {k: self._rewrite(v, mounts, env) for k, v in env.items()}
        args = [*container.get("command", []), *container.get("args", [])]
        args = [self._rewrite(a, mounts, env) for a in args]
        ports = {str(k): str(v) for k, v in self.ports.items()}
        args = [ports.get(a, a) if i and args[i - 1] == "--port" else a for i, a in enumerate(args)]
        if container["name"] == "cache":  # the image's entrypoint is its server binary
            args = [shutil.which("redis-server") or "redis-server", *args]
        elif args[0] == "llmchain":
            args = [sys.executable, "-m", "llmchain_cli", *args[1:]]
        return args, env

    # -- running -----------------------------------------------------------------------------
    def _start(
        self, container: Manifest, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        args, env = self._command(container)
        log = (self.workdir / f"{container['name']}.log").open("ab")
        self.say(f"started container {container['name']}: {' '.join(args[:6])} …")
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, **(extra_env or {})},
            cwd=self.workdir,
        )
        self.processes.append(process)
        return process

    def start(self, timeout: float = 300) -> None:
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":  # a native sidecar: keeps running
                self._start(container)
                self._wait_tcp(self._port(container["ports"][0]["containerPort"]))
                continue
            proxy = (
                {"http_proxy": self.proxy, "no_proxy": "127.0.0.1,localhost"} if self.proxy else {}
            )
            code = self._follow(container["name"], self._start(container, proxy), timeout)
            if code != 0:
                raise RuntimeError(
                    f"init container {container['name']} exited {code}: "
                    f"{self.logs(container['name'])}"
                )
        for container in self.spec["containers"]:
            self._start(container)

    def _follow(self, name: str, process: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for an init container, passing its progress lines on through `say`."""
        deadline = time.monotonic() + timeout
        shown = 0
        while True:
            code = process.poll()
            lines = self.logs(name).splitlines()
            for line in lines[shown:]:
                self.say(f"  {name}| {line}")
            shown = len(lines)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                process.kill()
                return process.wait()
            time.sleep(0.5)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def probe_url(self, container: str, probe: str) -> str:
        spec = next(c for c in self.spec["containers"] if c["name"] == container)
        get = spec[probe]["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in spec["ports"] if p["name"] == port)
        return f"http://127.0.0.1:{self._port(port)}{get['path']}"

    def wait_probe(self, container: str, probe: str, timeout: float = 180) -> int:
        url = self.probe_url(container, probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return 200
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(
            f"{probe} of {container} ({url}) never answered 200: {self.logs(container)}"
        )

    @staticmethod
    def _wait_tcp(port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on port {port}")

    def logs(self, container: str) -> str:
        path = self.workdir / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> list[int | None]:
        for p in reversed(self.processes):
            if p.poll() is None:
                p.terminate()
        codes = []
        for p in reversed(self.processes):
            try:
                codes.append(p.wait(timeout=60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes
