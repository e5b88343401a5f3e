"""Canary rollouts: every routing change is a release that ships in stages, watched by gates.

`Rollouts` owns the releases of a running engine: the *baseline* (exactly one, serving
everything not assigned to a candidate) and at most one *candidate* being rolled out.

Stages (``[rollout] stages``, by default internal → canary 1% → 5% → 20% → full) say which
share of traffic the candidate gets. Tenants marked ``internal`` get the candidate at every
stage; everyone else is assigned by a hash of the rollout's salt and (tenant, user), so one
user stays on one arm for the whole rollout — a wider stage only adds users — and keeps it
across restarts. A request without a user (OpenAI ``user``, Anthropic ``metadata.user_id`` or
``x-routedeck-user``) is its own unit. Safe mode sends everything to the baseline.

Gates compare the candidate against the baseline over the current stage, on four signals: p95
latency, error/429/timeout rates, fallback ratio and cost per successful task. A request is
*judged* when it reached routing and its outcome says something about the release: cache hits
and the client's own errors (bad requests, quotas, budgets, a client that left) are not. Each
gate waits until both arms have ``min_samples`` judged requests, then passes while the
candidate's figure is at most ``baseline * max_ratio + max_delta``.

A failing gate halts the rollout (its traffic returns to the baseline at once) or rolls it
back (``on_fail``), raises an alert and writes an audit entry, all on its own. Advancing
needs every gate passing, or an override with a reason; advancing into the last stage (100%)
promotes the candidate to baseline. With ``auto_advance`` a rollout whose gates have passed
for ``dwell_s`` in a stage advances itself. An emergency change skips the stages: the new
release becomes the baseline at once (any rollout in progress is rolled back first).

Everything is in SQLite: releases (with the rollout's stage, state and salt on the
candidate's row), ``rollout_events``, the audit log, and each request's release and arm, from
which a restarted engine rebuilds the current stage's signals.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.commands import (
    Advance,
    CommandResult,
    EditTier,
    Effect,
    Rollback,
    RolloutCommand,
    StartRollout,
    command_name,
)
from engine.config import Config, ConfigError, GateConfig, RolloutConfig
from engine.releases import (
    Routing,
    diff_routing,
    parse_mapping,
    routing_from_toml,
    routing_of,
    with_routing,
)
from engine.routing import Router
from engine.snapshot import ArmSignals, AuditView, GateView, RolloutView, StageView, Verdict
from state.records import RequestRecord
from state.store import Store, bump_statement

log = logging.getLogger("routedeck.rollout")

ARM_BASELINE = "baseline"
ARM_CANDIDATE = "candidate"

# Outcomes that say something about the serving side; any other failure is the client's own
# (bad request, context too long, quota, budget, auth) or the client leaving.
_UPSTREAM_FAILURES = frozenset(
    {"error", "connect", "timeout", "429", "overloaded", "5xx", "stream", "unavailable"}
)
_LATENCY_SAMPLES = 20_000
_BUCKETS = 10_000


def judged(rec: RequestRecord) -> bool:
    """Whether a logged request counts towards its arm's signals."""
    if rec.cache == "hit" or rec.outcome == "client_closed":
        return False
    return rec.outcome == "ok" or rec.status >= 500 or rec.outcome in _UPSTREAM_FAILURES


@dataclass(frozen=True, slots=True)
class Release:
    id: int
    created_at: float
    actor: str
    note: str
    source: str
    routing: Routing
    parent: int | None
    diff: tuple[str, ...]
    emergency: bool
    config: Config
    """The running config with this release's routing."""
    router: Router
    cache_targets: Mapping[str, str]
    """Tier → the tier's name and mapping, so that a cached answer is reused only by a release
    that maps the tier the same way."""

    @property
    def label(self) -> str:
        return f"r{self.id}"

    def cache_target(self, tier: str | None, deployment: str) -> str:
        return self.cache_targets.get(tier, deployment) if tier is not None else deployment


def make_release(config: Config, row: Mapping[str, Any]) -> Release:
    """A release from its stored row; raises `ConfigError` when it no longer fits ``config``."""
    routing: Routing = json.loads(row["routing"])
    effective = with_routing(config, routing, source=f"release r{row['id']}")
    targets = {
        name: name + "=" + json.dumps(tier["deployments"], sort_keys=True, separators=(",", ":"))
        for name, tier in routing_of(effective)["tiers"].items()
    }
    return Release(
        id=row["id"],
        created_at=row["created_at"],
        actor=row["actor"],
        note=row["note"],
        source=row["source"],
        routing=routing,
        parent=row["parent"],
        diff=tuple(json.loads(row["diff"])),
        emergency=bool(row["emergency"]),
        config=effective,
        router=Router(effective),
        cache_targets=targets,
    )


# -- signals ---------------------------------------------------------------------------------


