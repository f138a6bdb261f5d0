"""Start-up of `llmchain operator`: metrics, leader election, then kopf."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kopf
from kopf._core.engines.peering import Identity

from llmchain_operator import main, metrics
from llmchain_operator.kube import ApiError, Kube
from llmchain_operator.leader import LeaderElector
from llmchain_operator.settings import Settings

LEASE_NAME = "llmchain-operator"


class StartError(RuntimeError):
    """The operator cannot start as configured; the message says what to change."""


log = logging.getLogger("llmchain.operator")


class _Healthz(BaseHTTPRequestHandler):
    """Liveness while standing by (kopf serves it once this replica leads)."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path.startswith("/healthz") else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"standby": true}')

    def log_message(self, format: str, *args: object) -> None:
        pass


def webhook_server(port: int, host: str, cert_dir: str) -> kopf.WebhookServer:
    """HTTPS server for the validating webhook; the API server reaches it at https://HOST:PORT.

    The certificate comes from CERT_DIR (tls.crt, tls.key, ca.crt: e.g. a cert-manager Secret).
    """
    certs = Path(cert_dir)
    return kopf.WebhookServer(
        addr="0.0.0.0",
        port=port,
        host=host or None,
        certfile=str(certs / "tls.crt"),
        pkeyfile=str(certs / "tls.key"),
        cafile=str(certs / "ca.crt"),
    )


def run_operator(
    *,
    namespaces: list[str],
    metrics_port: int,
    liveness_port: int,
    leader_election: bool,
    lease_namespace: str,
    verbose: bool,
    webhook_port: int = 0,
    webhook_host: str = "",
    webhook_cert_dir: str = "",
) -> int:
    """Run until stopped (0) or until leadership is lost (1: restart as a standby)."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    if not verbose:  # one line per handled event is noise at this scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics.serve(metrics_port)
    settings = Settings.from_env()
    stop, lost = threading.Event(), threading.Event()
    memo = main.run_memo(settings, stop_flag=stop, namespaces=namespaces)
    if webhook_port:
        memo.webhook = webhook_server(webhook_port, webhook_host, webhook_cert_dir)
        main.enable_webhook()
    identity = _identity()
    _stop_on_signals(stop)
    elector = None
    if leader_election:
        elector = _elector(settings, lease_namespace, identity)
        if not _wait_for_leadership(elector, stop, liveness_port):
            log.info("Stopped while standing by")
            return 0
        memo.background.append(_lease_guard(elector, lost, stop))
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        identity=Identity(identity),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
        stop_flag=stop,
        memo=memo,
    )
    if lost.is_set():
        log.error("Stopped after losing leadership; exiting to restart as a standby")
        return 1
    if elector is not None:
        asyncio.run(elector.release())
    return 0


def _lease_guard(
    elector: LeaderElector, lost: threading.Event, stop: threading.Event
) -> main.Background:
    """Keeps the Lease while kopf runs; when it cannot, flags the loss and stops kopf."""

    async def guard() -> None:
        await elector.keep()
        lost.set()
        stop.set()

    return guard


def _identity() -> str:
    """Given, not detected: kopf's detection asks the password database for the user name, and
    a container's uid (10001) has no entry there."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _stop_on_signals(stop: threading.Event) -> None:
    """Until kopf installs its own handlers, SIGTERM/SIGINT set the stop flag: a replica told
    to stop right after winning the lease (a rolling update does that) still returns through
    kopf and releases the lease, instead of dying with it and leaving a gap of a lease period."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _elector(settings: Settings, lease_namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(
        Kube.from_environment(settings.field_manager),
        lease_namespace,
        LEASE_NAME,
        identity,
        lease_seconds=settings.lease_seconds,
        renew_every=settings.lease_seconds / 3,
    )


def _wait_for_leadership(elector: LeaderElector, stop: threading.Event, liveness_port: int) -> bool:
    """Stand by until this replica holds the Lease (True) or is told to stop (False), answering
    liveness probes meanwhile."""
    standby = ThreadingHTTPServer(("0.0.0.0", liveness_port), _Healthz)
    threading.Thread(target=standby.serve_forever, daemon=True).start()
    try:
        return asyncio.run(elector.acquire(stop))
    except ApiError as error:
        if error.status == 404 and "namespaces" in error.message:
            namespace = elector.namespace
            raise StartError(
                f"the leader Lease's namespace {namespace!r} does not exist: create it "
                f"(kubectl create namespace {namespace}), name another with --lease-namespace "
                "(or POD_NAMESPACE), or run one replica with --no-leader-election"
            ) from None
        raise
    finally:
        standby.shutdown()
        standby.server_close()
