"""Prefix reuse and chunked prefill on the real int4 model: a prompt whose start was prefilled
before reuses those keys and values, a long prompt is prefilled in chunks between the running
streams' decode steps, and neither changes a single output token (greedy or seeded sampling)
against an engine that does neither."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from llmchain_server.engine import Engine, EngineSettings, SamplingParams
from llmchain_server.engine.prefix_cache import BLOCK_TOKENS
from llmchain_server.engine.scheduler import MIN_REUSE_TOKENS

SYSTEM = {
    "role": "system",
    "content": "You are a helpful assistant for travellers. Answer in one sentence, name places "
    "precisely, give distances in kilometres and never invent opening hours, prices or names. "
    "When you do not know, say so and suggest where the traveller could ask instead.",
}
QUESTIONS = [
    "What is the capital of France?",
    "And of Germany?",
    "Which of the two cities is bigger?",
    "Name a river in each.",
]


def make(folder: Path, chunk: int, prefix_tokens: int) -> Engine:
    settings = EngineSettings(
        provider="cpu",
        max_batch=8,
        max_waiting=32,
        context=1024,
        prefill_chunk=chunk,
        prefix_cache_tokens=prefix_tokens,
    )
    engine = Engine(folder, settings)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def plain(model_dirs: Callable[[str], Path]) -> Iterator[Engine]:
    """No prefix cache; whole prompts in one run."""
    engine = make(model_dirs("int4"), chunk=4096, prefix_tokens=0)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def reusing(model_dirs: Callable[[str], Path]) -> Iterator[Engine]:
    """A prefix cache and chunks of 24 tokens (so most prompts take several)."""
    engine = make(model_dirs("int4"), chunk=24, prefix_tokens=2048)
    yield engine
    engine.stop()


def ids(engine: Engine, messages: list[dict[str, str]]) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.render_chat(messages))


def run(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int | None]:
    return [c.token_id for c in engine.generate(prompt, params)]


def hits(engine: Engine) -> float:
    return engine.registry.get_sample_value("llmchain_prefix_cache_hit_tokens_total") or 0.0


def conversation(engine: Engine, params: SamplingParams, tag: str) -> list[list[int | None]]:
    """Four turns; each re-sends the history with the previous answers."""
    history = [SYSTEM]
    outputs = []
    for q in QUESTIONS:
        history.append({"role": "user", "content": f"{tag}{q}"})
        out = run(engine, ids(engine, history), params)
        outputs.append(out)
        answer = engine.tokenizer.decode([t for t in out if t is not None])
        history.append({"role": "assistant", "content": answer})
    return outputs


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=24),
        SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=11),
    ],
    ids=["greedy", "seeded"],
)
def test_a_conversation_reusing_its_history_answers_exactly_as_without(
    plain: Engine, reusing: Engine, params: SamplingParams
) -> None:
    before = hits(reusing)
    with_reuse = conversation(reusing, params, tag=f"[{params.seed}] ")
    without = conversation(plain, params, tag=f"[{params.seed}] ")
    assert with_reuse == without
    # turns 2-4 find the earlier turns' prompts (each at least MIN_REUSE_TOKENS)
    assert hits(reusing) - before >= 3 * MIN_REUSE_TOKENS
    assert hits(plain) == 0


def test_a_shared_system_prompt_is_computed_once_for_concurrent_requests(
    plain: Engine, reusing: Engine
) -> None:
    """Eight different questions behind one long system prompt, all at once: outputs equal
    the plain engine's one by one, and the second wave finds the shared prefix."""
    system = {"role": "system", "content": "You answer questions about geography. " * 12}
    prompts = [
        ids(reusing, [system, {"role": "user", "content": f"Question {i}: where is river {i}?"}])
        for i in range(8)
    ]
    params = SamplingParams(max_tokens=12)
    alone = [run(plain, p, params) for p in prompts]
    for _wave in range(2):
        before = hits(reusing)
        runs = [reusing.generate(p, params) for p in prompts]
        together: list[list[int | None]] = [[] for _ in runs]

        def consume(i: int) -> None:
            together[i] = [c.token_id for c in runs[i]]  # noqa: B023 (joined below)

        readers = [threading.Thread(target=consume, args=(i,)) for i in range(len(runs))]
        for r in readers:
            r.start()
        for r in readers:
            r.join(timeout=300)
        assert together == alone
    shared = len(ids(reusing, [system])) // BLOCK_TOKENS * BLOCK_TOKENS
    assert hits(reusing) - before >= 8 * shared


