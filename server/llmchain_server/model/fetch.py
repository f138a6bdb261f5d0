"""Getting a model source onto local disk: an http(s) URL downloaded resumably into a cache keyed
by its sha256, or a local path. A file is only ever used under its final name once its checksum
is verified, so a half-written download is never read.

Limits: a download is capped in size (a Content-Length above the cap is refused before the body
is read; a body that runs past it is cut off); redirects are followed to http(s) URLs only
(urllib's redirect handler, with the file, ftp and data handlers left out of the opener); the
scheme is checked before anything touches the cache. Whatever a refused, failed or interrupted
download wrote is removed, except the partial file of a transfer that broke off, which the next
run resumes."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from llmchain_server import contract
from llmchain_server.model.locks import locked
from llmchain_server.model.manifest import file_digest
from llmchain_server.model.progress import Progress

CHUNK = 1 << 20
TIMEOUT_SECONDS = 30
SCHEMES = ("http", "https")
DEFAULT_MAX_BYTES = 64 * 2**30
"""The size cap when neither the caller nor LLMCHAIN_MAX_SOURCE_BYTES sets one."""
CAP_SETTING = f"{contract.FLAG_MAX_SOURCE_BYTES} / {contract.ENV_MAX_SOURCE_BYTES}"
_SIZE_FACTORS = {
    **{s: 1000**i for i, s in enumerate(("", "k", "M", "G", "T", "P"))},
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi"), start=1)},
}


class FetchError(RuntimeError):
    """The source could not be fetched; the message names the problem."""


class BrokeOff(FetchError):
    """The transfer broke off: the partial file is kept for the next run to resume."""


def redact(url: str) -> str:
    """A URL safe to log and record: no user, password or query string (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in SCHEMES


def parse_size(text: str) -> int:
    """A byte count: a whole number, or one with a k/M/G/T/P or Ki/Mi/Gi/Ti/Pi suffix."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match[2] not in _SIZE_FACTORS:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 2147483648 or 2Gi)")
    size = int(float(match[1]) * _SIZE_FACTORS[match[2]])
    if size < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def default_max_bytes() -> int:
    value = os.environ.get(contract.ENV_MAX_SOURCE_BYTES)
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(value)
    except ValueError as e:
        raise FetchError(f"{contract.ENV_MAX_SOURCE_BYTES}: {e}") from None


def default_cache_dir() -> Path:
    base = os.environ.get(contract.ENV_SOURCE_CACHE_DIR) or Path.home() / ".cache" / "llmchain"
    return Path(base) / "sources"


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str | None  # hex, when this fetch checked or computed it (None: not read)


def fetch(
    source: str,
    sha256: str | None,
    cache_dir: Path | None = None,
    max_bytes: int | None = None,
) -> Fetched:
    """A local path holding the source, its checksum verified when one is given. A URL's
    download is at most `max_bytes` (default: LLMCHAIN_MAX_SOURCE_BYTES, else 64 GiB)."""
    expected = sha256.lower().removeprefix("sha256:") if sha256 else None
    if expected is not None and (
        len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)
    ):
        raise FetchError(f"--sha256 {sha256!r} is not 64 hexadecimal digits")
    if not is_url(source):
        return _local(source, expected)
    cap = max_bytes if max_bytes is not None else default_max_bytes()
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if expected:
        final = cache / f"sha256-{expected}"
        if final.is_file():
            Progress("fetch").say(f"reused cached {final.name} for {redact(source)}")
            return Fetched(final, expected)
        partial = cache / f"sha256-{expected}.partial"
    else:
        partial = (
            cache / f"download-{hashlib.sha256(redact(source).encode()).hexdigest()[:16]}.partial"
        )
    with locked(partial.with_name(partial.name + ".lock")):  # two fetches of one file take turns
        if expected and (cache / f"sha256-{expected}").is_file():
            return Fetched(cache / f"sha256-{expected}", expected)
        try:
            _download(source, partial, cap)
            actual = _verify(partial, expected, redact(source))
        except BrokeOff:
            raise
        except BaseException:  # refused, failed, Ctrl-C, SIGTERM (the CLI raises SystemExit)
            partial.unlink(missing_ok=True)
            _validator(partial).unlink(missing_ok=True)
            raise
        final = cache / f"sha256-{actual}"
        os.replace(partial, final)
        _validator(partial).unlink(missing_ok=True)
    return Fetched(final, actual)


def _local(source: str, expected: str | None) -> Fetched:
    scheme = urlsplit(source).scheme
    if scheme == "file":
        raise FetchError(
            f"file:// URLs are not fetched: pass {unquote(urlsplit(source).path)} "
            f"as {contract.FLAG_SOURCE} instead"
        )
    if "://" in source:
        raise FetchError(
            f"{scheme}:// URLs are not fetched: only http:// and https:// URLs or a local path "
            f"({redact(source)})"
        )
    path = Path(source)
    if not path.exists():
        raise FetchError(f"source {source} does not exist")
    if expected and path.is_file():
        return Fetched(path, _verify(path, expected, source))
    return Fetched(path, None)


def _validator(partial: Path) -> Path:
    """Where the ETag (or Last-Modified) of a partial download is kept, for If-Range."""
    return partial.with_name(partial.name + ".validator")


def _verify(path: Path, expected: str | None, label: str) -> str:
    actual = file_digest(path, Progress(f"checksum {path.name}", path.stat().st_size))
    if expected and actual != expected:
        if path.name.endswith(".partial"):
            path.unlink()  # a wrong file is not worth resuming
        raise FetchError(f"checksum mismatch for {label}: expected sha256 {expected}, got {actual}")
    return actual


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, refusing a Location whose scheme is not http(s) with an error
    naming it (urllib itself would follow ftp:// and refuse file:// with a bare HTTP 30x)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> http.client.HTTPResponse | None:
        location = headers.get("Location") or headers.get("URI")
        if location is not None:
            target = urljoin(req.full_url, location.strip())
            scheme = urlsplit(target).scheme
            if scheme not in SCHEMES:
                fp.close()
                raise FetchError(
                    f"{self.label} redirected to a {scheme}:// URL ({redact(target)}): "
                    "only http:// and https:// redirects are followed"
                )
        response: http.client.HTTPResponse | None = super().http_error_302(
            req, fp, code, msg, headers
        )
        return response

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(label: str) -> urllib.request.OpenerDirector:
    """urllib's default opener without the file, ftp and data handlers."""
    opener = urllib.request.OpenerDirector()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpRedirects(label),
        urllib.request.HTTPErrorProcessor(),
    ]
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def _request(url: str) -> urllib.request.Request:
    """A request for `url`; user:password in the URL becomes a Basic Authorization header."""
    parts = urlsplit(url)
    headers = {"User-Agent": "llmchain-model-fetch"}
    auth = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    request = urllib.request.Request(url, headers=headers)
    if auth:  # unredirected: credentials never follow a redirect to another host
        request.add_unredirected_header("Authorization", auth)
    return request


