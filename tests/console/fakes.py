"""A deterministic `EngineLink` and hand-built snapshots, for rendering tests.

Every number here is fixed, including ``taken_at``, so SVG snapshots are identical across runs.
The provider layout mirrors the demo config: four simulated providers, one deployment each.
Health reasons, breaker reasons, tier skips and alert messages are worded as the engine words
them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable

from engine.commands import (
    Advance,
    Command,
    CommandResult,
    Drain,
    EditTier,
    Effect,
    Rollback,
    SetSafeMode,
    Undrain,
)
from engine.snapshot import (
    AlertView,
    ArmSignals,
    AuditView,
    DeploymentView,
    FallbackView,
    GateView,
    HealthState,
    ProviderView,
    RequestView,
    RolloutView,
    Snapshot,
    SpendView,
    StageView,
    TenantSpendView,
    TierStepView,
    TierView,
    TokenView,
)

T0 = 1_760_000_000.0
"""A fixed wall-clock instant (2025-10-09 08:53:20 UTC) that every timestamp is relative to."""

PROVIDERS = (
    ("sim-fast", "openai", "us", "fast-mini", "fast-mini-1"),
    ("sim-balanced", "anthropic", "eu", "balanced-sonnet", "balanced-sonnet-1"),
    ("sim-strong", "openai", "us", "strong-large", "strong-large-1"),
    ("sim-local", "openai", "local", "local-llama", "local-llama-8b"),
)

TIERS = (
    ("low", ("fast-mini", "local-llama", "balanced-sonnet")),
    ("medium", ("balanced-sonnet", "fast-mini")),
    ("high", ("strong-large", "balanced-sonnet")),
    ("recovery", ("local-llama", "fast-mini")),
)

Stats = tuple[HealthState, float, float, float, float, float, int]
Breaker = tuple[str, str, float | None]
"""(state, reason, seconds left): ``("open", "5 failures in a row, last 5xx", 12.0)``."""

# Per deployment: (state, share, p95 ms, error rate, 429 rate, timeout rate, in flight).
HEALTHY: dict[str, Stats] = {
    "fast-mini": ("healthy", 0.46, 142.0, 0.0, 0.0, 0.0, 3),
    "balanced-sonnet": ("healthy", 0.31, 388.0, 0.01, 0.0, 0.0, 2),
    "strong-large": ("healthy", 0.12, 1910.0, 0.0, 0.0, 0.0, 4),
    "local-llama": ("healthy", 0.11, 240.0, 0.0, 0.0, 0.0, 1),
}


def _spark(level: int) -> tuple[int, ...]:
    return tuple((level * (3 + (i * 7) % 5)) // 4 for i in range(60))


def _state_reason(state: HealthState, breaker: Breaker) -> str:
    kind, why, _ = breaker
    if state == "drained":
        return "drained by an operator"
    if kind == "open":
        return f"breaker open: {why}"
    if kind == "half_open":
        return f"breaker half-open, probing: {why}"
    return ""


def _deployment(
    name: str, provider: str, model: str, stats: Stats, breaker: Breaker = ("closed", "", None)
) -> DeploymentView:
    state, share, p95, err, r429, timeout, in_flight = stats
    return DeploymentView(
        name=name,
        provider=provider,
        model=model,
        state=state,
        state_reason=_state_reason(state, breaker),
        rps=round(share * 24, 1),
        share=share,
        attempts=int(share * 1440),
        p50_ms=p95 / 2,
        p95_ms=p95 if state != "drained" else None,
        p99_ms=p95 * 1.3,
        ttft_p95_ms=p95 / 3,
        error_rate=err if state != "drained" else None,
        rate_429=r429 if state != "drained" else None,
        timeout_rate=timeout if state != "drained" else None,
        errors_by_cause=(),
        in_flight=in_flight,
        input_tokens_per_req=410.0,
        output_tokens_per_req=220.0,
        spark=_spark(int(share * 40)),
        breaker=breaker[0],
        breaker_reason=breaker[1],
        breaker_left_s=breaker[2],
    )


def _requests() -> tuple[RequestView, ...]:
    # (tier, why, deployment, status, outcome, latency, tokens in, tokens out, path)
    rows = [
        ("low", "task", "fast-mini", 200, "ok", 131.0, 212, 48, ("fast-mini",)),
        ("medium", "default", "balanced-sonnet", 200, "ok", 402.0, 1830, 402, ("balanced-sonnet",)),
        ("low", "task", "local-llama", 200, "ok", 655.0, 190, 61, ("fast-mini", "local-llama")),
        ("high", "rule:long", "strong-large", 200, "ok", 1874.0, 5210, 1380, ("strong-large",)),
        (
            "low",
            "alias",
            None,
            503,
            "overloaded",
            20_012.0,
            None,
            None,
            ("fast-mini", "local-llama"),
        ),
        ("medium", "default", "balanced-sonnet", 200, "ok", 377.0, 990, 310, ("balanced-sonnet",)),
    ]
    out = []
    for i, (tier, why, dep, status, outcome, latency, tin, tout, path) in enumerate(rows):
        out.append(
            RequestView(
                request_id=f"rd-{i:016x}",
                at=T0 - 10 + i,
                tenant="acme" if i % 2 else "local",
                model=tier if why == "alias" else "auto",
                tier=tier,
                tier_reason=why,
                deployment=dep,
                status=status,
                outcome=outcome,
                latency_ms=latency,
                input_tokens=tin,
                output_tokens=tout,
                stream=bool(i % 2),
                path=path,
            )
        )
    return tuple(reversed(out))


CALM_SPEND = SpendView(
    today_usd=142.37,
    by_tenant=(
        TenantSpendView("acme", 96.40, 250.0, 1_840.20, 6_000.0),
        TenantSpendView("globex", 31.17, None, 512.00, None),
        TenantSpendView("local", 14.80, None, 120.50, None),
    ),
    by_tier=(("high", 88.10), ("low", 9.87), ("medium", 44.40)),
    by_deployment=(
        ("balanced-sonnet", 44.90),
        ("fast-mini", 9.37),
        ("local-llama", 0.0),
        ("strong-large", 88.10),
    ),
    successes_today=85_900,
    cost_per_success_usd=142.37 / 85_900,
    unpriced=(),
    cache_hit_ratio=0.182,
    cache_saved_usd=6.42,
    cache_entries=1_204,
)
"""A quiet day: one tenant well inside its budget, two without one, every deployment priced
(local-llama at $0, as configured)."""

BUDGET_SPEND = SpendView(
    today_usd=136.71,
    by_tenant=(
        TenantSpendView("acme", 85.00, 100.0, 1_020.00, 3_000.0),
        TenantSpendView("globex", 12.50, 10.0, 140.00, None),
        TenantSpendView("initech", 36.00, 60.0, 410.00, 1_200.0),
        TenantSpendView("local", 3.21, None, 40.10, None),
    ),
    by_tier=(("high", 88.10), ("low", 4.21), ("medium", 44.40)),
    by_deployment=(
        ("balanced-sonnet", 44.90),
        ("fast-mini", 3.71),
        ("strong-large", 88.10),
    ),
    successes_today=32_550,
    cost_per_success_usd=0.0042,
    unpriced=(("local-llama", 12),),
    cache_hit_ratio=0.312,
    cache_saved_usd=12.34,
    cache_entries=1_204,
)
"""A day under budget pressure: acme at 85% of its daily budget, globex over its own (125%),
initech at 60%, local without a budget; local-llama served 12 requests with no price."""

ALERTS = (
    AlertView(
        at=T0 - 30,
        kind="budget",
        severity="critical",
        message=(
            "Tenant globex is at its daily budget: $12.5000 of $10.00 (125%); its requests get "
            "429s until 00:00 UTC unless the budget is raised."
        ),
    ),
    AlertView(
        at=T0 - 140,
        kind="unpriced",
        severity="warning",
        message=(
            "Deployment local-llama has no price and served 12 requests: their cost is unknown "
            "and not counted against budgets. Set a price on the deployment in the config."
        ),
    ),
    AlertView(
        at=T0 - 1_800,
        kind="budget",
        severity="info",
        message=(
            "Tenant initech has spent $30.0000 of its $60.00 daily budget (50%), past the 50% "
            "alert threshold."
        ),
    ),
)
"""One alert of each severity, newest first, as the engine words them."""


def make_snapshot(
    stats: dict[str, Stats] | None = None,
    *,
    breakers: dict[str, Breaker] | None = None,
    tier_shares: dict[str, tuple[float, ...]] | None = None,
    seq: int = 1,
    drained: tuple[str, ...] = (),
    safe_mode: bool = False,
    audit: tuple[AuditView, ...] = (),
    fallback_ratio: float = 0.021,
    spend: SpendView | None = CALM_SPEND,
    alerts: tuple[AlertView, ...] = (),
) -> Snapshot:
    """A snapshot of the demo layout.

    ``stats`` overrides per-deployment health, ``breakers`` per-deployment breakers (closed
    otherwise), ``tier_shares`` what each step of a tier served (all to the first step that is
    neither down nor drained otherwise). Tiers skip drained deployments and open breakers, with
    the deployment's reason, as the engine does.
    """
    stats = {**HEALTHY, **(stats or {})}
    breakers = breakers or {}
    deployments = tuple(
        _deployment(dep, provider, model, stats[dep], breakers.get(dep, ("closed", "", None)))
        for provider, _, _, dep, model in PROVIDERS
    )
    by_name = {d.name: d for d in deployments}
    providers = tuple(
        ProviderView(
            name=provider,
            protocol=protocol,
            region=region,
            simulated=True,
            state="drained" if provider in drained else by_name[dep].state,
            state_reason="",
            rps=by_name[dep].rps,
            share=by_name[dep].share,
            p95_ms=by_name[dep].p95_ms,
            error_rate=by_name[dep].error_rate,
            rate_429=by_name[dep].rate_429,
            timeout_rate=by_name[dep].timeout_rate,
            in_flight=by_name[dep].in_flight,
            deployments=(dep,),
            spark=by_name[dep].spark,
        )
        for provider, protocol, region, dep, _ in PROVIDERS
    )
    tiers = tuple(
        TierView(
            name=name,
            description="",
            steps=tuple(
                TierStepView(deployment=dep, state=by_name[dep].state, share=share)
                for dep, share in zip(
                    steps, _shares(name, steps, by_name, tier_shares), strict=True
                )
            ),
            rps=6.0,
            fallback_ratio=fallback_ratio,
            skipped=tuple(
                (dep, by_name[dep].state_reason)
                for dep in steps
                if by_name[dep].state == "drained" or by_name[dep].breaker == "open"
            ),
            mapping=" > ".join(steps),
        )
        for name, steps in TIERS
    )
    requests = 1440
    return Snapshot(
        seq=seq,
        taken_at=T0,
        listen="127.0.0.1:8787",
        engine_state="running",
        started_at=T0 - 3600,
        window_s=60,
        rps=24.0,
        requests_total=86_400,
        errors_total=312,
        safe_mode=safe_mode,
        safe_mode_tier="recovery",
        drained=drained,
        drills_available=True,
        drills=(),
        audit=audit,
        release="config",
        rollout=None,
        providers=providers,
        deployments=deployments,
        tiers=tiers,
        fallback=FallbackView(
            ratio=fallback_ratio,
            requests=requests,
            fallbacks=round(requests * fallback_ratio),
            by_cause=(("429", 11), ("timeout", 19)) if fallback_ratio else (),
            spark=_spark(2),
        ),
        tokens=TokenView(
            input_per_min=590_400,
            output_per_min=316_800,
            input_today=41_234_567,
            output_today=18_765_432,
            by_tier=(
                ("high", 9_100_000, 4_400_000),
                ("low", 22_000_000, 9_000_000),
                ("medium", 10_134_567, 5_365_432),
            ),
            by_tenant=(("acme", 30_000_000, 12_000_000), ("local", 11_234_567, 6_765_432)),
            spark=_spark(15000),
        ),
        recent=_requests(),
        state_queue=0,
        spend=spend,
        alerts=alerts,
    )


def _shares(
    tier: str,
    steps: tuple[str, ...],
    deployments: dict[str, DeploymentView],
    given: dict[str, tuple[float, ...]] | None,
) -> tuple[float, ...]:
    if given and tier in given:
        return given[tier]
    serving = next((d for d in steps if deployments[d].state not in ("down", "drained")), steps[0])
    return tuple(1.0 if d == serving else 0.0 for d in steps)


def degraded_snapshot() -> Snapshot:
    """sim-fast failing: its breaker open for 12 more seconds after 5 failures in a row, so every
    tier skips fast-mini and low falls back to local-llama; balanced-sonnet is half-open, probing
    after a 429 cooldown."""
    return make_snapshot(
        {
            "fast-mini": ("down", 0.05, 4020.0, 0.62, 0.21, 0.17, 9),
            "local-llama": ("degraded", 0.48, 910.0, 0.04, 0.0, 0.0, 6),
            "balanced-sonnet": ("degraded", 0.29, 610.0, 0.03, 0.05, 0.0, 2),
        },
        breakers={
            "fast-mini": ("open", "5 failures in a row, last 5xx", 12.0),
            "balanced-sonnet": ("half_open", "429, Retry-After 5 s", None),
        },
        tier_shares={"low": (0.35, 0.65, 0.0), "medium": (0.82, 0.18)},
        fallback_ratio=0.384,
    )


def budget_snapshot() -> Snapshot:
    """Tenants near and over their budgets, unpriced traffic, and an alert of each severity."""
    return make_snapshot(spend=BUDGET_SPEND, alerts=ALERTS)


def drained_snapshot() -> Snapshot:
    """sim-fast drained by an operator, with the audit line that did it."""
    return make_snapshot(
        {
            "fast-mini": ("drained", 0.0, 0.0, 0.0, 0.0, 0.0, 0),
            "local-llama": ("healthy", 0.55, 250.0, 0.0, 0.0, 0.0, 2),
        },
        drained=("sim-fast",),
        audit=(
            AuditView(
                id=7,
                at=T0 - 5,
                actor="console",
                action="drain",
                target="sim-fast",
                result="ok",
                summary="drains sim-fast: tier low moves to local-llama",
            ),
        ),
    )


STAGES = (
    StageView("internal", 0.0),
    StageView("canary", 1.0),
    StageView("5%", 5.0),
    StageView("20%", 20.0),
    StageView("full", 100.0),
)
"""The engine's default stages."""

