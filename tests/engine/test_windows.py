"""Rolling windows: counts and quantiles over the last N seconds, in fixed memory."""

from __future__ import annotations

import random

from engine.windows import RollingCounter, RollingHistogram


def test_counter_forgets_seconds_outside_the_window() -> None:
    c = RollingCounter(10)
    c.add(100.0, 5)
    c.add(100.9, 1)
    c.add(105.2, 2)
    assert c.total(105.5) == 8
    assert c.total(105.5, span=3) == 2
    assert c.total(109.99) == 8
    assert c.total(110.0) == 2  # second 100 fell out
    assert c.total(200.0) == 0
    c.add(200.0)  # reuses the slot second 100 had: stale counts must not leak in
    assert c.total(200.0) == 1


def test_counter_series_is_oldest_first_with_gaps_as_zero() -> None:
    c = RollingCounter(60)
    c.add(10.0, 1)
    c.add(12.0, 3)
    assert c.series(12.5, span=4) == (0, 1, 0, 3)


def test_histogram_quantiles_are_within_a_few_percent() -> None:
    rng = random.Random(7)
    h = RollingHistogram(10)
    values = [rng.lognormvariate(4, 1) for _ in range(20_000)]
    for i, v in enumerate(values):
        h.add(1000 + i / 4000, v)
    values.sort()
    for q, got in zip((0.5, 0.95, 0.99), h.quantiles(1005.0, (0.5, 0.95, 0.99)), strict=True):
        exact = values[int(q * len(values)) - 1]
        assert got is not None
        assert abs(got - exact) / exact < 0.04, (q, got, exact)


def test_histogram_window_and_empty() -> None:
    h = RollingHistogram(5)
    assert h.quantiles(0.0, (0.5,)) == (None,)
    h.add(10.0, 1000.0)
    h.add(14.0, 10.0)
    (p99,) = h.quantiles(14.0, (0.99,))
    assert p99 is not None and p99 > 900
    (p99,) = h.quantiles(15.0, (0.99,))  # the 1000 ms sample is out of the window now
    assert p99 is not None and p99 < 11
    (p99,) = h.quantiles(14.0, (0.99,), span=1)  # only second 14 counts
    assert p99 is not None and p99 < 11
