"""Bounded rolling windows: per-second counters and latency histograms over the last N seconds.

Memory is fixed by the window length, never by traffic: a counter is a ring of N integers, a
histogram a ring of N sparse maps over log-spaced bins (about 4% wide, so a quantile is within
about 2% of the true value). Seconds are bucketed by ``int(now)``; a bucket is reset lazily the
first time it is touched in a new second, so idle windows cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Bin i holds values in [BASE**i, BASE**(i+1)) milliseconds; bin 0 also holds everything below 1.
_BASE = 1.04
_LOG_BASE = math.log(_BASE)


def _bin(value_ms: float) -> int:
    return int(math.log(value_ms) / _LOG_BASE) if value_ms > 1.0 else 0


def _bin_value(index: int) -> float:
    # The geometric middle of the bin, so the error is symmetric.
    return float(_BASE ** (index + 0.5)) if index > 0 else 1.0


class RollingCounter:
    __slots__ = ("_counts", "_seconds", "_size")

    def __init__(self, seconds: int) -> None:
        self._size = seconds
        self._counts = [0] * seconds
        self._seconds = [-1] * seconds

    def add(self, now: float, amount: int = 1) -> None:
        second = int(now)
        i = second % self._size
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._counts[i] = 0
        self._counts[i] += amount

    def total(self, now: float, span: int | None = None) -> int:
        """The sum over the last ``span`` seconds (the whole window by default), this one included."""
        second = int(now)
        oldest = second - (span or self._size) + 1
        return sum(
            c for c, s in zip(self._counts, self._seconds, strict=True) if oldest <= s <= second
        )

    def series(self, now: float, span: int | None = None) -> tuple[int, ...]:
        """Per-second values, oldest first, ending with the current second."""
        second = int(now)
        span = min(span or self._size, self._size)
        out = []
        for s in range(second - span + 1, second + 1):
            i = s % self._size
            out.append(self._counts[i] if self._seconds[i] == s else 0)
        return tuple(out)


class RollingHistogram:
    __slots__ = ("_bins", "_seconds", "_size")

    def __init__(self, seconds: int) -> None:
        self._size = seconds
        self._bins: list[dict[int, int]] = [{} for _ in range(seconds)]
        self._seconds = [-1] * seconds

    def add(self, now: float, value_ms: float) -> None:
        second = int(now)
        i = second % self._size
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._bins[i] = {}
        b = _bin(value_ms)
        bins = self._bins[i]
        bins[b] = bins.get(b, 0) + 1

    def _merged(self, now: float, span: int | None) -> dict[int, int]:
        second = int(now)
        oldest = second - (span or self._size) + 1
        merged: dict[int, int] = {}
        for bins, s in zip(self._bins, self._seconds, strict=True):
            if oldest <= s <= second:
                for b, n in bins.items():
                    merged[b] = merged.get(b, 0) + n
        return merged

    def quantiles(
        self, now: float, qs: Iterable[float], span: int | None = None
    ) -> tuple[float | None, ...]:
        """Each requested quantile in ms, or None when the window holds no sample."""
        merged = self._merged(now, span)
        total = sum(merged.values())
        qs = tuple(qs)
        if total == 0:
            return tuple(None for _ in qs)
        ordered = sorted(merged.items())
        out: list[float | None] = []
        for q in qs:
            rank = max(1, math.ceil(q * total))
            seen = 0
            for b, n in ordered:
                seen += n
                if seen >= rank:
                    out.append(_bin_value(b))
                    break
        return tuple(out)