CANDIDATE = ArmSignals(
    requests=184,
    successes=176,
    p95_ms=412.0,
    error_rate=0.041,
    rate_429=0.0,
    timeout_rate=0.005,
    fallback_ratio=0.031,
    cost_per_success_usd=0.0021,
)
BASELINE = ArmSignals(
    requests=17_930,
    successes=17_750,
    p95_ms=380.0,
    error_rate=0.010,
    rate_429=0.0,
    timeout_rate=0.002,
    fallback_ratio=0.020,
    cost_per_success_usd=0.0019,
)

FAILING_GATES = (
    GateView("latency", "passing", 412.0, 380.0, 525.0, "p95 412 ms <= 525 ms"),
    GateView("errors", "failing", 0.041, 0.010, 0.030, "error rate 4.1% > 3.0%"),
    GateView("fallback", "passing", 0.031, 0.020, 0.070, "fallback 3.1% <= 7.0%"),
    GateView("cost", "waiting", None, 0.0019, 0.00228, "needs 50 priced successes, has 31"),
)
"""The candidate errs more than the baseline allows; its cost is not judged yet."""

PASSING_GATES = (
    GateView("latency", "passing", 412.0, 380.0, 525.0, "p95 412 ms <= 525 ms"),
    GateView("errors", "passing", 0.012, 0.010, 0.030, "error rate 1.2% <= 3.0%"),
    GateView("fallback", "passing", 0.031, 0.020, 0.070, "fallback 3.1% <= 7.0%"),
    GateView("cost", "passing", 0.0021, 0.0019, 0.00228, "$0.0021 <= $0.0023 per success"),
)

