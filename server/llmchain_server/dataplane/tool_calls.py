"""Calling a chain's tools over HTTP, contained by construction:

- a call goes only to the tool's allowed hosts, checked on the address the host name resolves to,
  and the connection is made to that checked address (the host name stays in the Host header and
  TLS SNI, so certificates are verified against it): no second lookup a DNS answer could change;
- loopback, link-local (cloud metadata among them), unspecified, multicast and reserved
  addresses are refused unless an IP or CIDR entry of `allowedHosts` names them;
- redirects are followed by hand, at most three, each checked again;
- no proxy from the environment (it would connect elsewhere than checked);
- the whole call is bounded in time, the response body in bytes;
- arguments are substituted into templates as data: percent-encoded in the URL, JSON in the
  body, refused in a header if they hold a line break.

Secrets (headers from the environment) go on the wire only; never into logs, errors or results.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmchain_server.config import Tool
from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.errors import ServingError

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs: arguments

MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
METADATA = (ipaddress.ip_network("100.100.100.200/32"), ipaddress.ip_network("fd00:ec2::254/128"))
"""Cloud metadata addresses outside link-local (Alibaba; AWS over IPv6)."""


class ToolCallFailed(ServingError):
    """A tool call failed: refused by its allowed hosts, timed out, too large, or an HTTP
    error. The message names the tool and says why, never an argument or a secret."""


@dataclass(frozen=True)
class ToolResult:
    tool: str
    status: int
    value: Any  # parsed JSON for a JSON response, else the text
    seconds: float


def _url_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, finalize=lambda v: quote(str(v), safe="")
    )
    return env


def _json_env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, finalize=json.dumps)


def _text_env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined)


class ToolCaller:
    """Calls the tools of one chain; one HTTP client (no proxies, no automatic redirects)."""

    def __init__(
        self,
        tools: list[Tool],
        env: Mapping[str, str] | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.tools = {t.name: t for t in tools}
        self.metrics = metrics
        self._env = os.environ if env is None else env
        self._url, self._json, self._text = _url_env(), _json_env(), _text_env()
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # No pooled connections: a pool keyed by the pinned address would hand a TLS
            # connection verified for one host name to a call to another. No timeout of
            # httpx's own: each call's `timeoutSeconds` bounds it whole.
            self._client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=None,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Call tool `name`; ToolCallFailed when it cannot be called or answers an error. One
        log line per call (tool, outcome, status, duration; never arguments) and the tool's
        metrics."""
        tool = self.tools.get(name)
        if tool is None:
            raise ToolCallFailed(f"there is no tool {name[:64]!r}")
        started = time.monotonic()
        status = 0
        try:
            try:
                async with asyncio.timeout(tool.http.timeout_seconds):
                    status, value = await self._call(tool, dict(arguments))
            except TimeoutError:
                raise ToolCallFailed(
                    f"tool {name} took longer than {tool.http.timeout_seconds:g} s"
                ) from None
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, UnicodeError) as e:
                # A refused connection, a bad redirect target (port 99999), a header value
                # that is no ASCII: the tool's failure, never the server's.
                raise ToolCallFailed(
                    f"tool {name} could not be called ({type(e).__name__})"
                ) from None
        except ToolCallFailed as e:
            self._record(name, "error", started, status, e.message)
            raise
        except asyncio.CancelledError:  # by the caller (an agent's deadline, a client gone)
            self._record(name, "cancelled", started, status, "cancelled")
            raise
        except Exception as e:  # anything else is still this tool's failure, not the server's
            self._record(name, "error", started, status, type(e).__name__)
            raise ToolCallFailed(f"tool {name} failed ({type(e).__name__})") from None
        self._record(name, "ok", started, status, None)
        return ToolResult(name, status, value, time.monotonic() - started)

    def _record(
        self, name: str, outcome: str, started: float, status: int, error: str | None
    ) -> None:
        seconds = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.tool_calls.labels(name, outcome).inc()
            self.metrics.tool_seconds.labels(name).observe(seconds)
        log.info(
            "Called tool %s: %s",
            name,
            outcome if error is None else f"{outcome} ({error})",
            extra={"tool": name, "outcome": outcome, "status": status, "seconds": seconds},
        )

    async def _call(self, tool: Tool, arguments: dict[str, Any]) -> tuple[int, Any]:
        method, url, headers, body = self._request(tool, arguments)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(tool, method, url, headers, body)
            location = response.headers.get("location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                await response.aclose()
                target = urljoin(url, location)
                if _origin(target) != _origin(url):
                    if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                        raise ToolCallFailed(f"tool {tool.name} redirected from https to http")
                    # Another origin gets none of the tool's headers (secrets among them).
                    headers = {k: v for k, v in headers.items() if k.lower() == "content-type"}
                url = target
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, body = "GET", None
                continue
            try:
                content = await _read_limited(response, tool)
            finally:
                await response.aclose()
            if response.status_code >= 400:
                raise ToolCallFailed(f"tool {tool.name} answered HTTP {response.status_code}")
            return response.status_code, _value(response, content)
        raise ToolCallFailed(f"tool {tool.name} redirected more than {MAX_REDIRECTS} times")

    def _request(
        self, tool: Tool, arguments: dict[str, Any]
    ) -> tuple[str, str, dict[str, str], bytes | None]:
        http = tool.http
        try:
            url = self._url.from_string(http.url).render(arguments)
            headers = {
                k: self._text.from_string(v).render(arguments) for k, v in http.headers.items()
            }
            body: bytes | None = None
            if http.body is not None:
                body = self._json.from_string(http.body).render(arguments).encode()
            elif http.method in ("POST", "PUT", "PATCH"):
                body = json.dumps(arguments).encode()
                headers.setdefault("Content-Type", "application/json")
        except TemplateError as e:
            raise ToolCallFailed(f"tool {tool.name}: its templates failed: {e}") from None
        if any("\r" in v or "\n" in v for v in headers.values()):
            raise ToolCallFailed(f"tool {tool.name}: a header value holds a line break")
        for header, variable in tool.secret_headers.items():
            secret = self._env.get(variable)
            if secret is None:
                raise ToolCallFailed(f"tool {tool.name}: the secret of header {header} is not set")
            headers[header] = secret
        return http.method, url, headers, body

    async def _send(
        self, tool: Tool, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> httpx.Response:
        """One request, connected to the address the checks passed."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolCallFailed(f"tool {tool.name}: only http and https URLs are called")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await checked_address(tool, host, port)
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
        request = self._http().build_request(
            method,
            pinned,
            # Identity only: a compressed body could inflate past maxResponseBytes in memory
            # before it is counted.
            headers={
                **headers,
                "Host": parts.netloc.rpartition("@")[2],
                "Accept-Encoding": "identity",
            },
            content=body,
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        return await self._http().send(request, stream=True)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


async def checked_address(tool: Tool, host: str, port: int) -> IPAddress:
    """The address to connect to: the host must be allowed, and every address it resolves to
    too (one refused address refuses the host: a DNS answer mixing in a metadata address is an
    attack)."""
    allowed = tool.http.allowed_hosts
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and not any(_host_matches(host, entry) for entry in allowed):
        raise ToolCallFailed(f"tool {tool.name}: host {host} is not in its allowedHosts")
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise ToolCallFailed(f"tool {tool.name}: host {host} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    networks = _networks(allowed)
    for address in addresses:
        if literal is not None and not any(address in network for network in networks):
            raise ToolCallFailed(f"tool {tool.name}: address {address} is not in its allowedHosts")
        if _special(address) and not any(_names(network, address) for network in networks):
            raise ToolCallFailed(
                f"tool {tool.name}: host {host} resolves to {address}, a loopback, link-local "
                "or reserved address that allowedHosts does not name"
            )
    return addresses[0]


def _host_matches(host: str, entry: str) -> bool:
    host, entry = host.lower().rstrip("."), entry.lower().rstrip(".")
    if entry.startswith("*."):
        return host.endswith(entry[1:]) and host != entry[2:]
    return host == entry


def _networks(entries: list[str]) -> list[IPNetwork]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    return networks


def _names(network: IPNetwork, address: IPAddress) -> bool:
    """Whether an allowedHosts entry names a special `address` explicitly: a network of special
    addresses only, no wider than 127.0.0.0/8 (IPv4) or a /64 (IPv6); 0.0.0.0/0 names none."""
    widest = 2**24 if network.version == 4 else 2**64
    return (
        address in network
        and network.num_addresses <= widest
        and _special(network.network_address)
        and _special(network.broadcast_address)
    )


def _special(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _special(address.ipv4_mapped)
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or any(address in n for n in METADATA)
    )


async def _read_limited(response: httpx.Response, tool: Tool) -> bytes:
    limit = tool.http.max_response_bytes
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ToolCallFailed(f"tool {tool.name} answered a {encoding[:32]}-encoded body")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ToolCallFailed(f"tool {tool.name}: the response is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise ToolCallFailed(f"tool {tool.name}: the response is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _value(response: httpx.Response, content: bytes) -> Any:
    text = content.decode("utf-8", errors="replace")
    if "json" in response.headers.get("content-type", ""):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read: the text
            return text
    return text
