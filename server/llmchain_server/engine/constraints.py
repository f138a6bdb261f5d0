"""Constrained decoding: a grammar per request (a JSON schema, a Lark grammar or a regex, compiled
by llguidance), applied as a mask over each step's logits, so the output matches it by
construction. Constrained and free rows share one batch: the mask is per row, after the model ran.

A budget (max_tokens) can cut an output before the grammar is complete, which would make it
invalid. So in the last tokens of the budget every step also checks that the output can still be
closed in what remains: it finds a short closing path (the forced tokens, else the first allowed
of a few closing tokens: `"`, `}`, `]`, `0` ...) and, once that path takes all the tokens left,
follows it. An output is cut ("length" with `complete` false) only when no closing path fits;
the engine counts those apart."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer

from llmchain_server.errors import InvalidRequest

CLOSE_WINDOW = 64
"""In the last this many tokens of a budget, every step checks that the output can still close
after the token sampled (about 0.4 ms a step)."""
CLOSE_MARGIN = 16
"""How much longer than the closing path last measured the checking window is kept."""
CLOSERS = ('"', "}", "]", ",", ":", "0", "{", "[", "n", "t", "f", "1", " ", "\n")
ENDERS = 5
"""The first CLOSERS end things and may repeat in a path; the others start values, and a path
takes each once, then something else (in a regex such as [a-z]+@[a-z]+, `n` forever would loop)."""
"""Texts tried, in this order, to close an output when nothing is forced: they end strings,
objects and arrays, or start the shortest values. `"` comes first (inside a string every other
one is content); the separators come before the digits (inside a number a digit only makes it
longer)."""
CLOSE_SEARCH = 256
"""The longest closing path searched for at a request's start: a request is refused when the
path found is longer than its max_tokens; when none is found (a grammar the greedy search does
not close) it runs, and is counted if cut."""
COMPILED_KEPT = 64
"""Compiled grammars kept for reuse (an agent sends the same tools every turn)."""
_KINDS = {"json_schema": "JSON schema", "lark": "grammar", "regex": "regular expression"}
JSON_OPTIONS = {"whitespace_flexible": False}
"""Compact JSON: free whitespace lets a small model pad an object with newlines forever."""


class GrammarError(InvalidRequest, ValueError):
    """A grammar or schema llguidance cannot compile, or one no output within max_tokens can
    complete (the message says why)."""


@dataclass(frozen=True)
class Grammar:
    """A constraint on an output, as llguidance's grammar text; `kind` says what it came from
    (for logs and metrics)."""

    text: str
    kind: str

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool) -> Grammar:
        """Any JSON value the schema allows (`{"type": "object"}`: any object)."""
        try:
            text = LLMatcher.grammar_from_json_schema(
                json.dumps(schema),
                defaults=JSON_OPTIONS,  # type: ignore[arg-type]
            )
        except (TypeError, ValueError) as e:
            raise GrammarError(f"the JSON schema is not valid: {e}") from None
        return cls(text, "json_schema")

    @classmethod
    def lark(cls, text: str) -> Grammar:
        return cls(LLMatcher.grammar_from_lark(text), "lark")

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls(LLMatcher.grammar_from_regex(pattern), "regex")


Logits = npt.NDArray[np.float32]


class Constraints:
    """llguidance's view of the model's tokenizer, and the matchers made from it (compiled
    grammars are kept, a few, so a schema sent again is only copied)."""

    def __init__(self, tokenizer_json: Path, vocab: int, eos_ids: Sequence[int]) -> None:
        """`vocab`: the logits' width (it may exceed the tokenizer's); `eos_ids`: the tokens
        that end an output, the chat template's end of turn first."""
        self.tokenizer = LLTokenizer(
            str(tokenizer_json), n_vocab=vocab, eos_token=list(eos_ids) or None
        )
        self.vocab = vocab
        if not eos_ids:
            raise ValueError("constrained decoding needs the model's end-of-output token")
        self.eos_ids = frozenset(eos_ids)
        self.end = eos_ids[0]
        """The token that ends an output (the chat template's end of turn)."""
        self.closers = [ids[0] for ids in map(self._single, CLOSERS) if ids]
        self.enders = frozenset(ids[0] for ids in map(self._single, CLOSERS[:ENDERS]) if ids)
        self._compiled: collections.OrderedDict[str, LLMatcher] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _single(self, text: str) -> list[int]:
        ids = self.tokenizer.tokenize_str(text)
        return ids if len(ids) == 1 else []

    def matcher(self, grammar: Grammar, max_tokens: int) -> Matcher:
        """A fresh matcher at the grammar's start. Raises GrammarError when the grammar does
        not compile or its shortest output takes more than `max_tokens`. Compiling can take
        a while (up to a second for a huge schema): call it off the event loop."""
        with self._lock:
            compiled = self._compiled.get(grammar.text)
            if compiled is not None:
                self._compiled.move_to_end(grammar.text)
        if compiled is None:
            compiled = LLMatcher(self.tokenizer, grammar.text, log_level=0)
            if compiled.is_error():
                raise GrammarError(
                    f"the {_KINDS[grammar.kind]} {_first_line(compiled.get_error())}"
                )
            with self._lock:
                self._compiled[grammar.text] = compiled
                while len(self._compiled) > COMPILED_KEPT:
                    self._compiled.popitem(last=False)
        with self._lock:  # one copy at a time of a matcher other threads copy too
            matcher = Matcher(self, compiled.deep_copy())
        shortest = matcher.closing_path(CLOSE_SEARCH)
        if shortest is not None:
            matcher.window = max(CLOSE_WINDOW, len(shortest) + CLOSE_MARGIN)
        if shortest is not None and len(shortest) > max_tokens:
            raise GrammarError(
                f"no output this {_KINDS[grammar.kind]} allows fits in max_tokens ({max_tokens}): "
                f"the shortest found takes {len(shortest)} tokens"
            )
        return matcher