LOW_BEFORE = "fast-mini > local-llama > balanced-sonnet"
LOW_AFTER = "balanced-sonnet > fast-mini > local-llama"


def next_action(release: str, stage_index: int, *, halted: bool = False) -> str:
    """What advancing does from ``stage_index``, worded as the engine words it."""
    if halted:
        return f"resume {STAGES[stage_index].name}"
    if stage_index + 1 == len(STAGES) - 1:
        return f"promote {release} to baseline"
    return f"advance to {STAGES[stage_index + 1].name}"


def rollout_view(
    *,
    release: str = "r4",
    baseline: str = "r3",
    stage_index: int = 1,
    halted: bool = False,
    passing: bool = False,
    started_at: float = T0 - 252,
) -> RolloutView:
    """Release ``release`` (tier low reordered) in stage ``stage_index``: by default the canary
    (1%) for 4 minutes, its errors gate failing and its cost gate waiting; ``passing``: every
    gate passes and it advances on its own in 5 minutes; ``halted``: the failing gate halted it."""
    stage = STAGES[stage_index]
    return RolloutView(
        release=release,
        stage=stage.name,
        baseline=baseline,
        note="low: try balanced-sonnet first",
        actor="alice",
        state="halted" if halted else "running",
        state_reason="gate errors failed: error rate 4.1% > 3.0%" if halted else "",
        stages=STAGES,
        stage_index=stage_index,
        stage_started_at=started_at,
        target_percent=0.0 if halted else stage.percent,
        observed_share=None if halted else stage.percent / 100 * 1.2,
        candidate=CANDIDATE,
        baseline_signals=BASELINE,
        gates=PASSING_GATES if passing else FAILING_GATES,
        can_advance=passing,
        next_action=next_action(release, stage_index, halted=halted),
        auto_advance_at=T0 + 300 if passing and not halted else None,
        diff=(f"tier low: {LOW_BEFORE} → {LOW_AFTER}",),
        on_fail="halt",
    )


