"""Typed reads of the JSON objects in a model folder (`config.json`, `manifest.json`): each error
names the file and the field, so a bad folder says what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_REQUIRED: Any = object()


class FolderError(ValueError):
    """A model folder lacks a file or holds a bad one; the message names the file and field."""


class Fields:
    """One JSON object read from `file`; `prefix` names where it sits in the file (`model.`).

    A field given a default may be absent or null; one without is required."""

    def __init__(self, data: object, file: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            name = f"{file}: {prefix.rstrip('.')}" if prefix else file
            raise FolderError(f"{name} must be a JSON object, not {_shown(data)}")
        self.data: dict[str, Any] = data
        self.file = file
        self.prefix = prefix

    @classmethod
    def load(cls, path: Path) -> Fields:
        """The JSON object in the file at `path`."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FolderError(f"{path} is missing") from None
        except OSError as e:
            raise FolderError(f"{path} cannot be read: {e}") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise FolderError(f"{path} is not valid JSON: {e}") from None
        return cls(data, str(path))

    def error(self, key: str, problem: str) -> FolderError:
        """The error for one field: `<file>: <prefix><key> <problem>`."""
        return FolderError(f"{self.file}: {self.prefix}{key} {problem}")

    def invalid(self, problem: str) -> FolderError:
        """The error for the object as a whole: `<file>: <prefix>: <problem>`."""
        where = f"{self.file}: {self.prefix.rstrip('.')}" if self.prefix else self.file
        return FolderError(f"{where}: {problem}")

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is missing")
            return default
        return value

    def integer(self, key: str, default: int = _REQUIRED) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {_shown(value)}")
        return value

    def optional_integer(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.integer(key)

    def number(self, key: str, default: float = _REQUIRED) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {_shown(value)}")
        return float(value)

    def text(self, key: str, default: str = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_shown(value)}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def flag(self, key: str, default: bool = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_shown(value)}")
        return value

    def integers(self, key: str) -> tuple[int, ...]:
        """A list of integers (absent: none)."""
        value = self._get(key, [])
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self.error(key, f"must be a list of integers, not {_shown(value)}")
        return tuple(value)

    def texts(self, key: str) -> dict[str, str]:
        """An object of strings."""
        section = self.section(key)
        return {name: section.text(name) for name in section.data}

    def section(self, key: str) -> Fields:
        """A nested object (required)."""
        return Fields(self._get(key, _REQUIRED), self.file, f"{self.prefix}{key}.")

    def optional_section(self, key: str) -> Fields | None:
        return None if self.data.get(key) is None else self.section(key)

    def sections(self, key: str) -> dict[str, Fields]:
        """An object of objects (each file of a manifest), by name."""
        outer = self.section(key)
        return {name: outer.section(name) for name in outer.data}


def _shown(value: object) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
