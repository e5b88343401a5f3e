"""Failure injection for the simulated upstream, changeable while it runs.

A `ChaosRule` is scoped to a provider prefix (or ``"*"`` for every provider) and optionally to one
model. For a request, exactly one rule applies — the most specific of ``(provider, model)``,
``(provider, any model)``, ``("*", model)``, ``("*", any model)`` — and knobs are never merged
across rules, so a rule with every knob at its default exempts its scope from a broader rule.
Setting a rule replaces whatever rule had the same scope.

Knobs:

- ``error_rate`` (0..1): answer with ``error_status`` (429, 500, 502, 503, 504 or 529) in the
  protocol's error shape; ``retry_after`` seconds, when set, goes into ``Retry-After`` (whole
  seconds, rounded up) and ``retry-after-ms``.
- ``hang_rate`` (0..1): read the request and never answer, until the client disconnects.
- ``reset_rate`` (0..1): reset the TCP connection before sending any byte.
- ``extra_latency_ms`` (>= 0): added before the answer (or before the first streamed byte).
- ``slow_stream`` (> 0): divides the profile's ``tokens_per_s``.
- ``midstream_fail_rate`` (0..1): send the headers and a few chunks (one to three pieces of a
  stream, half of a plain body), then close the connection without the terminating event.

``error_rate + hang_rate + reset_rate`` must not exceed 1: one draw picks at most one of them.
Draws come from one RNG seeded by the server's seed, and every request a rule applies to takes
the same number of draws, so a run with the same seed, rules and request order repeats exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from providers.sim.dialect import INJECTABLE

ANY = "*"


class ChaosError(ValueError):
    """A rule that makes no sense; the message names the knob and what is allowed."""


@dataclass(frozen=True, slots=True)
class ChaosRule:
    """Failure knobs for one scope; construction validates them (raises `ChaosError`)."""

    provider: str = ANY
    model: str | None = None
    error_rate: float = 0.0
    error_status: int = 500
    retry_after: float | None = None
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    extra_latency_ms: float = 0.0
    slow_stream: float = 1.0
    midstream_fail_rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or not self.provider or "/" in self.provider:
            raise ChaosError(f"provider must be a provider prefix or '*', got {self.provider!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ChaosError(f"model must be a model name or null, got {self.model!r}")
        for name in ("error_rate", "hang_rate", "reset_rate", "midstream_fail_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ChaosError(f"{name} must be a number between 0 and 1, got {value!r}")
        total = self.error_rate + self.hang_rate + self.reset_rate
        if total > 1.0 + 1e-9:
            raise ChaosError(
                f"error_rate + hang_rate + reset_rate must not exceed 1, got {total:g}"
            )
        if isinstance(self.error_status, bool) or self.error_status not in INJECTABLE:
            allowed = ", ".join(str(s) for s in INJECTABLE)
            raise ChaosError(f"error_status must be one of {allowed}, got {self.error_status!r}")
        if self.retry_after is not None and (
            not _is_number(self.retry_after) or self.retry_after < 0
        ):
            raise ChaosError(
                f"retry_after must be a number of seconds >= 0 or null, got {self.retry_after!r}"
            )
        if not _is_number(self.extra_latency_ms) or self.extra_latency_ms < 0:
            raise ChaosError(
                f"extra_latency_ms must be a number >= 0, got {self.extra_latency_ms!r}"
            )
        if not _is_number(self.slow_stream) or self.slow_stream <= 0:
            raise ChaosError(f"slow_stream must be a number > 0, got {self.slow_stream!r}")

    @classmethod
    def from_json(cls, data: object) -> ChaosRule:
        """A rule from the control endpoint's JSON; unknown keys are rejected by name."""
        if not isinstance(data, dict):
            raise ChaosError("the body must be a JSON object of chaos knobs")
        if "provider" not in data:
            raise ChaosError("provider is required: a provider prefix, or '*' for every provider")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ChaosError(
                f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """The rule as the control endpoint shows it."""
        return asdict(self)

    @property
    def scope(self) -> tuple[str, str | None]:
        return (self.provider, self.model)


Outcome = Literal["ok", "error", "hang", "reset"]


@dataclass(frozen=True, slots=True)
class ChaosDecision:
    """What to do to one request.

    ``break_at`` is set when a midstream failure was drawn: a fraction in [0, 1) that picks how
    much is sent before the connection is closed.
    """

    outcome: Outcome = "ok"
    status: int = 0
    retry_after: float | None = None
    extra_latency_ms: float = 0.0
    slow_stream: float = 1.0
    break_at: float | None = None


NO_CHAOS = ChaosDecision()


class ChaosController:
    """The live set of rules and the seeded RNG that draws from them.

    Owned by one `SimServer` and used on its event loop only.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rules: dict[tuple[str, str | None], ChaosRule] = {}
        self._rng = random.Random(f"chaos:{seed}")

    def set(
        self,
        provider: str = ANY,
        *,
        model: str | None = None,
        error_rate: float = 0.0,
        error_status: int = 500,
        retry_after: float | None = None,
        hang_rate: float = 0.0,
        reset_rate: float = 0.0,
        extra_latency_ms: float = 0.0,
        slow_stream: float = 1.0,
        midstream_fail_rate: float = 0.0,
    ) -> ChaosRule:
        """Set (replace) the rule for ``(provider, model)`` and return it."""
        return self.put(
            ChaosRule(
                provider=provider,
                model=model,
                error_rate=error_rate,
                error_status=error_status,
                retry_after=retry_after,
                hang_rate=hang_rate,
                reset_rate=reset_rate,
                extra_latency_ms=extra_latency_ms,
                slow_stream=slow_stream,
                midstream_fail_rate=midstream_fail_rate,
            )
        )

    def put(self, rule: ChaosRule) -> ChaosRule:
        """Set (replace) the rule for ``rule.scope``."""
        self._rules[rule.scope] = rule
        return rule

    def clear(self, provider: str | None = None, model: str | None = None) -> int:
        """Remove every rule, or those of ``provider`` (and ``model``); return how many."""
        doomed = [
            scope
            for scope in self._rules
            if (provider is None or scope[0] == provider) and (model is None or scope[1] == model)
        ]
        for scope in doomed:
            del self._rules[scope]
        return len(doomed)

    def rules(self) -> tuple[ChaosRule, ...]:
        """The current rules, in the order they were first set."""
        return tuple(self._rules.values())

    def rule_for(self, provider: str, model: str | None) -> ChaosRule | None:
        """The one rule that applies to a request for ``model`` at ``provider``, if any."""
        rules = self._rules
        return (
            rules.get((provider, model))
            or rules.get((provider, None))
            or rules.get((ANY, model))
            or rules.get((ANY, None))
        )

    def decide(self, provider: str, model: str | None) -> ChaosDecision:
        """Draw what happens to one request."""
        if not self._rules:
            return NO_CHAOS
        rule = self.rule_for(provider, model)
        if rule is None:
            return NO_CHAOS
        # Always three draws, whatever the knobs, so one rule's settings do not shift the
        # sequence another scope sees.
        pick, midstream, point = self._rng.random(), self._rng.random(), self._rng.random()
        outcome: Outcome = "ok"
        if pick < rule.reset_rate:
            outcome = "reset"
        elif pick < rule.reset_rate + rule.hang_rate:
            outcome = "hang"
        elif pick < rule.reset_rate + rule.hang_rate + rule.error_rate:
            outcome = "error"
        return ChaosDecision(
            outcome=outcome,
            status=rule.error_status if outcome == "error" else 0,
            retry_after=rule.retry_after,
            extra_latency_ms=rule.extra_latency_ms,
            slow_stream=rule.slow_stream,
            break_at=point if midstream < rule.midstream_fail_rate else None,
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
