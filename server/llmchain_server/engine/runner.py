"""One forward pass of the decoder over a batch of slots, with IO binding onto the KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from llmchain_server.engine.kv_cache import KVCache

Logits = npt.NDArray[np.float32]


class ModelRunner:
    def __init__(
        self,
        session: ort.InferenceSession,
        layers: int,
        kv_heads: int,
        head_dim: int,
        vocab: int,
        slots: int,
        capacity: int,
    ) -> None:
        self.session = session
        self.layers = layers
        self.vocab = vocab
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.cache = KVCache(layers, slots, kv_heads, capacity, head_dim)
        self._decode_logits = np.zeros((slots, 1, vocab), np.float32)

    def _bind(
        self,
        first: int,
        count: int,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        logits: Logits,
    ) -> ort.IOBinding:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        shape = [count, self.kv_heads, self.cache.capacity, self.head_dim]
        for layer in range(self.layers):
            for kind in ("key", "value"):
                ptr = self.cache.pointer(layer, kind, first)
                binding.bind_input(
                    f"past_key_values.{layer}.{kind}", "cpu", 0, np.float32, shape, ptr
                )
                binding.bind_output(f"present.{layer}.{kind}", "cpu", 0, np.float32, shape, ptr)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        return binding

    def prefill(
        self, first: int, prompts: Sequence[Sequence[int]], all_logits: bool = False
    ) -> Logits:
        """Run whole prompts into slots first..first+len(prompts)-1 (right-padded to the longest).
        Returns each prompt's last-position logits [n, vocab], or all of them [n, seq, vocab]."""
        count = len(prompts)
        width = max(len(p) for p in prompts)
        if width > self.cache.capacity:
            raise ValueError(
                f"prompt of {width} tokens exceeds the context of {self.cache.capacity}"
            )
        ids = np.zeros((count, width), np.int64)
        mask = np.zeros((count, width), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
            mask[row, : len(prompt)] = 1
        logits = np.empty((count, width, self.vocab), np.float32)
        self.session.run_with_iobinding(self._bind(first, count, ids, mask, logits))
        if all_logits:
            return logits
        last = np.array([len(p) - 1 for p in prompts])
        picked: Logits = logits[np.arange(count), last]
        return picked

    def decode(self, tokens: Sequence[int], lengths: Sequence[int]) -> Logits:
        """One step for slots 0..n-1: token i goes at position lengths[i]. Returns [n, vocab]."""
        count = len(tokens)
        ids = np.asarray(tokens, np.int64).reshape(count, 1)
        width = max(lengths) + 1
        mask = (np.arange(width)[None, :] <= np.asarray(lengths)[:, None]).astype(np.int64)
        logits = self._decode_logits[:count]
        self.session.run_with_iobinding(self._bind(0, count, ids, mask, logits))
        return logits[:, 0].copy()  # the buffer is reused by the next step