def _open(url: str, partial: Path, have: int) -> http.client.HTTPResponse | None:
    """The response to a (ranged, when `have`) GET of `url`; None: nothing is left to fetch."""
    label = redact(url)
    request = _request(url)
    validator = _validator(partial)
    if have:
        request.add_header("Range", f"bytes={have}-")
        if validator.is_file():  # the server sends the whole file if it changed meanwhile
            request.add_header("If-Range", validator.read_text().strip())
    try:
        response: http.client.HTTPResponse = _opener(label).open(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is complete
            return None
        raise FetchError(f"cannot download {label}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {label}: {reason}") from None
    return response


def _download(url: str, partial: Path, cap: int) -> None:
    label = redact(url)
    have = partial.stat().st_size if partial.exists() else 0
    if have > cap:  # kept by a run with a larger cap: resuming it could not keep this one
        Progress(f"download {label}").say(
            f"discarded a partial download of {have} bytes, above the cap of {cap} bytes"
        )
        partial.unlink()
        _validator(partial).unlink(missing_ok=True)
        have = 0
    response = _open(url, partial, have)
    if response is None:
        return
    with response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise FetchError(
                f"cannot resume {label}: the server answered a range other than "
                f"bytes {have}- ({response.headers.get('Content-Range')}); the partial "
                "download was discarded, run again"
            )
        if not resumed:
            have = 0
            _keep_validator(response.headers, _validator(partial))
        expected = _expected_size(response.headers, have, label, cap)
        done = _copy(response, partial, resumed, have, label, expected, cap)
    if expected is not None and done < expected:
        raise BrokeOff(
            f"download of {label} is truncated: got {done} of {expected} bytes "
            "(run again to resume)"
        )


def _keep_validator(headers: Message, validator: Path) -> None:
    tag = headers.get("ETag") or headers.get("Last-Modified")
    if tag:
        validator.write_text(tag)
    else:
        validator.unlink(missing_ok=True)


def _expected_size(headers: Message, have: int, label: str, cap: int) -> int | None:
    """The whole file's size from Content-Length, refused before reading when above the cap."""
    length = headers.get("Content-Length")
    if length is None:
        return None
    if not length.strip().isdigit():
        raise FetchError(f"{label} answered a Content-Length that is not a number: {length!r}")
    size = have + int(length)
    if size > cap:
        raise FetchError(
            f"{label} is {size} bytes (Content-Length), above the cap of {cap} bytes "
            f"({CAP_SETTING}): refused before reading it"
        )
    return size


def _copy(
    response: http.client.HTTPResponse,
    partial: Path,
    resumed: bool,
    have: int,
    label: str,
    expected: int | None,
    cap: int,
) -> int:
    """Append the body to `partial`; the bytes it holds afterwards. Never writes past `cap`."""
    progress = Progress(f"download {label}", expected)
    if resumed:
        progress.say(f"resuming after {have} bytes")
    done = have
    with partial.open("ab" if resumed else "wb") as out:
        while True:
            try:
                chunk = response.read(min(CHUNK, cap + 1 - done))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                raise BrokeOff(f"download of {label} broke off after {done} bytes: {e}") from None
            if not chunk:
                break
            if done + len(chunk) > cap:
                _over_cap(label, cap, done + len(chunk))
            try:
                out.write(chunk)
            except OSError as e:
                raise FetchError(
                    f"cannot write the download of {label} to {partial}: {e}"
                ) from None
            done += len(chunk)
            progress.bytes(done)
    progress.bytes(done, final=True)
    return done


def _over_cap(label: str, cap: int, read: int) -> NoReturn:
    raise FetchError(
        f"{label} is larger than the cap of {cap} bytes ({CAP_SETTING}): stopped after "
        f"{read} bytes and removed what was written"
    )
