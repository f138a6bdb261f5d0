"""Getting a model source onto local disk: a URL (http, https, file) downloaded resumably into a
cache keyed by its sha256, or a local path. A file is only ever used under its final name once its
checksum is verified, so a half-written download is never read."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from llmchain_server import contract
from llmchain_server.model.locks import locked
from llmchain_server.model.manifest import file_digest
from llmchain_server.model.progress import Progress

CHUNK = 1 << 20
TIMEOUT_SECONDS = 30


class FetchError(RuntimeError):
    """The source could not be fetched; the message names the problem."""


def redact(url: str) -> str:
    """A URL safe to log and record: no user, password or query string (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https", "file")


def default_cache_dir() -> Path:
    base = os.environ.get(contract.ENV_SOURCE_CACHE_DIR) or Path.home() / ".cache" / "llmchain"
    return Path(base) / "sources"


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str | None  # hex, when this fetch checked or computed it (None: not read)


def fetch(source: str, sha256: str | None, cache_dir: Path | None = None) -> Fetched:
    """A local path holding the source, its checksum verified when one is given."""
    expected = sha256.lower().removeprefix("sha256:") if sha256 else None
    if expected is not None and (
        len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)
    ):
        raise FetchError(f"--sha256 {sha256!r} is not 64 hexadecimal digits")
    if not is_url(source):
        path = Path(source)
        if not path.exists():
            raise FetchError(f"source {source} does not exist")
        if expected and path.is_file():
            return Fetched(path, _verify(path, expected, source))
        return Fetched(path, None)
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
    with locked(
        partial.with_name(partial.name + ".lock")
    ):  # two builders fetching the same file take turns
        if expected and (cache / f"sha256-{expected}").is_file():
            return Fetched(cache / f"sha256-{expected}", expected)
        _download(source, partial)
        actual = _verify(partial, expected, redact(source))
        final = cache / f"sha256-{actual}"
        os.replace(partial, final)
        _validator(partial).unlink(missing_ok=True)
    return Fetched(final, actual)


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


def _download(url: str, partial: Path) -> None:
    label = redact(url)
    have = partial.stat().st_size if partial.exists() else 0
    request = _request(url)
    validator = _validator(partial)
    if have and urlsplit(url).scheme != "file":
        request.add_header("Range", f"bytes={have}-")
        if validator.is_file():  # the server sends the whole file if it changed meanwhile
            request.add_header("If-Range", validator.read_text().strip())
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the partial file is complete
            return
        raise FetchError(f"cannot download {label}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {label}: {reason}") from None
    with response:
        resumed = getattr(response, "status", 200) == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            partial.unlink()
            raise FetchError(
                f"cannot resume {label}: the server answered a range other than "
                f"bytes {have}- ({response.headers.get('Content-Range')}); the partial "
                "download was discarded, run again"
            )
        if not resumed:
            have = 0
            tag = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if tag:
                validator.write_text(tag)
            else:
                validator.unlink(missing_ok=True)
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        progress = Progress(f"download {label}", expected)
        if resumed:
            progress.say(f"resuming after {have} bytes")
        done = have
        try:
            with partial.open("ab" if resumed else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress.bytes(done)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            raise FetchError(f"download of {label} broke off after {done} bytes: {e}") from None
        progress.bytes(done, final=True)
    if expected is not None and done < expected:
        raise FetchError(
            f"download of {label} is truncated: got {done} of {expected} bytes "
            "(run again to resume)"
        )
