"""The KV cache: one preallocated buffer per layer and kind, [slots, kv_heads, capacity, head],
bound to the graph's past and present tensors (GroupQueryAttention shares one buffer for both, so
nothing is copied or reallocated between steps). Active sequences occupy slots 0..n-1, so any
batch is a leading slice of the buffer.

The buffers are written once when allocated, so all their memory is committed at start-up: left
to the first write of each page, a prompt landing in a slot for the first time paid for the page
faults on the serving path (on a fresh 2-core VM a 5-prompt prefill took 520 ms instead of 140
in 2 of 4 identical runs), and a pod whose memory limit cannot hold its KV cache fails at start,
not under load."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class KVCache:
    def __init__(
        self, layers: int, slots: int, kv_heads: int, capacity: int, head_dim: int
    ) -> None:
        self.slots = slots
        self.capacity = capacity
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys: list[npt.NDArray[np.float32]] = [_committed(shape) for _ in range(layers)]
        self.values: list[npt.NDArray[np.float32]] = [_committed(shape) for _ in range(layers)]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction)."""
        for buf in (*self.keys, *self.values):
            buf[dst, :, :length] = buf[src, :, :length]

    def pointer(self, layer: int, kind: str, first_slot: int) -> int:
        buf = self.keys[layer] if kind == "key" else self.values[layer]
        return int(buf[first_slot:].ctypes.data)


def _committed(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """A zeroed buffer whose pages are all written now (np.zeros maps them lazily)."""
    buf = np.empty(shape, np.float32)
    buf.fill(0.0)
    return buf
