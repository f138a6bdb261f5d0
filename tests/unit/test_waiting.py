"""tests.support.waiting.wait_for: the one helper tests wait with."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import wait_for


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", {"ready": True}])
    assert wait_for(lambda: next(answers), timeout=5, interval=0) == {"ready": True}


def test_a_timeout_fails_naming_what_was_awaited_and_the_last_value() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError) as error:
        wait_for(lambda: next(counter) < 0, timeout=0.5, interval=0.01, what="the pod to be Ready")
    assert str(error.value) == "timed out after 0.5s waiting for 'the pod to be Ready': False"
    assert next(counter) > 1  # it polled more than once (a busy machine still manages two)
