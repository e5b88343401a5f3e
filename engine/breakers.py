"""Circuit breakers and cooldowns, one per deployment.

A breaker is ``closed`` (traffic flows), ``open`` (the deployment is out of routing) or
``half_open`` (a limited number of probe requests may go through). It opens when the
deployment fails ``consecutive_failures`` times in a row, or when at least ``min_attempts``
attempts in the last ``window_s`` seconds failed at ``error_rate`` or more. After ``open_s`` it
turns half-open; a probe that succeeds closes it, one that fails opens it again.

A 429 with Retry-After puts the deployment in a cooldown for that long (capped at
``cooldown_max_s``) without counting as a failure: the provider said when to come back. When the
cooldown ends the breaker is half-open, so one probe brings the deployment back.

Failures the client caused (bad request, context length, going away) do not count either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import BreakerConfig
from engine.windows import RollingCounter

BreakerState = Literal["closed", "open", "half_open"]
NEUTRAL_CAUSES = frozenset({"bad_request", "context_length", "client_closed"})


@dataclass(frozen=True, slots=True)
class BreakerView:
    state: BreakerState
    reason: str
    """Why it is open or half-open ("5 failures in a row", "429, Retry-After 5 s")."""
    left_s: float | None
    """Seconds until an open breaker or a cooldown lets a probe through; None when closed."""


class _Breaker:
    __slots__ = ("attempts", "consecutive", "failures", "opened_until", "probes", "reason", "state")

    def __init__(self, window: int) -> None:
        self.state: BreakerState = "closed"
        self.attempts = RollingCounter(window)
        self.failures = RollingCounter(window)
        self.consecutive = 0
        self.opened_until = 0.0
        self.probes = 0
        self.reason = ""


class Breakers:
    def __init__(
        self, config: BreakerConfig, names: list[str] | tuple[str, ...], *, cooldown_max_s: float
    ) -> None:
        self._config = config
        self._cooldown_max = cooldown_max_s
        self._breakers = {name: _Breaker(config.window_s) for name in names}

    def _refresh(self, b: _Breaker, now: float) -> None:
        if b.state == "open" and now >= b.opened_until:
            b.state = "half_open"
            b.probes = 0

    def unavailable(self, name: str, now: float) -> str:
        """Why ``name`` cannot take a request now, or "" when it can."""
        b = self._breakers[name]
        self._refresh(b, now)
        if b.state == "open":
            return f"breaker open ({b.reason}), {b.opened_until - now:.0f} s left"
        if b.state == "half_open" and b.probes >= self._config.half_open_probes:
            return "breaker half-open, probe in flight"
        return ""

    def begin(self, name: str, now: float) -> None:
        """An attempt starts: in half-open state it takes a probe slot."""
        b = self._breakers[name]
        self._refresh(b, now)
        if b.state == "half_open":
            b.probes += 1

    def record(
        self, name: str, cause: str, now: float, *, retry_after: float | None = None
    ) -> None:
        """An attempt ended with ``cause`` ("ok" or a failure cause)."""
        b = self._breakers[name]
        probing = b.state == "half_open"
        if probing:
            b.probes = max(0, b.probes - 1)
        if cause in NEUTRAL_CAUSES:
            return
        if cause == "ok":
            b.attempts.add(now)
            b.consecutive = 0
            if probing:
                b.state, b.reason = "closed", ""
            return
        if cause == "429" and retry_after is not None:
            wait = min(retry_after, self._cooldown_max)
            if wait > 0:
                self._open(b, now, wait, f"429, Retry-After {retry_after:g} s")
            return
        b.attempts.add(now)
        b.failures.add(now)
        b.consecutive += 1
        c = self._config
        if probing:
            self._open(b, now, c.open_s, f"probe failed: {cause}")
        elif b.consecutive >= c.consecutive_failures:
            self._open(b, now, c.open_s, f"{b.consecutive} failures in a row, last {cause}")
        else:
            attempts = b.attempts.total(now)
            failures = b.failures.total(now)
            if attempts >= c.min_attempts and failures / attempts >= c.error_rate:
                self._open(
                    b,
                    now,
                    c.open_s,
                    f"{failures}/{attempts} failed in {c.window_s} s, last {cause}",
                )

    def _open(self, b: _Breaker, now: float, seconds: float, reason: str) -> None:
        until = now + seconds
        if b.state == "open" and b.opened_until > until:
            until = b.opened_until  # never shorten a longer wait already in force
        b.state, b.opened_until, b.reason, b.consecutive = "open", until, reason, 0

    def view(self, name: str, now: float) -> BreakerView:
        b = self._breakers[name]
        self._refresh(b, now)
        left = max(0.0, b.opened_until - now) if b.state == "open" else None
        return BreakerView(b.state, b.reason, left)
