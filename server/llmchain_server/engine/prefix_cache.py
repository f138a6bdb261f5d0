"""The prefix cache: keys and values of prompt prefixes already prefilled (a chain's template, a
conversation's history, a shared system prompt), kept in fixed blocks of tokens so that a later
prompt starting with the same tokens copies them into its KV slot instead of computing them again.

A block is named by a hash chained over every token before and in it, so a block is found only
under the very prefix it was computed for. Only KV computed by prefill is stored (never a decode
step's), and the engine computes a prompt's KV the same way whether its start came from here or
not, so reuse changes no output (tests/integration/test_prefix_cache.py).

The store is bounded: `blocks` blocks preallocated (pages are touched only when used). When it is
full, the least recently used block that no cached block extends is evicted, so shared prefixes
outlive the conversations built on them."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmchain_server.engine.kv_cache import KVCache

BLOCK_TOKENS = 16
"""Tokens per block: the granularity of reuse."""

_ROOT = b"llmchain-prefix"


@dataclass
class _Block:
    index: int  # row in the pool
    parent: bytes | None
    children: int = 0


@dataclass
class PrefixStats:
    lookup_tokens: int = 0
    """Prompt tokens looked up (those a hit could have covered)."""
    hit_tokens: int = 0
    """Prompt tokens whose keys and values came from the cache."""
    evicted_blocks: int = 0
    stored_blocks: int = 0
    used_blocks: int = 0
    capacity_blocks: int = 0


def _chain(parent: bytes, tokens: Sequence[int]) -> bytes:
    data = np.asarray(tokens, np.int64).tobytes()
    return hashlib.blake2b(parent + data, digest_size=16).digest()


class PrefixCache:
    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        blocks: int,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        if blocks < 1:
            raise ValueError("a prefix cache needs at least one block")
        self.block = block_tokens
        self.blocks = blocks
        # the pool has the KV cache's layout, a "slot" per block of `block_tokens` positions
        self._pool = KVCache(layers, blocks, kv_heads, block_tokens, head_dim)
        self._keys, self._values = self._pool.keys, self._pool.values
        self._lru: collections.OrderedDict[bytes, _Block] = collections.OrderedDict()
        self._free = list(range(blocks - 1, -1, -1))
        self.stats = PrefixStats(capacity_blocks=blocks)

    @property
    def nbytes(self) -> int:
        return self._pool.nbytes

    def _names(self, tokens: Sequence[int], count: int) -> list[bytes]:
        names, parent = [], _ROOT
        for b in range(count):
            parent = _chain(parent, tokens[b * self.block : (b + 1) * self.block])
            names.append(parent)
        return names

    def load(
        self, tokens: Sequence[int], limit: int, cache: KVCache, slot: int, minimum: int = 0
    ) -> int:
        """Copy the longest cached prefix of `tokens`, in whole blocks and at most `limit` tokens,
        into `slot` of `cache`, if it covers `minimum` tokens or more. Returns how many tokens it
        covers (0 on a miss)."""
        count = max(0, limit) // self.block
        self.stats.lookup_tokens += count * self.block
        rows: list[int] = []
        for name in self._names(tokens, count):
            entry = self._lru.get(name)
            if entry is None:
                break
            self._lru.move_to_end(name)
            rows.append(entry.index)
        covered = len(rows) * self.block
        if not rows or covered < minimum:
            return 0
        index = np.asarray(rows)
        for pool, buf in ((self._keys, cache.keys), (self._values, cache.values)):
            for layer, blocks in enumerate(pool):
                # [n, heads, block, dim] -> [heads, n * block, dim], the slot's layout
                got = blocks[index].transpose(1, 0, 2, 3).reshape(buf[layer].shape[1], covered, -1)
                buf[layer][slot, :, :covered] = got
        self.stats.hit_tokens += covered
        return covered

    def store(self, tokens: Sequence[int], length: int, cache: KVCache, slot: int) -> None:
        """Keep the whole blocks among the first `length` tokens of `tokens`, whose keys and
        values `slot` of `cache` holds from a prefill, unless they are cached already."""
        names = self._names(tokens, length // self.block)
        parent: bytes | None = None
        for b, name in enumerate(names):
            entry = self._lru.get(name)
            if entry is not None:
                self._lru.move_to_end(name)
            else:
                row = self._allocate(keep=parent)
                if row is None:
                    break
                entry = self._lru[name] = _Block(row, parent)
                if parent is not None and parent in self._lru:
                    self._lru[parent].children += 1
                start = b * self.block
                for pool, buf in ((self._keys, cache.keys), (self._values, cache.values)):
                    for layer, blocks in enumerate(pool):
                        blocks[row] = buf[layer][slot, :, start : start + self.block]
                self.stats.stored_blocks += 1
            parent = name
        self.stats.used_blocks = len(self._lru)

    def _allocate(self, keep: bytes | None) -> int | None:
        """A free pool row, evicting the least recently used leaf block if none is free (never
        `keep`, the block the new one extends). None when every block is a needed ancestor."""
        if self._free:
            return self._free.pop()
        for name, entry in self._lru.items():
            if entry.children == 0 and name != keep:
                del self._lru[name]
                if entry.parent is not None and entry.parent in self._lru:
                    self._lru[entry.parent].children -= 1
                self.stats.evicted_blocks += 1
                return entry.index
        return None

    def clear(self) -> None:
        self._lru.clear()
        self._free = list(range(self.blocks - 1, -1, -1))
        self.stats.used_blocks = 0
