"""The `Snapshot`: an immutable value of everything the console's panes show.

The engine publishes one a few times a second; the console (embedded or attached through
``GET /admin/snapshot``) renders only from it. Everything is a frozen, slotted dataclass of
tuples, so a snapshot can be shared across tasks and serialised (``to_dict``) without copying.
Rates and quantiles cover the last ``window_s`` seconds; sparklines are one value per second
over the last 60 seconds, oldest first. A number that cannot be known (no sample yet, no price)
is None, never 0.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

HealthState = Literal["healthy", "degraded", "down", "drained", "idle"]


@dataclass(frozen=True, slots=True)
class DeploymentView:
    name: str
    provider: str
    model: str
    state: HealthState
    state_reason: str
    rps: float
    share: float
    """Share of the window's successful attempts served here, 0..1."""
    attempts: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p95_ms: float | None
    error_rate: float | None
    rate_429: float | None
    timeout_rate: float | None
    errors_by_cause: tuple[tuple[str, int], ...]
    in_flight: int
    input_tokens_per_req: float | None
    output_tokens_per_req: float | None
    spark: tuple[int, ...]
    breaker: str = "closed"
    """``closed``, ``open`` or ``half_open``."""
    breaker_reason: str = ""
    breaker_left_s: float | None = None
    """Seconds until an open breaker (or a 429 cooldown) lets a probe through."""


@dataclass(frozen=True, slots=True)
class ProviderView:
    name: str
    protocol: str
    region: str
    simulated: bool
    state: HealthState
    state_reason: str
    rps: float
    share: float
    p95_ms: float | None
    error_rate: float | None
    rate_429: float | None
    timeout_rate: float | None
    in_flight: int
    deployments: tuple[str, ...]
    spark: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TierStepView:
    deployment: str
    state: HealthState
    share: float
    """Share of this tier's served requests that this deployment answered in the window."""


@dataclass(frozen=True, slots=True)
class TierView:
    name: str
    description: str
    steps: tuple[TierStepView, ...]
    rps: float
    fallback_ratio: float | None
    skipped: tuple[tuple[str, str], ...] = ()
    """Deployments out of this tier's rotation right now, with why (drained, breaker open)."""


@dataclass(frozen=True, slots=True)
class FallbackView:
    ratio: float | None
    """Served requests that a fallback answered, over all served requests in the window."""
    requests: int
    fallbacks: int
    by_cause: tuple[tuple[str, int], ...]
    """Attempt failures that caused a fallback, by cause."""
    spark: tuple[int, ...]
    """Fallbacks per second."""


@dataclass(frozen=True, slots=True)
class TokenView:
    input_per_min: int
    output_per_min: int
    input_today: int
    output_today: int
    by_tier: tuple[tuple[str, int, int], ...]
    """(tier, input tokens today, output tokens today)."""
    by_tenant: tuple[tuple[str, int, int], ...]
    spark: tuple[int, ...]
    """Tokens (input + output) per second."""


@dataclass(frozen=True, slots=True)
class RequestView:
    request_id: str
    at: float
    tenant: str
    model: str
    tier: str | None
    tier_reason: str | None
    deployment: str | None
    status: int
    outcome: str
    latency_ms: float
    input_tokens: int | None
    output_tokens: int | None
    stream: bool
    path: tuple[str, ...]
    """Deployments tried, in order; more than one means a fallback."""


@dataclass(frozen=True, slots=True)
class RolloutView:
    """The release rollout; None in a snapshot while no rollout exists."""

    release: str
    stage: str


@dataclass(frozen=True, slots=True)
class AuditView:
    """One operator action, as the event log shows it."""

    id: int
    at: float
    actor: str
    action: str
    target: str | None
    result: str
    summary: str


@dataclass(frozen=True, slots=True)
class DrillView:
    provider: str
    kind: str


@dataclass(frozen=True, slots=True)
class TenantSpendView:
    tenant: str
    spent_today_usd: float
    daily_budget_usd: float | None
    spent_month_usd: float
    monthly_budget_usd: float | None


@dataclass(frozen=True, slots=True)
class SpendView:
    """Dollars today (UTC). ``today_usd`` and the tenants' figures come from the durable ledger;
    the tables by tier and deployment, successes and unpriced counts cover what this process
    served today. Unpriced traffic is counted in ``unpriced``, never as $0."""

    today_usd: float
    by_tenant: tuple[TenantSpendView, ...]
    by_tier: tuple[tuple[str, float], ...]
    by_deployment: tuple[tuple[str, float], ...]
    successes_today: int
    cost_per_success_usd: float | None
    """Today's cost (failed attempts included) over today's successful requests."""
    unpriced: tuple[tuple[str, int], ...]
    """Deployments without a known price that served requests today, with how many."""
    cache_hit_ratio: float | None
    cache_saved_usd: float
    cache_entries: int


@dataclass(frozen=True, slots=True)
class AlertView:
    at: float
    kind: str
    severity: str
    """``info``, ``warning`` or ``critical``."""
    message: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    taken_at: float
    listen: str
    engine_state: Literal["starting", "running", "stopping"]
    started_at: float
    window_s: int
    rps: float
    requests_total: int
    errors_total: int
    safe_mode: bool
    safe_mode_tier: str | None
    """The tier safe mode sends traffic to; None when the config has none."""
    drained: tuple[str, ...]
    """Providers and deployments an operator drained."""
    drills_available: bool
    """True when simulated providers exist, so drill commands can break and heal them."""
    drills: tuple[DrillView, ...]
    audit: tuple[AuditView, ...]
    """The newest operator actions, newest first."""
    release: str
    rollout: RolloutView | None
    providers: tuple[ProviderView, ...]
    deployments: tuple[DeploymentView, ...]
    tiers: tuple[TierView, ...]
    fallback: FallbackView
    tokens: TokenView
    recent: tuple[RequestView, ...]
    """The newest requests, newest first."""
    state_queue: int
    """Rows waiting for the SQLite writer."""
    spend: SpendView | None = None
    alerts: tuple[AlertView, ...] = ()
    """The newest alerts, newest first."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Rebuild a snapshot from `to_dict` output (or its JSON), as the admin API serves it."""
        snapshot: Snapshot = _build(cls, data)
        return snapshot


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    # Resolving annotations is the slow part of rebuilding a snapshot; classes do not change.
    return typing.get_type_hints(cls)


def _build(cls: Any, data: Any) -> Any:
    """Construct dataclass ``cls`` from plain data, recursing through its field types."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    return value