class ArmStats:
    """One arm's judged requests in the current stage."""

    __slots__ = (
        "_p95",
        "_rng",
        "cost",
        "failures",
        "fallbacks",
        "latencies",
        "requests",
        "saw_429",
        "saw_timeout",
        "seen",
        "successes",
        "unpriced",
    )

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.saw_429 = 0
        self.saw_timeout = 0
        self.fallbacks = 0
        self.cost = 0.0
        self.unpriced = 0
        self.latencies: list[float] = []  # sorted; a uniform sample once over the cap
        self.seen = 0
        self._p95: tuple[int, float | None] = (-1, None)

    def add(self, rec: RequestRecord, causes: Sequence[str]) -> None:
        self.requests += 1
        if rec.outcome == "ok":
            self.successes += 1
            self.fallbacks += rec.fallback
            # What the user waits for: the answer, or a stream's first token.
            waited = rec.ttft_ms if rec.stream and rec.ttft_ms is not None else rec.latency_ms
            self._latency(waited)
        else:
            self.failures += 1
        if rec.outcome == "429" or "429" in causes:
            self.saw_429 += 1
        if rec.outcome == "timeout" or "timeout" in causes:
            self.saw_timeout += 1
        if rec.cost_usd is not None:
            self.cost += rec.cost_usd
        elif rec.deployment is not None:
            self.unpriced += 1

    def _latency(self, ms: float) -> None:
        self.seen += 1
        if len(self.latencies) < _LATENCY_SAMPLES:
            bisect.insort(self.latencies, ms)
            return
        # Reservoir sampling keeps a uniform sample of every success in the stage.
        if self._rng.randrange(self.seen) < _LATENCY_SAMPLES:
            del self.latencies[self._rng.randrange(_LATENCY_SAMPLES)]
            bisect.insort(self.latencies, ms)

    def p95(self) -> float | None:
        if not self.latencies:
            return None
        n = len(self.latencies)
        return self.latencies[min(n - 1, int(0.95 * n))]

    def signals(self) -> ArmSignals:
        n = self.requests

        def share(count: int, of: int) -> float | None:
            return count / of if of else None

        cost = None
        if self.successes and not self.unpriced:
            cost = self.cost / self.successes
        return ArmSignals(
            requests=n,
            successes=self.successes,
            p95_ms=self.p95(),
            error_rate=share(self.failures, n),
            rate_429=share(self.saw_429, n),
            timeout_rate=share(self.saw_timeout, n),
            fallback_ratio=share(self.fallbacks, self.successes),
            cost_per_success_usd=cost,
        )


def evaluate_gates(
    config: RolloutConfig, candidate: ArmSignals, baseline: ArmSignals, unpriced: bool
) -> tuple[GateView, ...]:
    """The four gates' verdicts for one stage's signals."""
    gates = []

    def sample(gate: GateConfig) -> str:
        lacking = [
            f"{gate.min_samples} {arm} requests, has {signals.requests}"
            for arm, signals in (("candidate", candidate), ("baseline", baseline))
            if signals.requests < gate.min_samples
        ]
        return "needs " + "; ".join(lacking) if lacking else ""

    def compare(
        name: str,
        gate: GateConfig,
        values: Sequence[tuple[str, float | None, float | None]],
        fmt: Callable[[float], str],
        missing: str,
    ) -> GateView:
        waiting = sample(gate)
        first = values[0]
        if waiting:
            return GateView(name, "waiting", first[1], first[2], None, waiting)
        worst: tuple[float, str, float, float, float] | None = None
        for label, cand, base in values:
            if cand is None or base is None:
                return GateView(name, "waiting", cand, base, None, missing)
            limit = gate.limit(base)
            excess = cand - limit
            if worst is None or excess > worst[0]:
                worst = (excess, label, cand, base, limit)
        assert worst is not None
        excess, label, cand, base, limit = worst
        verdict: Verdict = "failing" if excess > 1e-12 else "passing"
        sign = ">" if verdict == "failing" else "<="
        why = f"{label} {fmt(cand)} {sign} {fmt(limit)} (baseline {fmt(base)})"
        return GateView(name, verdict, cand, base, limit, why)

    def pct(v: float) -> str:
        return f"{v * 100:.1f}%"

    gates.append(
        compare(
            "latency",
            config.latency,
            [("p95", candidate.p95_ms, baseline.p95_ms)],
            lambda v: f"{v:.0f} ms",
            "no successful request yet",
        )
    )
    gates.append(
        compare(
            "errors",
            config.errors,
            [
                ("error rate", candidate.error_rate, baseline.error_rate),
                ("429 rate", candidate.rate_429, baseline.rate_429),
                ("timeout rate", candidate.timeout_rate, baseline.timeout_rate),
            ],
            pct,
            "no request yet",
        )
    )
    gates.append(
        compare(
            "fallback",
            config.fallback,
            [("fallback ratio", candidate.fallback_ratio, baseline.fallback_ratio)],
            pct,
            "no successful request yet",
        )
    )
    gates.append(
        compare(
            "cost",
            config.cost,
            [
                (
                    "cost/success",
                    candidate.cost_per_success_usd,
                    baseline.cost_per_success_usd,
                )
            ],
            lambda v: f"${v:.6f}",
            "unpriced traffic: cost cannot be compared"
            if unpriced
            else "no successful request yet",
        )
    )
    return tuple(gates)


