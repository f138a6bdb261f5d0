"""The real node: pods really run (containerd, runc, CNI), with the restricted security context
enforced by the kernel, cluster DNS from CoreDNS, Services through kube-proxy (nftables), and
traffic both ways between the API server and pods; the fake KWOK nodes take only pods that
tolerate them; nothing is added to the host's firewall."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cluster import FAKE_NODES_TAINT, TOOLBIN, Cluster, wait_for
from tests.support.realnode import (
    NODE_NAME,
    NODE_SCRIPT,
    node_env,
    pod_manifest,
    run_pod,
    start_pod,
)

# A tiny HTTPS server for the API server to call: an aggregated API (probe.llmchain.io/v1), a
# validating webhook (denies objects labelled probe=deny) and /healthz for the Service proxy.
PROBE_SERVER = textwrap.dedent(
    """
    import http.server, json, ssl
    GROUP = {"name": "probe.llmchain.io", "versions": [{"groupVersion": "probe.llmchain.io/v1",
             "version": "v1"}], "preferredVersion": {"groupVersion": "probe.llmchain.io/v1",
             "version": "v1"}}
    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            if self.path.startswith("/apis/probe.llmchain.io/v1"):
                self.reply({"kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": "probe.llmchain.io/v1", "resources": []})
            elif self.path.startswith("/apis/probe.llmchain.io"):
                self.reply({"kind": "APIGroup", "apiVersion": "v1", **GROUP})
            elif self.path.startswith("/apis"):
                self.reply({"kind": "APIGroupList", "apiVersion": "v1", "groups": [GROUP]})
            else:
                self.reply({"served": "by a pod", "path": self.path})
        def do_POST(self):
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = review["request"]
            labels = request["object"].get("metadata", {}).get("labels") or {}
            allowed = labels.get("probe") != "deny"
            self.reply({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "response": {"uid": request["uid"], "allowed": allowed,
                                     "status": {"message": "denied by the in-cluster webhook"}}})
    server = http.server.ThreadingHTTPServer(("", 8443), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    """
)


def test_the_real_node_runs_containerd_and_the_fake_nodes_are_tainted(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.get("nodes")["items"]}
    real = nodes[NODE_NAME]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    ready = {c["type"]: c["status"] for c in real["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # examples/03-edge-cpu selects the edge label: on this cluster it lands on the real node.
    assert real["metadata"]["labels"]["node-role.llmchain.io/edge"] == "true"
    assert real["status"]["addresses"][0]["address"] == node_env()["NODE_IP"]
    fake = [n for name, n in nodes.items() if name != NODE_NAME]
    assert fake, "the KWOK fake nodes are missing"
    for node in fake:
        taints = node["spec"].get("taints", [])
        assert {k: FAKE_NODES_TAINT[k] for k in ("key", "value", "effect")} in [
            {k: t.get(k) for k in ("key", "value", "effect")} for t in taints
        ], node["metadata"]["name"]


def test_a_restricted_pod_really_runs_on_the_real_node(
    cluster: Cluster, real_namespace: str
) -> None:
    script = textwrap.dedent(
        """
        import os
        print("uid", os.getuid(), "gid", os.getgid())
        print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
        try:
            open("/written", "w")
        except OSError as e:
            print("root filesystem:", e.strerror)
        open("/scratch/ok", "w").write("x")
        print("volume: writable")
        """
    )
    manifest = pod_manifest(
        "restricted",
        ["python3", "-c", script],
        extra={"volumes": [{"name": "scratch", "emptyDir": {}}]},
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
    )
    pod, logs = run_pod(cluster, real_namespace, manifest)
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert "uid 10001 gid 10001" in logs
    assert "0000000000000000" in logs  # no effective capabilities
    assert "root filesystem: Read-only file system" in logs
    assert "volume: writable" in logs


def test_cluster_dns_serves_the_cluster_and_test_host_names_and_forwards_nothing(
    cluster: Cluster, real_namespace: str
) -> None:
    # A Service named `models` in llmchain-hosts answers as models.llmchain.local.
    cluster.kubectl(
        "-n",
        "llmchain-hosts",
        "create",
        "service",
        "clusterip",
        f"dns-{real_namespace[-6:]}",
        "--tcp=80:8080",
    )
    try:
        ip = cluster.get("-n", "llmchain-hosts", "service", f"dns-{real_namespace[-6:]}")["spec"][
            "clusterIP"
        ]
        script = textwrap.dedent(
            f"""
            import socket
            for name in ["kubernetes.default.svc.cluster.local", "kube-dns.kube-system",
                         "dns-{real_namespace[-6:]}.llmchain.local", "pypi.org"]:
                try:
                    print(name, socket.gethostbyname(name))
                except OSError as e:
                    print(name, "unresolved")
            """
        )
        _, logs = run_pod(cluster, real_namespace, pod_manifest("dns", ["python3", "-c", script]))
    finally:
        cluster.kubectl(
            "-n", "llmchain-hosts", "delete", "service", f"dns-{real_namespace[-6:]}", check=False
        )
    answers = dict(line.split() for line in logs.splitlines())
    assert answers["kubernetes.default.svc.cluster.local"] == "10.96.0.1"
    assert answers["kube-dns.kube-system"] == node_env()["DNS_IP"]
    assert answers[f"dns-{real_namespace[-6:]}.llmchain.local"] == ip
    assert answers["pypi.org"] == "unresolved"


def test_pods_reach_services_and_the_api_and_the_api_reaches_pods(
    cluster: Cluster, real_namespace: str, tmp_path: Path
) -> None:
    service = f"probe.{real_namespace}.svc"
    cert, key = _self_signed(tmp_path, service)
    cluster.kubectl(
        "-n", real_namespace, "create", "secret", "tls", "probe", f"--cert={cert}", f"--key={key}"
    )
    cluster.kubectl(
        "-n",
        real_namespace,
        "create",
        "configmap",
        "probe",
        f"--from-literal=server.py={PROBE_SERVER}",
    )
    manifest = pod_manifest(
        "probe",
        ["python3", "/code/server.py"],
        restart="Always",
        extra={
            "volumes": [
                {"name": "tls", "secret": {"secretName": "probe"}},
                {"name": "code", "configMap": {"name": "probe"}},
            ]
        },
        container={
            "volumeMounts": [
                {"name": "tls", "mountPath": "/tls", "readOnly": True},
                {"name": "code", "mountPath": "/code", "readOnly": True},
            ],
            "ports": [{"containerPort": 8443, "name": "https"}],
            "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
        },
    )
    manifest["metadata"]["labels"] = {"app": "probe"}
    pod = start_pod(cluster, real_namespace, manifest)
    cluster.kubectl(
        "-n", real_namespace, "create", "service", "clusterip", "probe", "--tcp=443:8443"
    )

    # A pod reaches the probe through its Service (kube-proxy) and the API through `kubernetes`.
    client = textwrap.dedent(
        f"""
        import json, ssl, urllib.request
        account = "/var/run/secrets/kubernetes.io/serviceaccount"
        tls = ssl.create_default_context(cafile=account + "/ca.crt")
        token = open(account + "/token").read()
        request = urllib.request.Request("https://kubernetes.default.svc/version",
                                         headers={{"Authorization": "Bearer " + token}})
        print("api", json.load(urllib.request.urlopen(request, context=tls))["gitVersion"])
        insecure = ssl._create_unverified_context()
        reply = urllib.request.urlopen("https://{service}/hello", context=insecure)
        print("service", reply.read().decode())
        """
    )
    _, logs = run_pod(cluster, real_namespace, pod_manifest("client", ["python3", "-c", client]))
    version = cluster.kubectl("version", "-o", "json").stdout
    assert f"api {json.loads(version)['serverVersion']['gitVersion']}" in logs
    assert '"path": "/hello"' in logs

    # The API server reaches the pod: the Service proxy, an aggregated API, a webhook.
    proxied = cluster.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{real_namespace}/services/https:probe:443/proxy/x"
    ).stdout
    assert json.loads(proxied) == {"served": "by a pod", "path": "/x"}
    ca = base64.b64encode(cert.read_bytes()).decode()
    group = "v1.probe.llmchain.io"
    webhook = f"probe-{real_namespace}"
    try:
        _apply(
            cluster,
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": group},
                "spec": {
                    "group": "probe.llmchain.io",
                    "version": "v1",
                    "service": {"namespace": real_namespace, "name": "probe", "port": 443},
                    "caBundle": ca,
                    "groupPriorityMinimum": 1000,
                    "versionPriority": 10,
                },
            },
        )

        def available() -> bool:
            conditions = cluster.get("apiservice", group)["status"].get("conditions", [])
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        wait_for(available, timeout=60, what="the aggregated API to be Available")
        listed = json.loads(cluster.kubectl("get", "--raw", "/apis/probe.llmchain.io/v1").stdout)
        assert listed["groupVersion"] == "probe.llmchain.io/v1"

        _apply(
            cluster,
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": webhook},
                "webhooks": [
                    {
                        "name": "probe.llmchain.io",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": real_namespace}
                        },
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ],
                        "clientConfig": {
                            "service": {
                                "namespace": real_namespace,
                                "name": "probe",
                                "port": 443,
                                "path": "/validate",
                            },
                            "caBundle": ca,
                        },
                    }
                ],
            },
        )
        allowed = cluster.kubectl("-n", real_namespace, "create", "configmap", "fine")
        assert allowed.returncode == 0
        denied = _create_labelled_configmap(cluster, real_namespace)
        assert denied.returncode != 0
        assert "denied by the in-cluster webhook" in denied.stderr
    finally:
        cluster.kubectl("delete", "apiservice", group, "--ignore-not-found", check=False)
        cluster.kubectl(
            "delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found", check=False
        )
    assert pod["spec"]["nodeName"] == NODE_NAME


def test_logs_exec_and_port_forward_reach_the_real_containers(
    cluster: Cluster, real_namespace: str
) -> None:
    manifest = pod_manifest(
        "web",
        ["python3", "-m", "http.server", "8080", "--directory", "/srv"],
        restart="Always",
        extra={"volumes": [{"name": "srv", "emptyDir": {}}]},
        container={
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
    )
    start_pod(cluster, real_namespace, manifest)
    cluster.kubectl(
        "-n", real_namespace, "exec", "web", "--", "sh", "-c", "echo from-exec > /srv/index.html"
    )
    with subprocess.Popen(
        [
            str(TOOLBIN / "kubectl"),
            "-n",
            real_namespace,
            "port-forward",
            "pod/web",
            ":8080",
        ],
        env=cluster.env,
        stdout=subprocess.PIPE,
        text=True,
    ) as forward:
        try:
            assert forward.stdout is not None
            line = forward.stdout.readline()  # Forwarding from 127.0.0.1:PORT -> 8080
            port = int(line.split("127.0.0.1:")[1].split()[0])
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10).read()
            assert body == b"from-exec\n"
        finally:
            forward.terminate()
    logs = cluster.kubectl("-n", real_namespace, "logs", "web").stdout
    assert '"GET /index.html HTTP/1.1" 200' in logs


def test_the_host_firewall_and_kernel_settings_are_untouched(cluster: Cluster) -> None:
    """All of the cluster's rules live in the node's network namespace."""
    tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert "kube-proxy" not in tables and "cni" not in tables, tables
    inside = subprocess.run(
        [str(NODE_SCRIPT), "exec", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "kube-proxy" in inside
    # The kubelet reads these kernel settings from files shadowing them in the node's mount
    # namespace (it would write them otherwise); the lifecycle test checks the host's values.
    shadowed = subprocess.run(
        [
            str(NODE_SCRIPT),
            "exec",
            "cat",
            "/proc/sys/vm/overcommit_memory",
            "/proc/sys/kernel/panic",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shadowed == ["1", "10"]


def _self_signed(tmp: Path, host: str) -> tuple[Path, Path]:
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _create_labelled_configmap(
    cluster: Cluster, namespace: str
) -> subprocess.CompletedProcess[str]:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "refused", "labels": {"probe": "deny"}},
    }
    return cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=json.dumps(manifest), check=False
    )
