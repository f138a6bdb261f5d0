"""One forward pass of the decoder over a batch of slots, with IO binding onto the KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as ort_c

from llmchain_server.engine.kv_cache import KVCache

Logits = npt.NDArray[np.float32]
LAST_ONLY = "last_token_logits"
_TRUE = np.array(True)
_CPU = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)


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
        last_only_chunks: bool = True,
        head_rows: int = 2,
    ) -> None:
        """`last_only_chunks`: the graph picks a chunk's last position by its cached past (model
        folders from build recipe 3 on); older graphs return a chunk's every position.
        `head_rows`: rows per sequence the graph's output head computes when asked for the
        last position only (2 from recipe 4 on, 1 before)."""
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
        self.chunk_last_only = self._last_only and last_only_chunks
        self._head_rows = head_rows
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
        if LAST_ONLY in feeds:  # each row's last position (twice from recipe 4 on)
            return np.asarray(logits[:, -1], np.float32)
        picked: Logits = logits[np.arange(count), [len(p) - 1 for p in prompts]]
        return picked

    def extend(self, slot: int, past: int, tokens: Sequence[int]) -> Logits:
        """Run `tokens` after the `past` tokens already in `slot`'s cache (a prompt's next chunk,
        or the rest of a prompt whose prefix came from the prefix cache). Returns the last
        position's logits [vocab]. The keys and values come out bit for bit as a whole-prompt
        prefill computes them, for chunks of two tokens or more (a single row takes another
        MatMulNBits kernel); onnxruntime runs such a chunk for one sequence at a time."""
        count = len(tokens)
        if past + count > self.cache.capacity:
            raise ValueError(f"{past + count} tokens exceed the context of {self.cache.capacity}")
        ids = np.asarray(tokens, np.int64).reshape(1, count)
        mask = np.ones((1, past + count), np.int64)
        last_only = self.chunk_last_only
        logits = np.zeros((1, self._head_rows if last_only else count, self.vocab), np.float32)
        arrays: list[npt.NDArray[Any]] = [ids, mask]
        names = ["input_ids", "attention_mask"]
        if last_only:
            names.append(LAST_ONLY)
            arrays.append(_TRUE)
        fetches: list[npt.NDArray[Any]] = [logits]
        for layer, kind in self._kv_order:
            buf = self.cache.keys[layer] if kind == "key" else self.cache.values[layer]
            view = buf[slot : slot + 1]  # past and present share the slot's buffer
            arrays.append(view)
            fetches.append(view)
        names += self._past_names
        # IO binding cannot bind `last_token_logits` (an overridable initializer), and a plain
        # run cannot write into preallocated outputs: the vector form of run does both.
        feeds = ort_c.OrtValueVector()
        for a in arrays:
            feeds.push_back(ort.OrtValue.ortvalue_from_numpy(a)._ortvalue)
        outs = ort_c.OrtValueVector()
        for a in fetches:
            outs.push_back(ort.OrtValue.ortvalue_from_numpy(a)._ortvalue)
        output_names = ["logits", *self._present_names]
        self.session._sess.run_with_ortvaluevector(
            ort.RunOptions(), names, feeds, output_names, outs, [_CPU] * len(output_names)
        )
        last: Logits = logits[0, -1].copy()
        return last

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
