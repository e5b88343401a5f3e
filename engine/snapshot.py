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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
