"""Service, ServiceAccount, PodDisruptionBudget and NetworkPolicies of an app."""

from __future__ import annotations

import ipaddress

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders.common import (
    Manifest,
    app_name,
    app_namespace,
    metadata,
    selector_labels,
)
from llmchain_operator.builders.memory import manages_memory, memory_name
from llmchain_operator.builders.model import builds_in_job
from llmchain_operator.builders.retrieval import index_in_job
from llmchain_operator.settings import Settings
from llmchain_server.contract import CACHE_PORT, HTTP_PORT

SERVICE_PORT = 80


def endpoint(app: LLMChainApp, settings: Settings) -> str:
    """The in-cluster URL of the app's HTTP API."""
    return f"http://{app_name(app)}.{app_namespace(app)}.svc.{settings.cluster_domain}"


def build_service(app: LLMChainApp) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(app, "server"),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_service_account(app: LLMChainApp) -> Manifest:
    """The pods' identity. They call no Kubernetes API, so no token is mounted and no Role bound."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(app, app_name(app), "server"),
        "automountServiceAccountToken": False,
    }


def build_pdb(app: LLMChainApp) -> Manifest:
    """At most one server pod down through voluntary disruptions (node drains).

    maxUnavailable rather than minAvailable: with one replica, minAvailable: 1 would block
    every drain for good.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(app, "server")},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_network_policies(app: LLMChainApp) -> list[Manifest]:
    """Server pods accept only their HTTP port (the cache sidecar stays private); the memory
    store accepts only the app's server pods. With tools, server pods also send only to the
    tools' ports (`tool_egress`), DNS and the memory store."""
    spec: Manifest = {
        "podSelector": {"matchLabels": selector_labels(app, "server")},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": HTTP_PORT}]}],
    }
    if app.spec.tools:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = tool_egress(app)
    server = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(app, app_name(app), "server"),
        "spec": spec,
    }
    if not manages_memory(app):
        return [server]
    memory = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(app, memory_name(app), "memory"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(app, "memory")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(app, "server")}}],
                    "ports": [{"protocol": "TCP", "port": CACHE_PORT}],
                }
            ],
        },
    }
    return [server, memory]


EVERYWHERE = ("0.0.0.0/0", "::/0")
METADATA_RANGES = {
    "0.0.0.0/0": ["169.254.0.0/16", "100.100.100.200/32"],
    "::/0": ["fe80::/10", "fd00:ec2::254/128"],
}
"""Left out of "everywhere": link-local (cloud metadata) and the other metadata addresses."""


def _everywhere() -> list[Manifest]:
    return [{"ipBlock": {"cidr": c, "except": METADATA_RANGES[c]}} for c in EVERYWHERE]


EXTERNAL_REDIS_PORTS = (6379, 6380)
"""The external memory store's URL is in a Secret: its usual ports (plain, TLS) are let out."""


def tool_egress(app: LLMChainApp) -> list[Manifest]:
    """Egress of an app with tools: DNS; the memory store; the ports of the URLs the init
    containers download from inside the pod (the model, retrieval's embedding model and
    documents); each tool's port, to the IP or CIDR entries of its
    allowedHosts, or anywhere when it names hosts (NetworkPolicy knows no host names: those are
    checked by the server, on every call, after resolution). Some network plugins (Cilium) do
    not match in-cluster pod addresses with ipBlock rules: there, an in-cluster tool needs its
    own rule beside the operator's."""
    rules: list[Manifest] = [
        {"ports": [{"protocol": p, "port": 53} for p in ("UDP", "TCP")]},
    ]
    if manages_memory(app):
        rules.append(
            {
                "to": [{"podSelector": {"matchLabels": selector_labels(app, "memory")}}],
                "ports": [{"protocol": "TCP", "port": CACHE_PORT}],
            }
        )
    elif app.spec.chain.memory is not None:
        rules.append({"ports": [{"protocol": "TCP", "port": p} for p in EXTERNAL_REDIS_PORTS]})
    downloads = sorted({_port(u) for u in _downloaded_in_pod(app)})
    if downloads:  # the init containers download them
        rules.append(
            {
                "to": _everywhere(),
                "ports": [{"protocol": "TCP", "port": p} for p in downloads],
            }
        )
    for tool in app.spec.tools:
        blocks = [_cidr(h) for h in tool.http.allowed_hosts]
        to = _everywhere() if None in blocks else [{"ipBlock": {"cidr": b}} for b in blocks]
        ports = tool.egress_ports or [_port(tool.http.url)]
        rules.append({"to": to, "ports": [{"protocol": "TCP", "port": p} for p in ports]})
    return rules


def _downloaded_in_pod(app: LLMChainApp) -> list[str]:
    """The URLs the pod's init containers fetch: the model's, and retrieval's embedding model
    and documents when each pod builds its index (a build Job's pods are not selected)."""
    urls = []
    if app.spec.model.source.url is not None and not builds_in_job(app):
        urls.append(app.spec.model.source.url.url)
    retrieval = app.spec.retrieval
    if retrieval is not None and not index_in_job(app):
        for source in (retrieval.embedding_model.source.url, retrieval.documents.url):
            if source is not None:
                urls.append(source.url)
    return urls


def _cidr(entry: str) -> str | None:
    """An allowedHosts entry as a CIDR; None for a host name."""
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        return None


def _port(url: str) -> int:
    """The port of a URL template: its own, or its scheme's (a templated port cannot be known:
    the scheme's is assumed)."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    _, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and not authority.endswith("]"):
        return int(port)
    return 443 if scheme == "https" else 80