class Matcher:
    """One output's place in its grammar."""

    def __init__(self, constraints: Constraints, matcher: LLMatcher) -> None:
        self._c = constraints
        self._m = matcher
        self._mask = np.full((1, (constraints.vocab + 31) // 32), -1, dtype=np.int32)
        self._closing: list[int] = []  # the closing path being followed, once it has begun
        self.window = CLOSE_WINDOW
        """The last tokens of the budget in which each step checks; widened to the closing
        path's length (and a margin) whenever one longer than the window is measured."""
        self.closed = False
        """The budget ran short and the output was closed along the shortest path."""

    @property
    def done(self) -> bool:
        """The grammar is complete and takes no more tokens (only the end of the output)."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    @property
    def error(self) -> str:
        return self._m.get_error()

    def allowed(self) -> npt.NDArray[np.bool_]:
        """The tokens the grammar allows next, as one flag per logit."""
        self._m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
        return bits[: self._c.vocab].astype(bool)

    def masked(self, logits: Logits) -> Logits:
        """`logits` with every token the grammar forbids at -inf (once closing has begun, all
        but the next token of the closing path)."""
        if self._closing:
            return _only(logits, self._closing[0])
        return np.where(self.allowed(), logits, np.float32(-np.inf)).astype(np.float32)

    def budgeted(self, token: int, remaining: int) -> int:
        """`token` if the output can still close within the `remaining` tokens of budget (this
        one included) after it, else the first token of the closing path from here, which the
        steps that follow keep to. Checked in the budget's last `window` tokens."""
        if self._closing:
            return self._closing.pop(0)
        if remaining > self.window or token in self._c.eos_ids:
            return token
        trial = self._m.deep_copy()
        if trial.consume_token(token):
            path = _close(self._c, trial, remaining - 1)
            if path is not None:
                self.window = max(self.window, len(path) + CLOSE_MARGIN)
                return token
        path = self.closing_path(remaining)
        if path is None:  # no closing path fits: the output will be cut, and counted
            return token
        if not path:  # complete as it stands: end it here
            return self._c.end
        self.closed = True
        self._closing = path[1:]
        return path[0]

    @property
    def finished(self) -> bool:
        """The output is complete: the grammar takes nothing more, or a closing path ended."""
        return self.done or (self.closed and not self._closing and self.accepting)

    def closing_path(self, limit: int) -> list[int] | None:
        """A short list of tokens that completes the grammar from here, at most `limit` long;
        None when none is found."""
        return _close(self._c, self._m.deep_copy(), limit)

    def accept(self, token: int) -> bool:
        """Advance past `token`; False if the grammar refuses it (then the matcher is in error)."""
        if token in self._c.eos_ids and self.accepting:
            return True
        return bool(self._m.consume_token(token))


def _close(c: Constraints, m: LLMatcher, limit: int) -> list[int] | None:
    """A closing path from `m`'s state (which it consumes): the plain greedy one (shortest on
    JSON), else, when that loops, one that takes each value-starting or fallback token once."""
    path = _greedy(c, m.deep_copy(), limit, avoid=False)
    return path if path is not None else _greedy(c, m, limit, avoid=True)


def _greedy(c: Constraints, m: LLMatcher, limit: int, avoid: bool) -> list[int] | None:
    path: list[int] = []
    tried: set[int] = set()  # fallback choices: taking another one breaks loops (x+y)
    mask = np.full((1, (c.vocab + 31) // 32), -1, dtype=np.int32)
    while len(path) <= limit:
        if m.is_accepting():
            return path
        forced = m.compute_ff_tokens()
        if forced:
            token = forced[0]
        else:
            m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: c.vocab]
            token = next(
                (
                    t
                    for t in c.closers
                    if bits[t] and (not avoid or t in c.enders or t not in tried)
                ),
                -1,
            )
            if token >= 0:
                tried.add(token)
            else:  # no closer: the first allowed token this path has not taken yet
                allowed = [int(t) for t in np.flatnonzero(bits) if t not in c.eos_ids]
                if not allowed:
                    return None
                token = next((t for t in allowed if not avoid or t not in tried), allowed[0])
                tried.add(token)
        if not m.consume_token(token):
            return None
        path.append(token)
    return None


def _only(logits: Logits, token: int) -> Logits:
    out = np.full_like(logits, -np.inf)
    out[token] = 0.0
    return out


def _first_line(message: str) -> str:
    text = message.strip()
    return f"is not valid: {text.splitlines()[0][:300]}" if text else "is not valid"
