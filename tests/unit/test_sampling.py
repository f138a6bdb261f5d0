"""Sampling and stop sequences."""

from __future__ import annotations

import numpy as np
import pytest

from llmchain_server.engine.sampling import SamplingParams, sample
from llmchain_server.engine.stops import StopMatcher

LOGITS = np.array([1.0, 3.0, 2.5, -1.0, 2.9], np.float32)


def test_greedy_takes_the_argmax() -> None:
    assert sample(LOGITS, SamplingParams(), np.random.default_rng()) == 1


def test_top_k_one_is_greedy_at_any_temperature() -> None:
    params = SamplingParams(temperature=5.0, top_k=1)
    assert {sample(LOGITS, params, np.random.default_rng(i)) for i in range(20)} == {1}


def test_top_k_limits_the_choice() -> None:
    params = SamplingParams(temperature=10.0, top_k=2)
    seen = {sample(LOGITS, params, np.random.default_rng(i)) for i in range(200)}
    assert seen == {1, 4}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.3)
    assert {sample(LOGITS, params, np.random.default_rng(i)) for i in range(100)} == {1}


def test_a_seed_repeats_a_sampled_sequence() -> None:
    params = SamplingParams(temperature=1.0, seed=42)
    rng_a, rng_b = np.random.default_rng(42), np.random.default_rng(42)
    a = [sample(LOGITS, params, rng_a) for _ in range(50)]
    b = [sample(LOGITS, params, rng_b) for _ in range(50)]
    assert a == b and len(set(a)) > 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_invalid_parameters_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def feed_all(matcher: StopMatcher, deltas: list[str]) -> tuple[str, bool]:
    out = ""
    for d in deltas:
        text, hit = matcher.feed(d)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


def test_stop_sequence_split_across_tokens_is_not_emitted() -> None:
    assert feed_all(StopMatcher(("\nUser:",)), ["Paris", ".", "\nUs", "er:", " more"]) == (
        "Paris.",
        True,
    )


def test_a_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    m = StopMatcher(("END",))
    assert m.feed("the EN") == ("the ", False)
    assert m.feed("D") == ("", True)
    m2 = StopMatcher(("END",))
    assert feed_all(m2, ["the EN", "ding"]) == ("the ENding", False)


def test_no_stops_streams_everything() -> None:
    assert feed_all(StopMatcher(()), ["a", "b"]) == ("ab", False)