def test_a_long_prompt_is_prefilled_between_the_running_streams_steps(reusing: Engine) -> None:
    """A newcomer's 600-token prompt, prefilled in chunks of 24 tokens, lets a running stream
    go on getting tokens before the newcomer's first one; both outputs are unchanged."""
    story = ids(reusing, [{"role": "user", "content": "Write a long story about a dragon."}])
    story_params = SamplingParams(max_tokens=200, ignore_eos=True)
    long_prompt = ids(
        reusing,
        [{"role": "user", "content": "Summarise: " + "the river runs to the sea and back. " * 60}],
    )
    assert len(long_prompt) > 500
    long_params = SamplingParams(max_tokens=4)
    alone_story = run(reusing, story, story_params)
    alone_long = run(reusing, long_prompt, long_params)
    reusing.prefix_cache.clear()  # type: ignore[union-attr]  # compute it all again

    stream = iter(reusing.generate(story, story_params))
    got = [next(stream).token_id for _ in range(5)]
    newcomer = reusing.generate(long_prompt, long_params)
    newcomer_out: list[int | None] = []
    story_tokens_before_its_first: list[int] = []

    def consume() -> None:
        for chunk in newcomer:
            if not newcomer_out:
                story_tokens_before_its_first.append(len(got))
            newcomer_out.append(chunk.token_id)

    reader = threading.Thread(target=consume)
    reader.start()
    for chunk in stream:
        got.append(chunk.token_id)
    reader.join(timeout=300)
    assert newcomer_out == alone_long
    assert got == alone_story
    # 500+ tokens in chunks of 24: the running stream decoded between them
    assert story_tokens_before_its_first[0] - 5 >= 10


def test_a_full_cache_evicts_and_stays_within_its_bound(model_dirs: Callable[[str], Path]) -> None:
    small = make(model_dirs("int4"), chunk=64, prefix_tokens=8 * BLOCK_TOKENS)
    try:
        params = SamplingParams(max_tokens=4)
        outputs = []
        for i in range(6):
            q = [{"role": "user", "content": f"Topic {i}: tell me about the number {i} in detail."}]
            outputs.append(run(small, ids(small, q) * 4, params))
        stats = small.prefix_cache.stats  # type: ignore[union-attr]
        assert stats.used_blocks <= stats.capacity_blocks == 8
        assert small.registry.get_sample_value("llmchain_prefix_cache_evictions_total") > 0
        used = small.registry.get_sample_value("llmchain_prefix_cache_blocks", {"state": "used"})
        assert used == stats.used_blocks
        # the most recent prompt is still there, and reusing it changes nothing
        last = ids(small, q) * 4
        before = hits(small)
        assert run(small, last, params) == outputs[-1]
        assert hits(small) > before
    finally:
        small.stop()


def test_chunks_reproduce_a_whole_prompts_keys_and_values_bit_for_bit(plain: Engine) -> None:
    """The property the two features rest on: a prompt run whole, or as a first part and then
    chunks of two tokens or more after its cached past, leaves identical keys and values and
    last logits."""
    runner = plain.runner
    prompt = ids(plain, [{"role": "user", "content": "Count the stars: " + "one, two, " * 30}])
    whole = runner.prefill(0, [prompt])[0]
    first = 40
    runner.prefill(1, [prompt[:first]])
    at = first
    for size in (2, 17, 33, 5):
        last = runner.extend(1, at, prompt[at : at + size])
        at += size
    last = runner.extend(1, at, prompt[at:])
    assert np.array_equal(last, whole)
    n = len(prompt)
    for layer in range(runner.layers):
        assert np.array_equal(
            runner.cache.keys[layer][1, :, :n], runner.cache.keys[layer][0, :, :n]
        )
        assert np.array_equal(
            runner.cache.values[layer][1, :, :n], runner.cache.values[layer][0, :, :n]
        )


def test_a_first_token_s_logits_do_not_depend_on_the_prompts_run_with_it(plain: Engine) -> None:
    """The output head computes two rows per sequence, so a prompt's last logits are the same
    alone, padded into a group with longer and shorter prompts, or after a cached past."""
    runner = plain.runner
    prompt = ids(plain, [{"role": "user", "content": "Name three rivers of Europe."}])
    longer = ids(plain, [{"role": "user", "content": "Describe the Danube in detail. " * 5}])
    shorter = prompt[:7]
    alone = runner.prefill(0, [prompt])[0]
    grouped = runner.prefill(0, [longer, prompt, shorter])
    assert np.array_equal(grouped[1], alone)
    runner.prefill(1, [prompt[:16]])
    assert np.array_equal(runner.extend(1, 16, prompt[16:]), alone)
    assert np.array_equal(grouped[2], runner.prefill(2, [shorter])[0])
