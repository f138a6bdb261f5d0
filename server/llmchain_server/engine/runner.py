"""One forward pass of the decoder over a batch of slots, with IO binding onto the KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from llmchain_server.engine.kv_cache import KVCache

Logits = npt.NDArray[np.float32]
LAST_ONLY = "last_token_logits"
_TRUE = np.array(True)


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
        inputs = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
        # Graphs from this builder can return only each row's last logits during prefill.
        self._last_only = LAST_ONLY in inputs
        self._decode_bindings: dict[int, ort.IOBinding] = {}  # batch size → reusable binding
        self._kv_order = [(layer, kind) for layer in range(layers) for kind in ("key", "value")]
        self._past_names = [f"past_key_values.{i}.{k}" for i, k in self._kv_order]
        self._present_names = [f"present.{i}.{k}" for i, k in self._kv_order]

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
        # A prompt starts from an empty past, so the run needs no KV binding: the presents it
        # returns hold just the prompt's keys and values, copied into the slots afterwards. That
        # also lets it feed `last_token_logits`, which IO binding cannot bind.
        empty = np.zeros((count, self.kv_heads, 0, self.head_dim), np.float32)
        feeds: dict[str, npt.NDArray[Any]] = {"input_ids": ids, "attention_mask": mask}
        for name in self._past_names:
            feeds[name] = empty
        if self._last_only and not all_logits:
            feeds[LAST_ONLY] = _TRUE
        logits, *presents = self.session.run(["logits", *self._present_names], feeds)
        for (layer, kind), present in zip(self._kv_order, presents, strict=True):
            buf = self.cache.keys[layer] if kind == "key" else self.cache.values[layer]
            buf[first : first + count, :, :width] = present
        if all_logits:
            return np.asarray(logits, np.float32)
        if logits.shape[1] == 1:
            return np.asarray(logits[:, 0], np.float32)
        picked: Logits = logits[np.arange(count), [len(p) - 1 for p in prompts]]
        return picked

    def decode(self, tokens: Sequence[int], lengths: Sequence[int]) -> Logits:
        """One step for slots 0..n-1: token i goes at position lengths[i]. Returns [n, vocab]."""
        count = len(tokens)
        ids = np.asarray(tokens, np.int64).reshape(count, 1)
        width = max(lengths) + 1
        mask = (np.arange(width)[None, :] <= np.asarray(lengths)[:, None]).astype(np.int64)
        logits = self._decode_logits[:count]
        binding = self._decode_bindings.get(count)
        if binding is None:  # the KV and logits buffers never move: bind them once per size
            binding = self._decode_bindings[count] = self._bind(0, count, ids, mask, logits)
        else:
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(binding)
        return logits[:, 0].copy()  # the buffer is reused by the next step
