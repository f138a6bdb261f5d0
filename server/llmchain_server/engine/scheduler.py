"""Continuous batching: one thread runs the model. Between decode steps it admits waiting
requests into free KV slots and retires finished ones, so a request never waits for another to
end. Prompts are prefilled in chunks of at most `prefill_chunk` tokens between decode steps, so a
newcomer's long prompt delays the running streams by one chunk a step, not by the whole prompt.
A prompt whose start is in the prefix cache prefills only the rest. The waiting queue is bounded;
a full queue refuses at once.

A prompt's keys and values come out bit for bit the same whatever its chunks and whatever came
from the prefix cache (every chunk but a one-token prompt's has two tokens or more: one row takes
another MatMulNBits kernel), so neither changes an output."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from llmchain_server.engine.prefix_cache import PrefixCache
from llmchain_server.engine.request import Generation
from llmchain_server.engine.runner import Logits, ModelRunner
from llmchain_server.engine.sampling import sample
from llmchain_server.errors import Draining, Overloaded

log = logging.getLogger(__name__)


MIN_REUSE_TOKENS = 64
"""The shortest cached prefix worth reusing. A prompt with a cached start runs alone (onnxruntime
takes a past for one sequence at a time), while new prompts arriving together run as one: a
16-token hit on a chat template's default system prompt made a burst of 8 short prompts take 8
runs instead of one."""


class QueueFull(Overloaded, RuntimeError):
    """The engine's waiting queue is full; try again later."""


class EngineStopped(Draining, RuntimeError):
    """The engine is shutting down and takes no more requests."""


