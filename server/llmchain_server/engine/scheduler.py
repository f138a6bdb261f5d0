"""Continuous batching: one thread runs the model. Between decode steps it admits waiting
requests (prefilling them into free KV slots) and retires finished ones, so a request never waits
for another to end. The waiting queue is bounded; a full queue refuses at once."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from llmchain_server.engine.request import Generation
from llmchain_server.engine.runner import Logits, ModelRunner
from llmchain_server.engine.sampling import sample
from llmchain_server.errors import Draining, Overloaded

log = logging.getLogger(__name__)


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


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        eos_ids: frozenset[int],
        max_batch: int,
        max_waiting: int,
        min_batch: int = 1,
        prefill_tokens: int = 2048,
    ) -> None:
        self.runner = runner
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        # Some kernels (MatMulNBits with int8 activations) take another path for one row than
        # for several; decoding at least `min_batch` rows keeps every output batch-invariant.
        self.min_batch = min(min_batch, runner.cache.slots)
        self.prefill_tokens = prefill_tokens
        self.stats = EngineStats()
        self._waiting: collections.deque[Generation] = collections.deque()
        self._running: list[Generation] = []  # index = KV slot
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
            if admitted:
                try:
                    self._prefill(admitted)
                except Exception as e:  # only the newcomers fail; the running batch goes on
                    log.exception("Failed a prefill; ended %d new requests", len(admitted))
                    self._fail(admitted, e)
            if self._running:
                try:
                    self._decode()
                except Exception as e:  # never let one bad step kill the engine
                    log.exception("Failed a decode step; ended %d requests", len(self._running))
                    self._fail(list(self._running), e)
                    self._running.clear()
                    self._lengths.clear()
                    self.stats.running = 0
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
        budget = self.prefill_tokens
        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
            g = self._waiting[0]
            if g.cancelled:
                self._waiting.popleft().emit("", None, "cancelled")
                continue
            width = max([len(g.prompt), *(len(a.prompt) for a in admitted)])
            if admitted and width * (len(admitted) + 1) > budget:
                break
            admitted.append(self._waiting.popleft())
        self.stats.waiting = len(self._waiting)
        return admitted

    def _prefill(self, admitted: list[Generation]) -> None:
        first = len(self._running)
        logits = self.runner.prefill(first, [g.prompt for g in admitted])  # may raise: nothing
        self.stats.prefills += 1  # below is committed until the model has run
        for g in admitted:
            self._running.append(g)
            self._lengths.append(len(g.prompt))
            self.stats.prompt_tokens += len(g.prompt)
        self._advance(list(range(first, first + len(admitted))), logits)

    def _decode(self) -> None:
        count = len(self._running)
        tokens = [g.generated[-1] for g in self._running]
        lengths = list(self._lengths)
        pad = max(0, self.min_batch - count)
        tokens += [0] * pad
        lengths += [0] * pad  # a scratch row in a free slot; its output is ignored
        logits = self.runner.decode(tokens, lengths)[:count]
        self.stats.steps += 1
        for slot in range(count):
            self._lengths[slot] += 1
        self._advance(list(range(count)), logits)

    def _advance(self, slots: list[int], logits: Logits) -> None:
        """Sample the next token for each slot, stream it, and retire finished requests."""
        finished: list[int] = []
        for slot, row in zip(slots, logits, strict=True):
            g = self._running[slot]
            if g.cancelled:
                g.emit("", None, "cancelled")
                finished.append(slot)
                continue
            try:
                token = sample(row, g.params, g.rng)
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
            eos = token in self.eos_ids and not g.params.ignore_eos
            text, hit_stop = ("", False) if eos else g.stops.feed(g.decoder.push(token))
            if hit_stop:
                reason = "stop"
            elif reason is not None:
                text += g.stops.flush()
            g.emit(text, token, reason)
            if reason is not None:
                finished.append(slot)
        self._retire(finished)
        self.stats.running = len(self._running)

    def _finish_reason(self, g: Generation, token: int, slot: int) -> str | None:
        if token in self.eos_ids and not g.params.ignore_eos:
            return "stop"
        if len(g.generated) >= g.params.max_tokens:
            return "length"
        if self._lengths[slot] + 1 >= self.runner.cache.capacity:
            return "length"
        return None

    def _retire(self, slots: list[int]) -> None:
        """Free finished slots, moving the last running sequences into the holes."""
        for slot in sorted(slots, reverse=True):
            last = len(self._running) - 1
            if slot != last:
                self.runner.cache.move(last, slot, self._lengths[last])
                self._running[slot] = self._running[last]
                self._lengths[slot] = self._lengths[last]
            self._running.pop()
            self._lengths.pop()
