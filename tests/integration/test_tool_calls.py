"""Tool calls over HTTP, hostile cases included, run in a network namespace with only loopback
(tests/support/tool_cases.py): the allowed hosts are checked on the resolved address that is then
connected to, loopback and cloud metadata need naming, redirects are checked again, responses are
bounded in time and size, arguments cannot escape their place in a URL, body or header, and the
metadata address (a listener in the namespace) is reached only by the tool that names it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.support.cluster import ROOT


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Any]:
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to run the hostile tool cases contained"
    done = subprocess.run(
        [unshare, "--net", sys.executable, "-m", "tests.support.tool_cases"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def refused(outcomes: dict[str, Any], case: str, why: str) -> None:
    entry = outcomes["results"][case]
    assert entry["ok"] is False, entry
    assert why in entry["error"]


def test_arguments_are_data_in_urls_bodies_and_headers(outcomes: dict[str, Any]) -> None:
    plain = outcomes["results"]["plain"]["value"]
    assert plain["raw_path"] == "/ok/Paris%2F..%2Fadmin?q=a%26b%3Dc"  # no new segment or query
    posted = outcomes["results"]["posted"]["value"]
    assert json.loads(posted["body"]) == {"city": "Lyon", "n": 2}
    templated = json.loads(outcomes["results"]["templated"]["value"]["body"])
    assert templated == {"c": 'x", "admin": true, "y": "'}  # one string, no injected key
    refused(outcomes, "header", "line break")
    refused(outcomes, "scheme", "only http and https")  # a redirect to file://


def test_secret_headers_reach_the_tool_only(outcomes: dict[str, Any]) -> None:
    assert outcomes["results"]["secret"]["value"]["auth"] == "Bearer s3cr3t"
    errors = " ".join(r.get("error", "") for r in outcomes["results"].values())
    assert "s3cr3t" not in errors


def test_hosts_are_checked_after_resolution(outcomes: dict[str, Any]) -> None:
    refused(outcomes, "by_name", "resolves to 127.0.0.1")  # allowed by name, loopback by address
    refused(outcomes, "other_host", "not in its allowedHosts")
    refused(outcomes, "metadata_ip", "not in its allowedHosts")
    refused(outcomes, "metadata_wide", "does not name")  # 0.0.0.0/0 names no special address


def test_redirects_are_checked_again_and_bounded(outcomes: dict[str, Any]) -> None:
    refused(outcomes, "to_metadata", "169.254.169.254 is not in its allowedHosts")
    assert outcomes["results"]["to_ok"]["value"]["path"] == "/ok/redirected"
    refused(outcomes, "loop", "redirected more than 3 times")


def test_time_and_size_are_bounded(outcomes: dict[str, Any]) -> None:
    refused(outcomes, "slow", "took longer than 1 s")
    refused(outcomes, "big", "larger than 1048576 bytes")  # declared Content-Length
    refused(outcomes, "chunked_big", "larger than 1000000 bytes")  # counted as it streams


def test_the_metadata_address_is_reached_only_when_named(outcomes: dict[str, Any]) -> None:
    assert outcomes["results"]["metadata_named"]["ok"] is True
    assert outcomes["metadataHits"] == ["/named"]


def test_tool_output_is_returned_as_data(outcomes: dict[str, Any]) -> None:
    """Text that looks like a tool call, a template or a chat turn comes back as it is: the
    agent loop puts it in a `tool` message, cleaned of special tokens, never rendered."""
    value = outcomes["results"]["injection"]["value"]
    assert value.startswith("<tool_call>") and "{{ 7 * 7 }}" in value


def test_headers_do_not_follow_a_redirect_to_another_origin(outcomes: dict[str, Any]) -> None:
    moved = outcomes["results"]["secret_redirect"]["value"]
    assert moved["host"].endswith(":18766") and moved["auth"] == ""  # the secret stayed home


def test_bodies_are_read_unencoded_and_timeouts_are_the_tools_own(
    outcomes: dict[str, Any],
) -> None:
    refused(outcomes, "gzipped", "gzip-encoded")  # 10 MB in 10 KB never inflates in memory
    assert outcomes["results"]["six_seconds"] == {"ok": True, "status": 200, "value": "done"}


def test_bad_values_and_names_are_tool_failures_not_crashes(outcomes: dict[str, Any]) -> None:
    refused(outcomes, "unicode_header", "could not be called (UnicodeEncodeError)")
    refused(outcomes, "unknown", "there is no tool")
    deep = outcomes["results"]["deep"]  # JSON nested past Python's recursion: kept as text
    assert deep["ok"] is True and deep["value"].startswith("[[[")