def rollout_snapshot(*, halted: bool = False, passing: bool = False) -> Snapshot:
    """r3 serving, r4 in its canary stage (see `rollout_view`), with the audit lines that
    started and advanced it."""
    view = rollout_view(halted=halted, passing=passing)
    audit = (
        AuditView(
            id=9,
            at=T0 - 252,
            actor="alice",
            action="advance",
            target=view.release,
            result="ok",
            summary=f"advances {view.release} to canary",
        ),
        AuditView(
            id=8,
            at=T0 - 900,
            actor="alice",
            action="edit_tier",
            target="low",
            result="ok",
            summary=f"starts release {view.release} at stage internal: tier low",
        ),
    )
    return dataclasses.replace(make_snapshot(audit=audit), release="r3", rollout=view)


def halted_snapshot() -> Snapshot:
    return rollout_snapshot(halted=True)


def _next_release(release: str) -> str:
    number = release.removeprefix("r")
    return f"r{int(number) + 1}" if number.isdigit() else "r1"


class FakeLink:
    """An `EngineLink` that yields given snapshots, then whatever `push` sends, forever.

    ``delivered`` counts the snapshots handed over; ``preview`` answers with
    ``effect_for(command)`` (by default `rollout_effect`, then `default_effect`) and ``submit``
    records the command with the actor in ``submitted`` and its reason in ``reasons``.

    Rollout commands act on the newest snapshot, as an engine would, and publish the result:
    `Advance` moves the rollout a stage (the last promotes the candidate), `Rollback` ends it,
    `EditTier` starts a new release at the first stage (or, as an emergency, makes it the
    baseline at once). A command that needs a reason is refused without one.
    """

    def __init__(
        self,
        snapshots: Iterable[Snapshot] = (),
        *,
        label: str = "127.0.0.1:8787",
        attached: bool = False,
        effect_for: Callable[[Command], Effect] | None = None,
    ) -> None:
        self.label = label
        self.attached = attached
        self.last_error: str | None = None
        self._initial = tuple(snapshots)
        self._queue: asyncio.Queue[Snapshot] | None = None
        self._effect_for = effect_for or self.rollout_effect
        self.submitted: list[tuple[Command, str]] = []
        self.reasons: list[str] = []
        self.previewed: list[Command] = []
        self.delivered = 0
        self.current: Snapshot | None = self._initial[-1] if self._initial else None
        """The engine's state as this link last published it."""

    def push(self, snapshot: Snapshot) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        self.current = snapshot
        self._queue.put_nowait(snapshot)

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        for snapshot in self._initial:
            self.delivered += 1
            yield snapshot
        if self._queue is None:
            self._queue = asyncio.Queue()
        while True:
            snapshot = await self._queue.get()
            self.delivered += 1
            yield snapshot

    async def preview(self, command: Command) -> Effect:
        self.previewed.append(command)
        return self._effect_for(command)

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult:
        self.submitted.append((command, actor))
        self.reasons.append(reason)
        audit_id = len(self.submitted)
        if not isinstance(command, Advance | Rollback | EditTier):
            return CommandResult(ok=True, message=f"done: {command}", audit_id=audit_id)
        effect = self._effect_for(command)
        if not effect.allowed:
            return CommandResult(ok=False, message=effect.summary, audit_id=audit_id)
        if effect.needs_reason and not reason.strip():
            return CommandResult(
                ok=False, message=f"{effect.confirm_text} needs a reason", audit_id=audit_id
            )
        assert self.current is not None
        self.push(self._applied(command, self.current))
        return CommandResult(ok=True, message=effect.summary, audit_id=audit_id)

    def _applied(self, command: Advance | Rollback | EditTier, now: Snapshot) -> Snapshot:
        """The snapshot after ``command``, which `rollout_effect` allowed."""
        rollout, release = now.rollout, now.release
        match command:
            case Rollback():
                rollout = None
            case Advance():
                assert rollout is not None
                index = rollout.stage_index + (rollout.state == "running")
                if index == len(STAGES) - 1:
                    rollout, release = None, rollout.release
                else:
                    rollout = rollout_view(
                        release=rollout.release,
                        baseline=release,
                        stage_index=index,
                        started_at=now.taken_at,
                    )
            case EditTier(tier, mapping, _, emergency):
                candidate = _next_release(release)
                tiers = tuple(
                    dataclasses.replace(t, mapping=mapping) if t.name == tier else t
                    for t in now.tiers
                )
                if emergency:
                    return dataclasses.replace(
                        now, seq=now.seq + 1, release=candidate, rollout=None, tiers=tiers
                    )
                rollout = rollout_view(
                    release=candidate, baseline=release, stage_index=0, started_at=now.taken_at
                )
        return dataclasses.replace(now, seq=now.seq + 1, release=release, rollout=rollout)

    def rollout_effect(self, command: Command) -> Effect:
        """What the engine would answer for a rollout command, given `current`; any other
        command gets `default_effect`."""
        now = self.current
        rollout = now.rollout if now is not None else None
        match command:
            case Advance(override):
                if rollout is None:
                    return Effect(allowed=False, summary="no rollout in progress to advance")
                what = rollout.next_action
                blocking = [g for g in rollout.gates if g.verdict != "passing"]
                if not blocking or rollout.state == "halted":
                    return Effect(allowed=True, summary=f"{what} for {rollout.release}")
                why = "; ".join(f"gate {g.signal} {g.verdict}: {g.why}" for g in blocking)
                if not override:
                    return Effect(
                        allowed=False,
                        summary=f"cannot {what}: {why}; an override with a reason can",
                    )
                names = " and ".join(g.signal for g in blocking)
                return Effect(
                    allowed=True,
                    summary=f"{what} for {rollout.release} although gates {names} do not pass",
                    confirm_text="override",
                    needs_reason=True,
                )
            case Rollback():
                if rollout is None:
                    return Effect(allowed=False, summary="no rollout in progress to roll back")
                return Effect(
                    allowed=True,
                    summary=f"rolls back {rollout.release}: all traffic to {now.release}",
                )
            case EditTier(tier, mapping, _, emergency):
                assert now is not None
                tiers = {t.name: t for t in now.tiers}
                if tier not in tiers:
                    return Effect(allowed=False, summary=f"no tier {tier!r}")
                known = {d.name for d in now.deployments}
                names = [
                    member.split("=")[0].strip()
                    for step in mapping.split(">")
                    for member in step.split("+")
                ]
                unknown = [name for name in names if name not in known]
                if unknown or not all(names):
                    return Effect(
                        allowed=False,
                        summary=f"tier {tier}: unknown deployment {(unknown or [''])[0]!r} in "
                        f"{mapping!r}; deployments: {', '.join(sorted(known))}",
                    )
                change = f"tier {tier}: {tiers[tier].mapping} → {mapping}"
                candidate = _next_release(now.release)
                if emergency:
                    return Effect(
                        allowed=True,
                        summary=f"applies release {candidate} to all traffic now: {change}",
                        confirm_text="emergency",
                        needs_reason=True,
                    )
                return Effect(
                    allowed=True,
                    summary=f"starts release {candidate} at stage internal: {change}",
                )
        return default_effect(command)

    async def close(self) -> None:
        return None


def default_effect(command: Command) -> Effect:
    match command:
        case Drain("sim-fast"):
            return Effect(
                allowed=True,
                summary="drains sim-fast: tier low moves to local-llama",
                details=(
                    "tier low: fast-mini → local-llama",
                    "tier medium: fast-mini fallback removed",
                ),
            )
        case Drain(target) | Undrain(target):
            return Effect(allowed=True, summary=f"{command.__class__.__name__.lower()}s {target}")
        case SetSafeMode(on):
            return Effect(
                allowed=True,
                summary=f"safe mode {'on' if on else 'off'}: all traffic to tier recovery",
            )
    return Effect(allowed=True, summary=str(command))


def stranding_effect(command: Command) -> Effect:
    """An effect that would leave tier recovery without a healthy deployment."""
    target = getattr(command, "target", "?")
    return Effect(
        allowed=True,
        summary=f"drains {target}: tier recovery has no healthy deployment left",
        details=("tier recovery: local-llama drained, fast-mini down",),
        stranded_tiers=("recovery",),
        confirm_text=target,
    )


def with_seq(snapshot: Snapshot, seq: int) -> Snapshot:
    return dataclasses.replace(snapshot, seq=seq)
