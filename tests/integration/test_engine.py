"""The generation engine on the real int4 model: continuous batching, batch-invariant greedy
outputs, sampling, stops, limits, cancellation, streaming."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmchain_server.engine import (
    ContextLengthError,
    Engine,
    EngineSettings,
    EngineStopped,
    QueueFull,
    SamplingParams,
)
from llmchain_server.engine.cpu import cpu_kernels
from llmchain_server.engine.tokenizer import IncrementalDecoder
from llmchain_server.model import build_model
from tests.support.model import GGUF_SHA256, gguf_path
from tests.support.waiting import wait_for

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(model_dirs: Callable[[str], Path]) -> Iterator[Engine]:
    e = Engine(
        model_dirs("int4"), EngineSettings(provider="cpu", max_batch=8, max_waiting=16, context=512)
    )
    e.start()
    yield e
    e.stop()


def prompt(engine: Engine, messages: list[dict[str, str]]) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.render_chat(messages))


def tokens(engine: Engine, ids: list[int], params: SamplingParams) -> list[int | None]:
    return [c.token_id for c in engine.generate(ids, params)]


def test_loads_on_cpu_and_is_ready(engine: Engine) -> None:
    assert engine.ready
    assert engine.provider == "cpu"
    assert engine.quantization == "int4"


def test_metrics_name_the_provider_and_count_tokens(engine: Engine) -> None:
    before = engine.registry.get_sample_value("llmchain_generated_tokens_total") or 0
    engine.generate(prompt(engine, FRANCE), SamplingParams(max_tokens=3)).text()
    assert engine.registry.get_sample_value("llmchain_generated_tokens_total") == before + 3
    labels = {
        "digest": engine.digest,
        "quantization": "int4",
        "execution_provider": "cpu",
        "kernels": cpu_kernels().family,
    }
    assert engine.registry.get_sample_value("llmchain_model_info", labels) == 1
    assert engine.kernels == cpu_kernels().family != "unknown"
    assert engine.registry.get_sample_value("llmchain_engine_queue_depth") == 0


def test_a_request_joins_a_running_generation_between_steps(engine: Engine) -> None:
    """A request arriving 10 tokens into a 256-token generation gets its first token long
    before that generation ends, and both outputs equal their single-stream greedy outputs."""
    long_prompt, short_prompt = prompt(engine, STORY), prompt(engine, FRANCE)
    long_params, short_params = SamplingParams(max_tokens=256), SamplingParams(max_tokens=32)
    alone_long = tokens(engine, long_prompt, long_params)
    alone_short = tokens(engine, short_prompt, short_params)
    assert len(alone_long) == 256

    long_run = iter(engine.generate(long_prompt, long_params))
    together_long = [next(long_run).token_id for _ in range(10)]
    submitted = time.monotonic()
    short_run = engine.generate(short_prompt, short_params)
    first_short: list[float] = []
    together_short: list[int | None] = []

    def consume() -> None:
        for chunk in short_run:
            if not first_short:
                first_short.append(time.monotonic())
            together_short.append(chunk.token_id)

    reader = threading.Thread(target=consume)
    reader.start()
    last = None
    for chunk in long_run:
        together_long.append(chunk.token_id)
        last = chunk
    long_ended = time.monotonic()
    reader.join(timeout=60)

    assert last is not None and last.finish_reason == "length"
    ttft, remaining = first_short[0] - submitted, long_ended - submitted
    print(
        f"first token of the newcomer after {ttft:.3f} s; the long one ended after "
        f"{remaining:.3f} s"
    )
    assert ttft < remaining / 5
    assert together_long == alone_long
    assert together_short == alone_short


def test_eight_concurrent_requests_each_match_their_single_stream_output(engine: Engine) -> None:
    questions = [
        "What is 2 + 2?",
        "Name a colour.",
        "Say hello.",
        "What is the sea?",
        "Who wrote Hamlet?",
        "Name a fruit.",
        "What is rain?",
        "Count to three.",
    ]
    prompts = [prompt(engine, [{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(max_tokens=24)
    alone = [tokens(engine, p, params) for p in prompts]
    runs = [engine.generate(p, params) for p in prompts]
    together: list[list[int | None]] = [[] for _ in runs]

    def consume(i: int) -> None:
        together[i] = [c.token_id for c in runs[i]]

    readers = [threading.Thread(target=consume, args=(i,)) for i in range(len(runs))]
    for r in readers:
        r.start()
    for r in readers:
        r.join(timeout=120)
    assert together == alone


def test_requests_leaving_mid_batch_do_not_disturb_the_others(engine: Engine) -> None:
    """Finished requests leave the batch at different steps (their KV rows are compacted);
    greedy and seeded-sampled outputs still equal what each gives alone."""
    ids = prompt(engine, STORY)
    cases = [
        SamplingParams(max_tokens=5, ignore_eos=True),
        SamplingParams(max_tokens=40, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=0.8, seed=7, ignore_eos=True),
        SamplingParams(max_tokens=33, temperature=1.0, top_k=20, seed=3, ignore_eos=True),
        SamplingParams(max_tokens=2, ignore_eos=True),
    ]
    prompts = [ids, prompt(engine, FRANCE), ids, prompt(engine, FRANCE), ids]
    alone = [tokens(engine, p, c) for p, c in zip(prompts, cases, strict=True)]
    runs = [engine.generate(p, c) for p, c in zip(prompts, cases, strict=True)]
    together = [[ch.token_id for ch in run] for run in runs]
    assert together == alone
    assert [len(t) for t in together] == [5, 40, 12, 33, 2]


def test_streamed_text_is_the_decoded_output(engine: Engine) -> None:
    chunks = list(engine.generate(prompt(engine, FRANCE), SamplingParams(max_tokens=40)))
    ids = [c.token_id for c in chunks if c.token_id is not None]
    assert "".join(c.text for c in chunks) == engine.tokenizer.decode(ids)
    assert chunks[-1].completion_tokens == len(ids)
    assert chunks[-1].prompt_tokens == len(prompt(engine, FRANCE))


def test_incremental_decoding_never_splits_a_character(engine: Engine) -> None:
    text = "Grüße aus Köln 🙂 — 東京 and ½ cup"
    decoder = IncrementalDecoder(engine.tokenizer)
    deltas = [decoder.push(t) for t in engine.tokenizer.encode(text)]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_max_tokens_ends_with_length(engine: Engine) -> None:
    chunks = list(engine.generate(prompt(engine, STORY), SamplingParams(max_tokens=5)))
    assert len(chunks) == 5
    assert chunks[-1].finish_reason == "length"


def test_a_stop_sequence_ends_the_output_before_it(engine: Engine) -> None:
    ids = prompt(engine, STORY)
    full = engine.generate(ids, SamplingParams(max_tokens=40)).text()
    words = full.split()
    stop = " " + words[5]
    chunks = list(engine.generate(ids, SamplingParams(max_tokens=40, stop=(stop,))))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]


def test_a_seed_makes_sampling_repeatable(engine: Engine) -> None:
    ids = prompt(engine, STORY)
    seeded = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=1234)
    assert tokens(engine, ids, seeded) == tokens(engine, ids, seeded)
    others = {
        tuple(tokens(engine, ids, SamplingParams(max_tokens=24, temperature=1.0, seed=s)))
        for s in range(4)
    }
    assert len(others) > 1


def test_a_prompt_beyond_the_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ContextLengthError, match="exceed the context of 512 tokens"):
        engine.generate([1] * 500, SamplingParams(max_tokens=20))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], SamplingParams())


def test_bad_requests_are_refused_before_they_reach_the_model(engine: Engine) -> None:
    running = engine.generate(prompt(engine, STORY), SamplingParams(max_tokens=30))
    with pytest.raises(ValueError, match="token ids must be between 0 and 49151"):
        engine.generate([1, 10**6], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="token ids"):
        engine.generate([-5], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=1e-320)
    chunks = list(running)
    assert chunks[-1].finish_reason == "length" and chunks[-1].error is None


def test_an_abandoned_stream_frees_its_slot(engine: Engine) -> None:
    run = engine.generate(prompt(engine, STORY), SamplingParams(max_tokens=256))
    for _ in run:
        break  # the consumer walks away
    wait_for(
        lambda: engine.stats.running == 0, timeout=5, interval=0.01, what="the slot to be freed"
    )
    assert run.cancelled


def test_cancelling_frees_the_slot(engine: Engine) -> None:
    run = engine.generate(prompt(engine, STORY), SamplingParams(max_tokens=256))
    stream = iter(run)
    next(stream)
    run.cancel()
    rest = list(stream)
    assert rest[-1].finish_reason == "cancelled"
    wait_for(
        lambda: engine.stats.running == 0, timeout=5, interval=0.01, what="the slot to be freed"
    )


def test_async_consumers_stream_too(engine: Engine) -> None:
    async def run() -> str:
        g = engine.generate_async(prompt(engine, FRANCE), SamplingParams(max_tokens=12))
        return "".join([c.text async for c in g])

    assert (
        asyncio.run(run())
        == engine.generate(prompt(engine, FRANCE), SamplingParams(max_tokens=12)).text()
    )


def test_a_stopped_engine_refuses_new_work(model_dirs: Callable[[str], Path]) -> None:
    e = Engine(model_dirs("int4"), EngineSettings(provider="cpu", max_batch=1, context=64))
    e.start(warm_up=False)
    e.stop()
    with pytest.raises(EngineStopped):
        e.generate([1, 2, 3], SamplingParams(max_tokens=2))


def test_a_full_queue_refuses_at_once(model_dirs: Callable[[str], Path]) -> None:
    small = Engine(
        model_dirs("int4"), EngineSettings(provider="cpu", max_batch=1, max_waiting=1, context=512)
    )
    small.start(warm_up=False)
    try:
        ids = prompt(small, STORY)
        running = small.generate(ids, SamplingParams(max_tokens=200))
        stream = iter(running)
        next(stream)  # admitted and decoding
        waiting = small.generate(ids, SamplingParams(max_tokens=5))
        with pytest.raises(QueueFull, match="1 waiting"):
            small.generate(ids, SamplingParams(max_tokens=5))
        running.cancel()
        list(stream)
        assert waiting.text()
    finally:
        small.stop()


def test_an_exact_build_is_batch_invariant_too(tmp_path: Path) -> None:
    """Level 0 (`--accuracy exact`) has a fused one-row kernel that rounds differently from the
    several-row one, so quantized builds decode at least two rows whatever their plan."""
    folder = tmp_path / "exact"
    build_model(str(gguf_path()), folder, "int4", sha256=GGUF_SHA256, accuracy="exact")
    e = Engine(folder, EngineSettings(provider="cpu", max_batch=4, context=256))
    # One row alone differs from the same row among others in its last bits (measured: up to
    # 7e-5 in the logits), too little to flip every greedy token, so the padding is checked too.
    assert e.scheduler.min_batch == 2
    e.start(warm_up=False)
    try:
        prompts = [prompt(e, [{"role": "user", "content": q}]) for q in ("Say hello.", "Hi!")]
        params = SamplingParams(max_tokens=12)
        alone = tokens(e, prompts[0], params)
        runs = [e.generate(p, params) for p in prompts]
        assert [c.token_id for c in runs[0]] == alone
        assert all(c.error is None for c in runs[1])
    finally:
        e.stop()


def test_a_running_stream_waits_for_one_prefill_run_at_most_between_two_tokens(
    model_dirs: Callable[[str], Path],
) -> None:
    """Newcomers (a long prompt taking several chunks, short ones) arriving while a stream
    decodes are prefilled one run per decode step, so each of its tokens waits for one at most."""
    e = Engine(
        model_dirs("int4"),
        EngineSettings(provider="cpu", max_batch=8, context=1024, prefill_chunk=64),
    )
    e.start()
    calls: list[str] = []
    for name in ("prefill", "extend", "decode"):
        original = getattr(e.runner, name)

        def logged(
            *args: object, _f: Callable[..., object] = original, _n: str = name, **kw: object
        ) -> object:
            calls.append(_n)
            return _f(*args, **kw)

        setattr(e.runner, name, logged)
    try:
        running = e.generate(prompt(e, STORY), SamplingParams(max_tokens=40, ignore_eos=True))
        stream = iter(running)
        next(stream)  # decoding now
        long = prompt(e, [{"role": "user", "content": "Summarise: " + "the river rose. " * 60}])
        newcomers = [e.generate(long, SamplingParams(max_tokens=2))] + [
            e.generate(prompt(e, FRANCE), SamplingParams(max_tokens=2)) for _ in range(3)
        ]
        for g in newcomers:
            assert list(g)[-1].finish_reason == "length"
        rest = list(stream)
        assert rest[-1].finish_reason == "length"
    finally:
        e.stop()
    runs_between = [len(gap) for gap in "".join(c[0] for c in calls).split("d")[1:-1]]
    assert len(long) > 3 * 64 and max(runs_between) == 1, calls
