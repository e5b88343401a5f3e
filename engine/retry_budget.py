"""The retry budget: extra attempts may be at most a share of recent requests.

Every request counts once; every attempt after a request's first (a retry or a fallback) is an
extra attempt. An extra attempt is allowed while the extra attempts of the last ``window_s``
seconds stay under ``ratio`` x the requests of that window, plus a small ``floor`` so a quiet
service can still fall back. During an outage this caps upstream load and cost at about
(1 + ratio) x the incoming requests, instead of multiplying it by the length of the chain.
"""

from __future__ import annotations

from engine.windows import RollingCounter


class RetryBudget:
    def __init__(self, ratio: float, window_s: int, floor: int) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self.floor = floor
        self._requests = RollingCounter(window_s)
        self._extra = RollingCounter(window_s)

    def request(self, now: float) -> None:
        self._requests.add(now)

    def allowance(self, now: float) -> float:
        return self.ratio * self._requests.total(now) + self.floor

    def try_spend(self, now: float) -> bool:
        """Take one extra attempt from the budget; False (and nothing taken) when it is spent."""
        if self._extra.total(now) + 1 > self.allowance(now):
            return False
        self._extra.add(now)
        return True

    def spent(self, now: float) -> int:
        return self._extra.total(now)

    def describe(self, now: float) -> str:
        return (
            f"{self.spent(now)} extra attempts in the last {self.window_s} s against a budget of "
            f"{self.allowance(now):.0f} ({self.ratio:.0%} of {self._requests.total(now)} requests"
            f" + {self.floor})"
        )
