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
    mapping: str = ""
    """The baseline's mapping in the console editor's syntax: ``a > b=3 + c=1 > d`` (steps in
    fallback order separated by ``>``, a weighted step's deployments joined by ``+``)."""


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


Verdict = Literal["passing", "failing", "waiting"]


@dataclass(frozen=True, slots=True)
class ArmSignals:
    """One arm's four signals over the current stage. None: no sample yet (or no price)."""

    requests: int
    """Requests judged in this stage (cache hits and the client's own errors are not judged)."""
    successes: int
    p95_ms: float | None
    """p95 of what successful requests waited for: the whole answer, or a stream's first token
    (a stream's length depends on the answer, not on the release)."""
    error_rate: float | None
    """Requests that failed, over judged requests."""
    rate_429: float | None
    """Requests that met a 429 on any attempt, over judged requests."""
    timeout_rate: float | None
    """Requests that met a timeout on any attempt, over judged requests."""
    fallback_ratio: float | None
    """Successful requests that a fallback served, over successful requests."""
    cost_per_success_usd: float | None
    """Every judged request's cost (failed and fallback attempts included) over successes."""


@dataclass(frozen=True, slots=True)
class GateView:
    """Candidate against baseline on one signal."""

    signal: str
    """``latency`` (p95 ms), ``errors`` (the worst of error/429/timeout rate), ``fallback``
    (fallback ratio) or ``cost`` (dollars per successful task)."""
    verdict: Verdict
    candidate: float | None
    baseline: float | None
    limit: float | None
    """The most the candidate may show, given the baseline's figure and the configured margin."""
    why: str
    """One line: "p95 412 ms <= 540 ms" or "needs 50 candidate requests, has 12"."""


@dataclass(frozen=True, slots=True)
class StageView:
    name: str
    percent: float
    """Share of traffic (besides internal tenants, who always get the candidate) on the
    candidate, 0..100."""


@dataclass(frozen=True, slots=True)
class RolloutView:
    """The release rollout in progress; None in a snapshot while no rollout exists."""

    release: str
    """The candidate release, "r4"."""
    stage: str
    """The current stage's name."""
    baseline: str = ""
    """The release the candidate is compared against, "r3"."""
    note: str = ""
    actor: str = ""
    """Who started the rollout."""
    state: Literal["running", "halted"] = "running"
    """Halted: every request is back on the baseline until the rollout resumes or rolls back."""
    state_reason: str = ""
    stages: tuple[StageView, ...] = ()
    stage_index: int = 0
    stage_started_at: float = 0.0
    target_percent: float = 0.0
    """The stage's share of traffic on the candidate (0 while halted)."""
    observed_share: float | None = None
    """The share of this stage's judged requests (internal tenants aside) that the candidate
    served."""
    candidate: ArmSignals | None = None
    baseline_signals: ArmSignals | None = None
    gates: tuple[GateView, ...] = ()
    can_advance: bool = False
    """True when every gate passes: advancing needs no override."""
    next_action: str = ""
    """What the advance key does now: "advance to 5%", "promote r4 to baseline", "resume canary"."""
    auto_advance_at: float | None = None
    """When the rollout will advance on its own if the gates still pass; None when it will not."""
    diff: tuple[str, ...] = ()
    """The candidate's changes against the baseline, one line each."""
    on_fail: str = "halt"
    """What a failing gate does: ``halt`` or ``rollback``."""


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
    """The baseline release serving traffic, "r3"."""
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