@dataclass
class EngineStats:
    waiting: int = 0
    running: int = 0
    steps: int = 0
    prefills: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    constrained: int = 0  # constrained outputs finished
    constrained_closed: int = 0  # ... complete, closed early because the budget ran short
    constrained_cut: int = 0  # ... cut incomplete (by the budget, a stop or the context)
    constraint_seconds: float = 0.0  # time spent masking logits and advancing grammars


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        eos_ids: frozenset[int],
        max_batch: int,
        max_waiting: int,
        min_batch: int = 1,
        prefill_chunk: int = 256,
        prefix_cache: PrefixCache | None = None,
        idle_prefill: int = 2048,
    ) -> None:
        """`prefill_chunk`: prompt tokens prefilled between two decode steps while streams run;
        `idle_prefill`: when none runs. `prefix_cache`: None for no reuse."""
        self.runner = runner
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        # Some kernels (MatMulNBits with int8 activations) take another path for one row than
        # for several; decoding at least `min_batch` rows keeps every output batch-invariant.
        self.min_batch = min(min_batch, runner.cache.slots)
        if prefill_chunk < 2:
            raise ValueError("prefill chunks must be at least 2 tokens")
        self.prefill_chunk = prefill_chunk
        self.idle_prefill = max(idle_prefill, prefill_chunk)
        self.prefix_cache = prefix_cache
        self.stats = EngineStats()
        self._waiting: collections.deque[Generation] = collections.deque()
        self._running: list[Generation] = []  # index = KV slot; prefilling or decoding
        self._lengths: list[int] = []  # tokens in each slot's cache
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="llmchain-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, generation: Generation) -> None:
        with self._cv:
            if self._stop:
                raise EngineStopped("the engine has stopped")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"the engine queue is full ({self.max_waiting} waiting)")
            self._waiting.append(generation)
            self.stats.waiting = len(self._waiting)
            self._cv.notify()

    # -- the engine thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stop:
                    break
                admitted = self._admit()
            for g in admitted:
                self._place(g)
            try:
                self._prefill()
            except Exception as e:  # never let a bad prefill kill the engine
                log.exception("Failed a prefill step; ended the requests still prefilling")
                prefilling = [s for s, g in enumerate(self._running) if not g.generated]
                self._fail([self._running[s] for s in prefilling], e)
                self._retire(prefilling)
            if any(g.generated for g in self._running):
                try:
                    self._decode()
                except Exception as e:  # never let one bad step kill the engine
                    log.exception("Failed a decode step; ended %d requests", len(self._running))
                    self._fail(list(self._running), e)
                    self._retire(list(range(len(self._running))))
            self.stats.running = len(self._running)
        with self._cv:
            leftovers = [*self._running, *self._waiting]
            self._waiting.clear()
        for g in leftovers:
            g.emit("", None, "cancelled")

    @staticmethod
    def _fail(generations: list[Generation], error: Exception) -> None:
        for g in generations:
            if g.finish_reason is None:
                g.emit("", None, "error", error=f"{type(error).__name__}: {error}")

    def _admit(self) -> list[Generation]:
        admitted: list[Generation] = []
        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
            g = self._waiting.popleft()
            if g.cancelled:
                g.emit("", None, "cancelled")
                continue
            admitted.append(g)
        self.stats.waiting = len(self._waiting)
        return admitted

    def _place(self, g: Generation) -> None:
        """Give `g` the next slot, with its prompt's cached prefix (leaving a chunk of two
        tokens or more to compute: its last position's logits are needed)."""
        slot = len(self._running)
        cached = 0
        if self.prefix_cache is not None:
            try:
                cached = self.prefix_cache.load(
                    g.prompt, len(g.prompt) - 2, self.runner.cache, slot, MIN_REUSE_TOKENS
                )
            except Exception:  # a cache failure costs speed, not the request
                log.exception("Failed to load a cached prefix for request %d", g.id)
        self._running.append(g)
        self._lengths.append(cached)
        self.stats.prompt_tokens += len(g.prompt)

    def _prefill(self) -> None:
        """Prefill the next chunks of the prompts not yet in their slots, in order of arrival:
        while other streams decode, one run of at most `prefill_chunk` tokens (each run costs
        the running streams a gap); else runs up to `idle_prefill` tokens. New prompts that fit
        together go in one run (right-padded to the longest); a prompt with a cached start, or
        one that takes several chunks, runs alone. Prompts that complete get their first
        token.

        Neither changes a first token: the output head computes two rows per sequence (the
        graph repeats each last position), so it takes the same kernel alone or in a group."""
        decoding = any(g.generated for g in self._running)
        budget = self.prefill_chunk if decoding else self.idle_prefill
        done: list[int] = []
        failed: list[int] = []
        logits: list[Logits] = []
        order = sorted(
            (s for s, g in enumerate(self._running) if not g.generated),
            key=lambda s: self._running[s].id,
        )
        i = 0
        runs = 0
        while i < len(order) and budget >= 2 and not (decoding and runs):
            slot = order[i]
            g, filled = self._running[slot], self._lengths[slot]
            if g.cancelled:
                g.emit("", None, "cancelled")
                failed.append(slot)
                i += 1
                continue
            group = self._fresh_group(order[i:], budget)
            runs += 1
            if len(group) > 1:
                prompts = [self._running[s].prompt for s in group]
                try:
                    rows = self.runner.prefill(group[0], prompts)
                except Exception as e:  # only these requests fail; the running batch goes on
                    log.exception("Failed a prefill; ended %d new requests", len(group))
                    self._fail([self._running[s] for s in group], e)
                    failed += group
                else:
                    self.stats.prefills += 1
                    for s, p, row in zip(group, prompts, rows, strict=True):
                        self._lengths[s] = len(p)
                        budget -= len(p)
                        done.append(s)
                        logits.append(row)
                i += len(group)
                continue
            count = _chunk(len(g.prompt) - filled, budget)
            tokens = g.prompt[filled : filled + count]
            i += 1
            try:
                if filled == 0:
                    row = self.runner.prefill(slot, [tokens])[0]
                else:
                    row = self.runner.extend(slot, filled, tokens)
            except Exception as e:  # only this request fails; the running batch goes on
                log.exception("Failed a prefill; ended request %d", g.id)
                self._fail([g], e)
                failed.append(slot)
                continue
            self.stats.prefills += 1
            self._lengths[slot] = filled + count
            budget -= count
            if filled + count == len(g.prompt):
                done.append(slot)
                logits.append(row)
        for s in done:
            self._remember(s)
        self._advance(done, np.stack(logits) if logits else np.zeros((0, 0), np.float32), failed)

    def _fresh_group(self, order: list[int], budget: int) -> list[int]:
        """The longest run of `order` (slots by arrival) in consecutive slots whose prompts
        have not started, hold two tokens or more (one row takes another kernel), and fit
        `budget` together padded to the longest."""
        group: list[int] = []
        width = 0
        for s in order:
            g = self._running[s]
            if self._lengths[s] or g.cancelled or len(g.prompt) < 2:
                break
            if group and s != group[-1] + 1:
                break
            width = max(width, len(g.prompt))
            if width * (len(group) + 1) > budget:
                break
            group.append(s)
        return group

    def _remember(self, slot: int) -> None:
        if self.prefix_cache is None:
            return
        g = self._running[slot]
        try:
            self.prefix_cache.store(g.prompt, len(g.prompt), self.runner.cache, slot)
        except Exception:  # a cache failure costs speed, not the request
            log.exception("Failed to cache the prefix of request %d", g.id)

    def _decode(self) -> None:
        """One step for every decoding slot. Slots below the last decoding one that are still
        prefilling, and pad rows up to `min_batch`, run as scratch rows: their token goes at
        their first free position, which their next chunk overwrites, and their output is
        ignored."""
        decoding = [s for s, g in enumerate(self._running) if g.generated]
        count = max(decoding[-1] + 1, self.min_batch)
        tokens, lengths = [], []
        for s in range(count):
            if s < len(self._running) and self._running[s].generated:
                tokens.append(self._running[s].generated[-1])
            else:
                tokens.append(0)
            lengths.append(self._lengths[s] if s < len(self._running) else 0)
        logits = self.runner.decode(tokens, lengths)
        self.stats.steps += 1
        for s in decoding:
            self._lengths[s] += 1
        self._advance(decoding, logits[decoding])

    def _advance(self, slots: list[int], logits: Logits, finished: list[int] | None = None) -> None:
        """Sample the next token for each slot, stream it, and retire finished requests (and the
        slots in `finished`)."""
        finished = list(finished or [])
        for slot, row in zip(slots, logits, strict=True):
            g = self._running[slot]
            if g.cancelled:
                g.emit("", None, "cancelled")
                finished.append(slot)
                continue
            try:
                token = self._sample(g, row)
            except Exception as e:  # one request's sampling failure is its own
                log.exception("Failed to sample for request %d", g.id)
                self._fail([g], e)
                finished.append(slot)
                continue
            g.generated.append(token)
            self.stats.generated_tokens += 1
            if g.first_token_at is None:
                g.first_token_at = time.monotonic()
            reason = self._finish_reason(g, token, slot)
            if g.matcher is not None and g.matcher.finished:
                reason = "stop"  # the grammar is complete: nothing more may follow
            eos = token in self.eos_ids and not g.params.ignore_eos
            text, hit_stop = ("", False) if eos else g.stops.feed(g.decoder.push(token))
            if hit_stop:
                reason = "stop"
            elif reason is not None:
                text += g.stops.flush()
            g.emit(text, token, reason)
            if reason is not None:
                finished.append(slot)
                self._count_constrained(g)
        self._retire(finished)
        self.stats.running = len(self._running)

    def _sample(self, g: Generation, row: Logits) -> int:
        """The next token; a constrained request's only among those its grammar allows, and
        one that leaves room to complete the grammar within its budget."""
        if g.matcher is None:
            return sample(row, g.params, g.rng)
        started = time.perf_counter()
        remaining = g.params.max_tokens - len(g.generated)
        token = g.matcher.budgeted(sample(g.matcher.masked(row), g.params, g.rng), remaining)
        if not g.matcher.accept(token):
            raise RuntimeError(f"the grammar refused token {token}: {g.matcher.error}")
        self.stats.constraint_seconds += time.perf_counter() - started
        return token

    def _finish_reason(self, g: Generation, token: int, slot: int) -> str | None:
        if token in self.eos_ids and not g.params.ignore_eos:
            return "stop"
        if len(g.generated) >= g.params.max_tokens:
            return "length"
        if self._lengths[slot] + 1 >= self.runner.cache.capacity:
            return "length"
        return None

    def _count_constrained(self, g: Generation) -> None:
        if g.matcher is None:
            return
        self.stats.constrained += 1
        if not (g.matcher.accepting or g.matcher.done):
            self.stats.constrained_cut += 1
        elif g.matcher.closed:
            self.stats.constrained_closed += 1

    def _retire(self, slots: list[int]) -> None:
        """Free finished slots, moving the last running sequences into the holes."""
        for slot in sorted(set(slots), reverse=True):
            last = len(self._running) - 1
            if slot != last:
                self.runner.cache.move(last, slot, self._lengths[last])
                self._running[slot] = self._running[last]
                self._lengths[slot] = self._lengths[last]
            self._running.pop()
            self._lengths.pop()


def _chunk(remaining: int, budget: int) -> int:
    """How many of a prompt's `remaining` tokens (two or more, unless the prompt is one token)
    to prefill now within `budget` (at least 2): all of them if they fit or exceed it by one
    token, else `budget`, which leaves two tokens or more for later."""
    return remaining if remaining - budget <= 1 else budget
