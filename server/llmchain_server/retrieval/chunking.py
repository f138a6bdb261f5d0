"""Chunking: each document cut into windows of at most `size` tokens of the embedding model's
tokenizer, consecutive windows sharing `overlap` tokens; a chunk's text is the document's text
from its first token's start to its last token's end, so nothing is rewritten."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass(frozen=True)
class Chunking:
    size: int = 200
    overlap: int = 40

    def check(self, max_tokens: int) -> None:
        room = max_tokens - 2  # the encoder's special tokens
        if not 16 <= self.size <= room:
            raise ValueError(f"chunk size {self.size} is not within 16..{room} tokens")
        if not 0 <= self.overlap < self.size // 2:
            raise ValueError(
                f"chunk overlap {self.overlap} is not within 0..{self.size // 2 - 1} tokens"
            )


def chunk_spans(text: str, tokenizer: Tokenizer, chunking: Chunking) -> list[tuple[int, int]]:
    """(start, end) character offsets of each chunk of `text`. Windows begin and end at word
    boundaries (never inside a word the tokenizer split into pieces, unless one word is longer
    than a window), so they hold at most `size` tokens, usually a few less."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets, words = encoding.offsets, encoding.word_ids
    n = len(offsets)
    if n == 0:
        return []
    starts = [i for i in range(n) if i == 0 or words[i] != words[i - 1]]  # word-first tokens
    spans = []
    begin = 0
    while n - begin > chunking.size:
        last = starts[bisect.bisect_right(starts, begin + chunking.size) - 1]
        end = last if last > begin else begin + chunking.size  # tokens [begin, end)
        spans.append((offsets[begin][0], offsets[end - 1][1]))
        following = bisect.bisect_left(starts, max(begin + 1, end - chunking.overlap))
        begin = min(starts[following] if following < len(starts) else n, end)
    spans.append((offsets[begin][0], offsets[n - 1][1]))
    return spans
