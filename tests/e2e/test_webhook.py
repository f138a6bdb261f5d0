"""The validating admission webhook rejects what the schema cannot check, at apply time."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OPERATOR_ENV
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.operator import OperatorProcess
from tests.support.redis import free_port

QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
WEBHOOK_CONFIG = "llmchainapps.llmchain.io"


def make_certificates(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, as cert-manager would put in a Secret."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=llmchain-webhook-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "tls.crt",
    )


@pytest.fixture
def webhook(
    cluster: Cluster, operator: OperatorProcess, app_namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """A second operator process, serving only the webhook for this test's namespace."""
    make_certificates(tmp_path)
    process = OperatorProcess(
        operator.kubeconfig,
        tmp_path,
        env=OPERATOR_ENV,
        args=[
            "--no-leader-election",
            "--namespace",
            app_namespace,
            "--webhook-port",
            str(free_port()),
            "--webhook-host",
            "127.0.0.1",
            "--webhook-cert-dir",
            str(tmp_path),
        ],
    )
    process.start()
    try:
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "validatingwebhookconfiguration", WEBHOOK_CONFIG, check=False
                ).returncode
                == 0
            ),
            timeout=30,
            what="the webhook configuration",
        )
        yield process
    finally:
        process.stop()
    cluster.kubectl(
        "delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "--ignore-not-found"
    )


def apply(
    cluster: Cluster, namespace: str, app: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(app), check=False)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "{{ question }} {{ context }}",
            "spec.chain.steps[0].prompt: uses undeclared variable 'context'",
        ),
        ("{{ question ", "spec.chain.steps[0].prompt: template syntax error on line 1"),
        ("{% for x in question %}", "spec.chain.steps[0].prompt: template syntax error"),
    ],
    ids=["undeclared-variable", "unclosed-expression", "unclosed-block"],
)
def test_webhook_rejects_bad_templates_naming_the_field(
    cluster: Cluster, webhook: OperatorProcess, app_namespace: str, prompt: str, expected: str
) -> None:
    bad = copy.deepcopy(QA)
    bad["spec"]["chain"]["steps"][0]["prompt"] = prompt
    result = apply(cluster, app_namespace, bad)
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert expected in result.stderr
    assert (
        "NotFound"
        in cluster.kubectl("-n", app_namespace, "get", "lca", "qa-chain", check=False).stderr
    )


def test_webhook_admits_a_valid_app(
    cluster: Cluster, webhook: OperatorProcess, app_namespace: str
) -> None:
    assert apply(cluster, app_namespace, QA).returncode == 0
