"""The one backoff law (zapfleet/backoff.py): growth, ceiling, jitter bounds, and the
loops built on it. The dispatcher's and the supervisor's own laws are pinned by
tests/webhooks/test_delivery.py and tests/test_agent_node.py; both call this module."""

from __future__ import annotations

import random
import statistics

import pytest

from zapfleet.backoff import CAS, Backoff, Retrier, cas_attempts


def test_the_ceiling_doubles_from_the_base_and_stops_at_the_cap() -> None:
    law = Backoff(base_s=0.5, max_s=10.0, jitter="none")
    assert [law.ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert law.ceiling(0) == law.ceiling(-3) == 0.5  # no attempt yet counts as the first
    assert law.ceiling(5000) == 10.0  # no overflow far past the cap
    assert [law.delay(n) for n in range(1, 8)] == [law.ceiling(n) for n in range(1, 8)]


def test_full_jitter_spans_floor_to_ceiling_and_grows_on_average() -> None:
    random.seed(7)
    for floor in (0.0, 0.25):
        law = Backoff(base_s=0.25, max_s=4.0, jitter="full", floor_s=floor)
        means = []
        for attempt in range(1, 9):
            ceiling = law.ceiling(attempt)
            delays = [law.delay(attempt) for _ in range(2000)]
            assert min(delays) >= floor
            assert max(delays) <= ceiling
            spread = ceiling - floor
            assert min(delays) <= floor + 0.05 * spread  # the whole range is used
            assert max(delays) >= floor + 0.95 * spread
            means.append(statistics.mean(delays))
        assert means[:5] == sorted(means[:5])  # longer on average until the cap


def test_proportional_jitter_adds_at_most_its_spread() -> None:
    law = Backoff(base_s=0.1, max_s=1.0, jitter="proportional", spread=0.1)
    for attempt in range(1, 10):
        ceiling = law.ceiling(attempt)
        delays = [law.delay(attempt) for _ in range(500)]
        assert all(ceiling <= d <= ceiling * 1.1 for d in delays)
        assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("base", "cap", "floor", "spread"),
    [(0.0, 1.0, 0.0, 0.1), (2.0, 1.0, 0.0, 0.1), (1.0, 2.0, 1.5, 0.1), (1.0, 2.0, 0, -1)],
)
def test_a_meaningless_law_is_refused(base: float, cap: float, floor: float, spread: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=base, max_s=cap, floor_s=floor, spread=spread)


def test_a_retrier_grows_with_each_failure_and_starts_over_after_a_success() -> None:
    retrier = Retrier(Backoff(base_s=1.0, max_s=8.0, jitter="none"))
    assert [retrier.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    retrier.reset()
    assert retrier.next_delay() == 1


async def test_cas_attempts_yields_each_attempt_once_and_pauses_only_between() -> None:
    paused: list[float] = []

    class Counting(Backoff):
        def delay(self, attempt: int) -> float:
            paused.append(attempt)
            return 0.0

    law = Counting(base_s=CAS.base_s, max_s=CAS.max_s)
    assert [n async for n in cas_attempts(4, law)] == [0, 1, 2, 3]
    assert paused == [1, 2, 3]  # none before the first attempt
    assert CAS.max_s <= 0.05  # a lost compare-and-set waits for a round trip, not seconds
