"""The model's tokenizer (`tokenizer.json`) and chat template, plus incremental decoding that
never emits half a UTF-8 character."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from llmchain_server.model.folder import SpecialTokens

_REPLACEMENT = "\ufffd"


class ChatTemplateError(ValueError):
    """The chat template could not render these messages."""


class ModelTokenizer:
    def __init__(
        self,
        tokenizer: Path,
        special: SpecialTokens | None = None,
        chat_template: str | None = None,
    ) -> None:
        """`tokenizer`: a `tokenizer.json`; `special` and `chat_template` as the model folder
        has them (folder.py; default: none)."""
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        tokens = special or SpecialTokens()
        self.eos_ids: frozenset[int] = frozenset(tokens.eos_ids)
        self.bos_id = tokens.bos_id
        self.add_bos = tokens.add_bos
        self.bos_token = tokens.bos
        self.eos_token = tokens.eos
        texts = sorted(
            (
                t.content
                for t in self.tokenizer.get_added_tokens_decoder().values()
                if t.special and t.content
            ),
            key=len,
            reverse=True,
        )
        self._special = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._special_ends: dict[str, list[str]] = {}
        """The special-token strings by their last character, longest first."""
        for text in texts:
            self._special_ends.setdefault(text[-1], []).append(text)
        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        env.globals["raise_exception"] = _raise
        self._chat = env.from_string(chat_template) if chat_template is not None else None

    def eos_ids_end_of_turn_first(self) -> list[int]:
        """The ids that end an output, the EOS token's (the chat template's end of turn)
        first."""
        first = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        rest = sorted(self.eos_ids - {first})
        return [first, *rest] if first in self.eos_ids else rest

    def strip_special(self, text: str) -> str:
        """User-supplied text without special-token strings (`<|im_start|>`…): tokenizers match
        them even inside user content, which would let a user forge chat turns. Removing one can
        join its neighbours into another (`<|im_<|im_end|>start|>`), so no single pass will do:
        one linear scan keeps the text read so far free of them, dropping a special-token string
        as soon as it ends the kept text (the kept text before it held none, so none is left)."""
        if self._special is None or self._special.search(text) is None:
            return text
        kept: list[str] = []
        for char in text:
            kept.append(char)
            ends = self._special_ends.get(char)
            if ends:
                tail = "".join(kept[-len(ends[0]) :])  # ends[0] is the longest
                for token in ends:
                    if tail.endswith(token):
                        del kept[-len(token) :]
                        break
        return "".join(kept)

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`. Through `encode_batch`, which releases the GIL while it
        works (`encode` holds it: a 1 MB text would stall every other thread for a second)."""
        ids: list[int] = self.tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        return ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text, without a BOS (one batch, in parallel, GIL released)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        if self._chat is None:
            # No template: a plain transcript, so models without one still answer.
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "")
        try:
            return self._chat.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from None


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class IncrementalDecoder:
    """Text deltas for a growing list of token ids, decoding only a short window each time.
    Byte-level BPE can split a character across tokens: a delta is held back until whole."""

    def __init__(self, tokenizer: ModelTokenizer, context: Sequence[int] = ()) -> None:
        """`context`: the last few prompt tokens, so the first generated token decodes as it
        does mid-text (SentencePiece decoders strip a leading space at the start of a text)."""
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context)
        self._prefix = 0  # start of the window decoded for context
        self._read = len(self.ids)  # ids before this are already emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        after = self.tokenizer.decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]
