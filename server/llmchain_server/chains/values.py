"""The JSON values users give a chain (its inputs, kept in memory as history): checked for depth,
size and lone surrogates, and cleaned of special-token strings. Every walk is a loop over an
explicit stack, never recursion, so no value can exhaust Python's stack, however deep."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 32
"""Nesting of objects and arrays in one input value (`"a"` is depth 0, `["a"]` depth 1)."""
MAX_ITEMS = 10_000
"""Strings, numbers, objects, arrays and keys in one request's input, all counted."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string in the parsed JSON, as a value or a key at any depth, holds a lone
    surrogate (`"\\ud800"`): Python's json accepts one, but it is no text and cannot be encoded."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
    return False


def depth_and_items(value: Any, stop_after: int = MAX_ITEMS) -> tuple[int, int]:
    """The nesting depth of `value` and how many items it holds (keys included); the walk ends
    early once `stop_after` items are counted."""
    deepest = items = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending and items <= stop_after:
        item, depth = pending.pop()
        items += 1
        if isinstance(item, dict):
            items += len(item)
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
    return deepest, items


def mapped_strings(value: Any, change: Callable[[str], str]) -> Any:
    """A copy of `value` with `change` applied to every string value (keys are kept), built
    with a loop, so any depth is safe."""
    if not isinstance(value, dict | list):
        return change(value) if isinstance(value, str) else value
    root: Any = {} if isinstance(value, dict) else []
    pending: list[tuple[Any, Any]] = [(value, root)]
    while pending:
        source, copy = pending.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in pairs:
            if isinstance(item, dict | list):
                new: Any = {} if isinstance(item, dict) else []
                pending.append((item, new))
            else:
                new = change(item) if isinstance(item, str) else item
            if isinstance(copy, dict):
                copy[key] = new
            else:
                copy.append(new)
    return root


def string_chars(value: Any) -> int:
    """How many characters the strings in `value` hold, keys included (a loop, any depth)."""
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            total += sum(len(k) for k in item if isinstance(k, str))
            pending.extend(item.values())
    return total