# -- the rollout -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Rollout:
    candidate: Release
    stage_index: int
    stage_started_at: float
    state: Literal["running", "halted"]
    state_reason: str
    salt: str
    actor: str
    arms: dict[str, ArmStats] = field(default_factory=dict)
    passing_since: float | None = None
    rowid: int = 0
    """The request log has been read up to this row for the stage's signals."""

    def reset(self, rng: random.Random) -> None:
        self.arms = {ARM_BASELINE: ArmStats(rng), ARM_CANDIDATE: ArmStats(rng)}
        self.rowid = 0
        self.passing_since = None


Audit = Callable[[AuditView], None]
RaiseAlert = Callable[[str, str, str, dict[str, Any]], Awaitable[None]]
"""(key, severity, message, detail): raise an alert through the engine's alerting."""
OnBaseline = Callable[[Release], None]


class Rollouts:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        clock: Callable[[], float],
        audit: Audit,
        raise_alert: RaiseAlert,
        on_baseline: OnBaseline,
        rng: random.Random | None = None,
    ) -> None:
        self._file_config = config
        self._settings = config.rollout
        self._store = store
        self._clock = clock
        self._audit = audit
        self._raise_alert = raise_alert
        self._on_baseline = on_baseline
        self._rng = rng or random.Random()
        self._internal = frozenset(n for n, t in config.tenants.items() if t.internal)
        self._baseline: Release | None = None
        self._rollout: _Rollout | None = None
        self._refreshing = asyncio.Lock()
        self.warnings: list[str] = []

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> None:
        """The baseline and any rollout in progress from the store.

        A first start records the config file's routing as release 1. When the file's routing
        changed since the last start, the file wins: it is recorded as a new baseline (a
        change that skipped stages, with source ``config``). A candidate that no longer fits
        the config (a deployment it names was removed) is rolled back."""
        config = self._file_config
        file_routing = routing_of(config)
        rows = await self._store.query(
            "SELECT * FROM releases WHERE status IN ('baseline', 'candidate') ORDER BY id"
        )
        baseline_row = next((r for r in rows if r["status"] == "baseline"), None)
        candidate_row = next((r for r in rows if r["status"] == "candidate"), None)
        seen = await self._store.kv_get("config_routing")
        baseline: Release | None = None
        if baseline_row is not None and seen == file_routing:
            try:
                baseline = make_release(config, dict(baseline_row))
            except ConfigError as exc:
                self.warnings.append(
                    f"release r{baseline_row['id']} no longer fits the config ({exc.problems[0]});"
                    " the config file's routing is the baseline now"
                )
        if baseline is None:
            why = (
                "first start"
                if baseline_row is None
                else "the config file's routing changed"
                if seen != file_routing
                else "the stored baseline no longer fits the config"
            )
            baseline = await self._record_baseline(
                file_routing, why, baseline_row["id"] if baseline_row else None
            )
        self._baseline = baseline
        self._on_baseline(baseline)
        if candidate_row is not None:
            await self._load_candidate(dict(candidate_row))

    async def _record_baseline(self, routing: Routing, why: str, previous: int | None) -> Release:
        now = self._clock()
        old = None
        if previous is not None:
            rows = await self._store.query("SELECT routing FROM releases WHERE id = ?", (previous,))
            old = json.loads(rows[0]["routing"]) if rows else None
        diff = diff_routing(old, routing) if old is not None else []
        rid = await self._store.insert(
            "INSERT INTO releases (created_at, actor, note, source, routing, parent, diff, "
            "status, emergency) VALUES (?, 'config', ?, 'config', ?, ?, ?, 'proposed', ?)",
            (
                now,
                f"from {self._file_config.source}: {why}",
                _json(routing),
                previous,
                _json(diff),
                int(previous is not None),  # a changed file skipped the stages
            ),
        )
        if previous is not None:  # a first start is not a change; a new config file is
            await self._write_audit(
                "config",
                "release_baseline",
                f"r{rid}",
                f"r{rid} is the baseline: {why}",
                {"diff": diff, "before": f"r{previous}", "after": f"r{rid}"},
            )
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                "UPDATE releases SET status = 'retired', ended_at = ? WHERE status = 'baseline'",
                (now,),
            ),
            (
                "UPDATE releases SET status = 'baseline', promoted_at = ? WHERE id = ?",
                (now, rid),
            ),
            (
                "INSERT INTO kv (key, value, updated_at) VALUES ('config_routing', ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (_json(routing), now),
            ),
        ]
        await self._commit(statements)
        rows = await self._store.query("SELECT * FROM releases WHERE id = ?", (rid,))
        return make_release(self._file_config, dict(rows[0]))

    async def _load_candidate(self, row: Mapping[str, Any]) -> None:
        try:
            candidate = make_release(self._file_config, row)
        except ConfigError as exc:
            await self._end(
                row["id"],
                "rolled_back",
                actor="config",
                event="rolled_back",
                stage=row["stage"],
                reason=f"no longer fits the config: {exc.problems[0]}",
            )
            return
        names = [s.name for s in self._settings.stages]
        if row["stage"] in names:
            index = names.index(row["stage"])
            state = row["rollout_state"]
            reason = row["state_reason"] or ""
        else:
            index, state = 0, "halted"
            reason = f"stage {row['stage']!r} is no longer configured; resume starts at {names[0]}"
        rollout = _Rollout(
            candidate=candidate,
            stage_index=index,
            stage_started_at=row["stage_started_at"],
            state="halted" if state == "halted" else "running",
            state_reason=reason,
            salt=row["salt"],
            actor=row["actor"],
        )
        rollout.reset(self._rng)
        self._rollout = rollout
        await self.refresh()

    async def reload(self) -> None:
        """Follow changes another process sharing the state file made: a new baseline, a new
        candidate, its stage or state. The stage's signals carry on when the stage did not
        change."""
        rows = await self._store.query(
            "SELECT * FROM releases WHERE status IN ('baseline', 'candidate') ORDER BY id"
        )
        baseline_row = next((dict(r) for r in rows if r["status"] == "baseline"), None)
        candidate_row = next((dict(r) for r in rows if r["status"] == "candidate"), None)
        if baseline_row is not None and baseline_row["id"] != self.baseline.id:
            try:
                self._set_baseline(make_release(self._file_config, baseline_row))
            except ConfigError:
                log.exception("release r%s does not fit this config", baseline_row["id"])
        rollout = self._rollout
        if candidate_row is None:
            self._rollout = None
            return
        if rollout is None or rollout.candidate.id != candidate_row["id"]:
            await self._load_candidate(candidate_row)
            return
        names = [s.name for s in self._settings.stages]
        if candidate_row["stage"] in names:
            rollout.stage_index = names.index(candidate_row["stage"])
        rollout.state = "halted" if candidate_row["rollout_state"] == "halted" else "running"
        rollout.state_reason = candidate_row["state_reason"] or ""
        if candidate_row["stage_started_at"] != rollout.stage_started_at:
            rollout.stage_started_at = candidate_row["stage_started_at"]
            rollout.reset(self._rng)
        await self.refresh()

    async def refresh(self) -> None:
        """Read the request log's new rows into the stage's signals.

        Signals come from the shared log, not from this process's own requests, so every
        process sharing the state file judges the same traffic, and a restarted one picks up
        where it was. Rows reach the log within the writer's flush interval.

        Refreshes run one at a time (the snapshot loop's and a command's could overlap, and
        two reading from the same row id would count the same requests twice); one whose
        stage was reset while it read drops what it read."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        rollout = self._rollout
        if rollout is None or rollout.state != "running":
            return
        top_rows = await self._store.query("SELECT MAX(rowid) FROM requests")
        top = int(top_rows[0][0] or 0)
        if top <= rollout.rowid:
            return
        since, arms = rollout.rowid, rollout.arms
        rows = await self._store.query(
            "SELECT r.*, (SELECT group_concat(a.outcome) FROM attempts a "
            "WHERE a.request_id = r.request_id AND a.outcome != 'ok') AS causes "
            "FROM requests r WHERE r.rowid > ? AND r.rowid <= ? AND +r.started_at >= ? "
            "AND r.release IN (?, ?)",
            (
                rollout.rowid,
                top,
                rollout.stage_started_at,
                rollout.candidate.id,
                self.baseline.id,
            ),
        )
        if self._rollout is not rollout or rollout.rowid != since or rollout.arms is not arms:
            return  # reset or replaced while this read: the next refresh starts over
        rollout.rowid = top
        fields = RequestRecord.__dataclass_fields__
        for row in rows:
            rec = RequestRecord(**{k: row[k] for k in fields})
            if judged(rec) and rec.arm in rollout.arms:
                causes = (row["causes"] or "").split(",")
                rollout.arms[rec.arm].add(rec, causes)

    # -- the request path ------------------------------------------------------------------

    @property
    def baseline(self) -> Release:
        if self._baseline is None:
            raise RuntimeError("releases are not loaded")
        return self._baseline

    @property
    def candidate(self) -> Release | None:
        return self._rollout.candidate if self._rollout is not None else None

    def assign(
        self, tenant: str, user: str | None, request_id: str, *, safe_mode: bool = False
    ) -> tuple[str, Release]:
        """(arm, release) for a request."""
        rollout = self._rollout
        baseline = self.baseline
        if rollout is None or rollout.state != "running" or safe_mode:
            return ARM_BASELINE, baseline
        if tenant in self._internal:
            return ARM_CANDIDATE, rollout.candidate
        percent = self._settings.stages[rollout.stage_index].percent
        if percent <= 0:
            return ARM_BASELINE, baseline
        unit = f"{tenant}\x00{user}" if user else request_id
        if bucket(rollout.salt, unit) < percent * (_BUCKETS / 100):
            return ARM_CANDIDATE, rollout.candidate
        return ARM_BASELINE, baseline

    # -- the view --------------------------------------------------------------------------

    def _gates(self, rollout: _Rollout) -> tuple[GateView, ...]:
        cand = rollout.arms[ARM_CANDIDATE]
        base = rollout.arms[ARM_BASELINE]
        return evaluate_gates(
            self._settings,
            cand.signals(),
            base.signals(),
            unpriced=bool(cand.unpriced or base.unpriced),
        )

    def view(self, now: float) -> RolloutView | None:
        rollout = self._rollout
        if rollout is None:
            return None
        stages = self._settings.stages
        stage = stages[rollout.stage_index]
        gates = self._gates(rollout)
        passing = all(g.verdict == "passing" for g in gates)
        cand = rollout.arms[ARM_CANDIDATE]
        base = rollout.arms[ARM_BASELINE]
        # Internal tenants always get the candidate; the observed share counts only requests
        # the hash assigned, which the tail of judged requests does not tell apart, so it is
        # the candidate's share of everything judged in the stage.
        total = cand.requests + base.requests
        auto_at = None
        if self._settings.auto_advance and rollout.state == "running" and passing:
            since = rollout.passing_since if rollout.passing_since is not None else now
            auto_at = max(since, rollout.stage_started_at) + self._settings.dwell_s
        return RolloutView(
            release=rollout.candidate.label,
            stage=stage.name,
            baseline=self.baseline.label,
            note=rollout.candidate.note,
            actor=rollout.actor,
            state=rollout.state,
            state_reason=rollout.state_reason,
            stages=tuple(StageView(s.name, s.percent) for s in stages),
            stage_index=rollout.stage_index,
            stage_started_at=rollout.stage_started_at,
            target_percent=stage.percent if rollout.state == "running" else 0.0,
            observed_share=cand.requests / total if total else None,
            candidate=cand.signals(),
            baseline_signals=base.signals(),
            gates=gates,
            can_advance=passing and rollout.state == "running",
            next_action=self._next_action(rollout),
            auto_advance_at=auto_at,
            diff=rollout.candidate.diff,
            on_fail=self._settings.on_fail,
        )

    def _next_action(self, rollout: _Rollout) -> str:
        stages = self._settings.stages
        if rollout.state == "halted":
            return f"resume at {stages[rollout.stage_index].name}"
        nxt = rollout.stage_index + 1
        if nxt >= len(stages) - 1:
            return f"promote {rollout.candidate.label} to baseline"
        return f"advance to {stages[nxt].name}"

    # -- previews --------------------------------------------------------------------------

    def preview(self, command: RolloutCommand) -> Effect:
        return self._plan(command)[0]

    def _plan(self, command: RolloutCommand) -> tuple[Effect, Routing | None]:
        match command:
            case StartRollout() | EditTier():
                return self._plan_release(command)
            case Advance(override):
                return self._plan_advance(override), None
            case Rollback():
                rollout = self._rollout
                if rollout is None:
                    return Effect(False, "no rollout in progress: nothing to roll back"), None
                return (
                    Effect(
                        True,
                        f"rolls back {rollout.candidate.label}: every request returns to "
                        f"{self.baseline.label}",
                    ),
                    None,
                )

    def _plan_release(self, command: StartRollout | EditTier) -> tuple[Effect, Routing | None]:
        baseline = self.baseline
        rollout = self._rollout
        if rollout is not None and not command.emergency:
            return (
                Effect(
                    False,
                    f"{rollout.candidate.label} is rolling out (stage "
                    f"{self._settings.stages[rollout.stage_index].name}): promote or roll it "
                    "back first, or make this an emergency change",
                ),
                None,
            )
        try:
            routing = self._routing_for(command)
        except (ConfigError, ValueError) as exc:
            text = "; ".join(str(p) for p in exc.problems) if isinstance(exc, ConfigError) else exc
            return Effect(False, f"not a valid release: {text}"), None
        diff = diff_routing(baseline.routing, routing)
        if not diff:
            return Effect(False, f"no change against the baseline {baseline.label}"), None
        new = "a new release"
        changes = "; ".join(diff)
        if command.emergency:
            also = f" (rolls back {rollout.candidate.label} first)" if rollout else ""
            return (
                Effect(
                    True,
                    f"EMERGENCY: {new} replaces {baseline.label} for all traffic now, skipping "
                    f"every stage{also}: {changes}",
                    tuple(diff),
                    confirm_text="emergency",
                    needs_reason=True,
                ),
                routing,
            )
        first = self._first_stage()
        who = f"{first.percent:g}%" + (" + internal tenants" if self._internal else "")
        return (
            Effect(True, f"starts {new} at stage {first.name} ({who}): {changes}", tuple(diff)),
            routing,
        )

    def _routing_for(self, command: StartRollout | EditTier) -> Routing:
        baseline = self.baseline
        config = self._file_config
        if isinstance(command, StartRollout):
            # A section the file has replaces the baseline's; one it leaves out is kept.
            routing = routing_from_toml(command.toml, baseline.config, source="the candidate")
            return routing_of(with_routing(config, routing, source="the candidate"))
        if command.tier not in baseline.config.tiers:
            raise ValueError(f"no tier {command.tier!r}; tiers: {', '.join(baseline.config.tiers)}")
        routing = json.loads(json.dumps(baseline.routing))
        routing["tiers"][command.tier]["deployments"] = parse_mapping(command.mapping)
        return routing_of(with_routing(config, routing, source=f"tier {command.tier}"))

    def _first_stage(self) -> StageView:
        stages = self._settings.stages
        index = self._start_index()
        return StageView(stages[index].name, stages[index].percent)

    def _start_index(self) -> int:
        # A 0% stage is for internal tenants; without any it would never see traffic.
        stages = self._settings.stages
        index = 0
        while not self._internal and stages[index].percent <= 0 and index < len(stages) - 2:
            index += 1
        return index

    def _plan_advance(self, override: bool) -> Effect:
        rollout = self._rollout
        if rollout is None:
            return Effect(False, "no rollout in progress: start one with a release first")
        stages = self._settings.stages
        label = rollout.candidate.label
        if rollout.state == "halted":
            summary = (
                f"resumes {label} at {stages[rollout.stage_index].name} "
                f"({stages[rollout.stage_index].percent:g}%): the stage's signals start over"
            )
            if not override:
                return Effect(
                    False,
                    f"{label} is halted ({rollout.state_reason}); resuming needs an override "
                    "with a reason, or roll it back",
                )
            return Effect(True, summary, confirm_text="override", needs_reason=True)
        gates = self._gates(rollout)
        blocking = [g for g in gates if g.verdict != "passing"]
        nxt = rollout.stage_index + 1
        if nxt >= len(stages) - 1:
            summary = f"promotes {label} to baseline: it serves all traffic, replacing " + (
                self.baseline.label
            )
        else:
            summary = (
                f"advances {label} to {stages[nxt].name} ({stages[nxt].percent:g}% of traffic)"
            )
        if blocking and not override:
            why = "; ".join(f"{g.signal} {g.verdict}: {g.why}" for g in blocking)
            return Effect(
                False,
                f"gates do not pass ({why}); advance with an override and a reason, or wait",
            )
        if blocking:
            why = ", ".join(f"{g.signal} {g.verdict}" for g in blocking)
            return Effect(
                True,
                f"OVERRIDE ({why}): {summary}",
                confirm_text="override",
                needs_reason=True,
            )
        return Effect(True, summary)

    # -- applying --------------------------------------------------------------------------

    async def submit(self, command: RolloutCommand, *, actor: str, reason: str) -> CommandResult:
        await self.reload()  # act on the newest state, whichever process changed it last
        effect, routing = self._plan(command)
        action = command_name(command)
        now = self._clock()
        if effect.allowed and effect.needs_reason and not reason.strip():
            effect = Effect(False, f"{effect.summary.split(':')[0]} needs a reason (--reason)")
        if not effect.allowed:
            audit_id = await self._store.audit(
                actor,
                action,
                self._target(),
                {"reason": reason, "summary": effect.summary},
                "refused",
            )
            self._audit(
                AuditView(audit_id, now, actor, action, self._target(), "refused", effect.summary)
            )
            return CommandResult(False, effect.summary, audit_id)
        match command:
            case StartRollout() | EditTier():
                assert routing is not None
                source = command.source if isinstance(command, StartRollout) else "console"
                return await self._start(command, routing, source, actor=actor, reason=reason)
            case Advance(override):
                return await self._advance(actor=actor, reason=reason, override=override)
            case Rollback():
                return await self._rollback(actor=actor, reason=reason, event="rolled_back")

    def _target(self) -> str | None:
        return self._rollout.candidate.label if self._rollout else None

    async def _write_audit(
        self, actor: str, action: str, target: str | None, summary: str, detail: dict[str, Any]
    ) -> int:
        audit_id = await self._store.audit(
            actor, action, target, {"summary": summary, **detail}, "applied"
        )
        self._audit(AuditView(audit_id, self._clock(), actor, action, target, "applied", summary))
        return audit_id

    async def _start(
        self,
        command: StartRollout | EditTier,
        routing: Routing,
        source: str,
        *,
        actor: str,
        reason: str,
    ) -> CommandResult:
        now = self._clock()
        if command.emergency and self._rollout is not None:
            label = self._rollout.candidate.label
            await self._rollback(
                actor=actor,
                reason=f"superseded by an emergency change: {reason}",
                event="rolled_back",
            )
            log.warning("rolled back %s for an emergency change", label)
        baseline = self.baseline
        diff = diff_routing(baseline.routing, routing)
        rid = await self._store.insert(
            "INSERT INTO releases (created_at, actor, note, source, routing, parent, diff, "
            "status, emergency) VALUES (?, ?, ?, ?, ?, ?, ?, 'proposed', ?)",
            (
                now,
                actor,
                command.note,
                source,
                _json(routing),
                baseline.id,
                _json(diff),
                int(command.emergency),
            ),
        )
        row = (await self._store.query("SELECT * FROM releases WHERE id = ?", (rid,)))[0]
        release = make_release(self._file_config, dict(row))
        detail = {"reason": reason, "note": command.note, "diff": diff, "source": source}
        if command.emergency:
            summary = (
                f"emergency: {release.label} replaces {baseline.label} for all traffic, "
                f"stages skipped: {'; '.join(diff)}"
            )
            audit_id = await self._write_audit(
                actor,
                "emergency_change",
                release.label,
                summary,
                {**detail, "before": baseline.label, "after": release.label},
            )
            await self._commit(
                [
                    (
                        "UPDATE releases SET status = 'retired', ended_at = ? WHERE id = ?",
                        (now, baseline.id),
                    ),
                    (
                        "UPDATE releases SET status = 'baseline', promoted_at = ? WHERE id = ?",
                        (now, rid),
                    ),
                    _event(rid, now, actor, "emergency", None, detail),
                ]
            )
            self._set_baseline(release)
            return CommandResult(True, summary, audit_id)
        index = self._start_index()
        stage = self._settings.stages[index]
        skipped = [s.name for s in self._settings.stages[:index]]
        salt = os.urandom(8).hex()
        summary = f"started {release.label} at stage {stage.name}: {'; '.join(diff)}"
        if skipped:
            summary += f" ({', '.join(skipped)} skipped: no tenant is marked internal)"
        audit_id = await self._write_audit(
            actor,
            "rollout_start",
            release.label,
            summary,
            {**detail, "stage": stage.name, "skipped": skipped, "before": baseline.label},
        )
        await self._commit(
            [
                (
                    "UPDATE releases SET status = 'candidate', stage = ?, stage_started_at = ?, "
                    "rollout_state = 'running', state_reason = '', salt = ? WHERE id = ?",
                    (stage.name, now, salt, rid),
                ),
                _event(rid, now, actor, "started", stage.name, detail),
            ]
        )
        rollout = _Rollout(release, index, now, "running", "", salt, actor)
        rollout.reset(self._rng)
        self._rollout = rollout
        return CommandResult(True, summary, audit_id)

    async def _advance(self, *, actor: str, reason: str, override: bool) -> CommandResult:
        rollout = self._rollout
        assert rollout is not None
        now = self._clock()
        stages = self._settings.stages
        gates = [_gate_dict(g) for g in self._gates(rollout)]
        detail: dict[str, Any] = {"reason": reason, "override": override, "gates": gates}
        label = rollout.candidate.label
        if rollout.state == "halted":
            stage = stages[rollout.stage_index]
            summary = f"resumed {label} at {stage.name}"
            audit_id = await self._write_audit(actor, "advance", label, summary, detail)
            await self._move(rollout, rollout.stage_index, now, actor, "resumed", detail)
            return CommandResult(True, summary, audit_id)
        nxt = rollout.stage_index + 1
        if nxt >= len(stages) - 1:
            return await self._promote(actor=actor, detail=detail)
        summary = f"advanced {label} to {stages[nxt].name} ({stages[nxt].percent:g}%)"
        if override:
            summary += " with an override"
        audit_id = await self._write_audit(
            actor,
            "advance",
            label,
            summary,
            {**detail, "before": stages[rollout.stage_index].name, "after": stages[nxt].name},
        )
        await self._move(rollout, nxt, now, actor, "advanced", detail)
        return CommandResult(True, summary, audit_id)

    async def _move(
        self,
        rollout: _Rollout,
        index: int,
        now: float,
        actor: str,
        event: str,
        detail: dict[str, Any],
    ) -> None:
        stage = self._settings.stages[index].name
        await self._commit(
            [
                (
                    "UPDATE releases SET stage = ?, stage_started_at = ?, "
                    "rollout_state = 'running', state_reason = '' WHERE id = ?",
                    (stage, now, rollout.candidate.id),
                ),
                _event(rollout.candidate.id, now, actor, event, stage, detail),
            ]
        )
        rollout.stage_index = index
        rollout.stage_started_at = now
        rollout.state = "running"
        rollout.state_reason = ""
        rollout.reset(self._rng)

    async def _promote(self, *, actor: str, detail: dict[str, Any]) -> CommandResult:
        rollout = self._rollout
        assert rollout is not None
        now = self._clock()
        old = self.baseline
        release = rollout.candidate
        summary = f"promoted {release.label} to baseline (was {old.label})"
        if detail.get("override"):
            summary += " with an override"
        audit_id = await self._write_audit(
            actor,
            "promote",
            release.label,
            summary,
            {**detail, "before": old.label, "after": release.label},
        )
        await self._commit(
            [
                (
                    "UPDATE releases SET status = 'retired', ended_at = ? WHERE id = ?",
                    (now, old.id),
                ),
                (
                    "UPDATE releases SET status = 'baseline', promoted_at = ?, "
                    "stage = ?, rollout_state = NULL WHERE id = ?",
                    (now, self._settings.stages[-1].name, release.id),
                ),
                _event(release.id, now, actor, "promoted", self._settings.stages[-1].name, detail),
            ]
        )
        self._rollout = None
        self._set_baseline(release)
        return CommandResult(True, summary, audit_id)

    async def _rollback(self, *, actor: str, reason: str, event: str) -> CommandResult:
        rollout = self._rollout
        assert rollout is not None
        label = rollout.candidate.label
        stage = self._settings.stages[rollout.stage_index].name
        summary = f"rolled back {label} at {stage}: every request is on {self.baseline.label}"
        detail = {"reason": reason, "gates": [_gate_dict(g) for g in self._gates(rollout)]}
        audit_id = await self._write_audit(
            actor,
            "rollback",
            label,
            summary,
            {**detail, "before": label, "after": self.baseline.label},
        )
        await self._end(
            rollout.candidate.id,
            "rolled_back",
            actor=actor,
            event=event,
            stage=stage,
            reason=reason,
            detail=detail,
        )
        self._rollout = None
        return CommandResult(True, summary, audit_id)

    async def _end(
        self,
        rid: int,
        status: str,
        *,
        actor: str,
        event: str,
        stage: str | None,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        now = self._clock()
        await self._commit(
            [
                (
                    "UPDATE releases SET status = ?, ended_at = ?, rollout_state = NULL, "
                    "state_reason = ? WHERE id = ?",
                    (status, now, reason, rid),
                ),
                _event(rid, now, actor, event, stage, {"reason": reason, **(detail or {})}),
            ]
        )

    async def _commit(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        # One transaction with the bump that makes other processes on this file reload.
        await self._store.write_many([*statements, bump_statement(self._clock())])

    def _set_baseline(self, release: Release) -> None:
        self._baseline = release
        self._on_baseline(release)

    # -- automation ------------------------------------------------------------------------

    async def evaluate(self, *, act: bool = True) -> str | None:
        """Bring the signals up to date and, with ``act``, act on the gates: halt or roll back
        on a failing gate, advance after the dwell.

        Returns what it did (``halted``, ``rolled_back``, ``advanced``, ``promoted``) or None.
        The engine calls this with every snapshot; only the process holding the automation
        lease acts, so that processes sharing a state file decide once."""
        await self.refresh()
        rollout = self._rollout
        if rollout is None or rollout.state != "running" or not act:
            return None
        now = self._clock()
        gates = self._gates(rollout)
        failing = [g for g in gates if g.verdict == "failing"]
        stage = self._settings.stages[rollout.stage_index].name
        label = rollout.candidate.label
        if failing:
            why = "; ".join(f"{g.signal}: {g.why}" for g in failing)
            detail = {"gates": [_gate_dict(g) for g in gates], "reason": why}
            if self._settings.on_fail == "rollback":
                message = f"{label} rolled back at {stage}: {why}"
                await self._rollback(actor="gate", reason=why, event="rolled_back")
                action = "rolled_back"
            else:
                message = f"{label} halted at {stage}, traffic back on {self.baseline.label}: {why}"
                await self._write_audit(
                    "gate",
                    "halt",
                    label,
                    message,
                    {**detail, "before": f"{stage} running", "after": f"{stage} halted"},
                )
                await self._commit(
                    [
                        (
                            "UPDATE releases SET rollout_state = 'halted', state_reason = ? "
                            "WHERE id = ?",
                            (why, rollout.candidate.id),
                        ),
                        _event(rollout.candidate.id, now, "gate", "halted", stage, detail),
                    ]
                )
                rollout.state = "halted"
                rollout.state_reason = why
                action = "halted"
            await self._raise_alert(
                f"rollout:{label}:{action}:{stage}:{int(now)}",
                "critical",
                message,
                {"release": label, "stage": stage, **detail},
            )
            return action
        passing = all(g.verdict == "passing" for g in gates)
        if not passing:
            rollout.passing_since = None
            return None
        if rollout.passing_since is None:
            rollout.passing_since = now
        if not self._settings.auto_advance:
            return None
        if now - max(rollout.passing_since, rollout.stage_started_at) < self._settings.dwell_s:
            return None
        promote = rollout.stage_index + 1 >= len(self._settings.stages) - 1
        await self._advance(
            actor="auto", reason=f"gates passed for {self._settings.dwell_s:g} s", override=False
        )
        return "promoted" if promote else "advanced"

    # -- reading history -------------------------------------------------------------------

    async def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest releases, newest first, with their rollout events."""
        rows = await self._store.query(
            "SELECT id, created_at, actor, note, source, parent, diff, status, emergency, stage, "
            "rollout_state, state_reason, promoted_at, ended_at FROM releases "
            "WHERE status != 'proposed' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        out = []
        for row in rows:
            item = dict(row)
            item["diff"] = json.loads(item["diff"])
            item["emergency"] = bool(item["emergency"])
            events = await self._store.query(
                "SELECT at, actor, event, stage, detail FROM rollout_events WHERE release = ? "
                "ORDER BY id",
                (row["id"],),
            )
            item["events"] = [{**dict(e), "detail": json.loads(e["detail"])} for e in events]
            out.append(item)
        return out


def bucket(salt: str, unit: str) -> int:
    """A stable number in [0, 10000) for one assignment unit of one rollout."""
    digest = hashlib.blake2b(f"{salt}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def _gate_dict(gate: GateView) -> dict[str, Any]:
    return {
        "signal": gate.signal,
        "verdict": gate.verdict,
        "candidate": gate.candidate,
        "baseline": gate.baseline,
        "limit": gate.limit,
        "why": gate.why,
    }


def _event(
    rid: int, at: float, actor: str, event: str, stage: str | None, detail: Mapping[str, Any]
) -> tuple[str, Sequence[Any]]:
    return (
        "INSERT INTO rollout_events (release, at, actor, event, stage, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (rid, at, actor, event, stage, _json(detail)),
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
