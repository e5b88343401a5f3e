"""Retention: a week of request logs rolls up into hourly aggregates, the raw rows go, and the
reports answer the same from what is left."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from engine.analysis import window_report
from engine.config import Config
from engine.engine import Engine
from engine.report import daily_report
from state.records import AttemptRecord, RequestRecord
from state.rollups import HOUR, prune, quantile, roll_up, rolled_up_until
from state.store import Store
from tests.engine.conftest import make_config

WEEK_START = 1_763_942_400.0  # 2025-11-24 00:00 UTC, a Monday
DAY = 86400.0
EXTRA = """
[deployments.d-max]
provider = "sim-c"
model = "d-max-1"
price = { input_per_mtok = 10.0, output_per_mtok = 40.0 }

[tiers.max]
deployments = ["d-max", "b-mid"]

[tasks]
classify = "max"
summarize = "low"
extract = "medium"
"""


def synthetic_week(
    seed: int = 7, per_hour: int = 12
) -> tuple[list[RequestRecord], list[AttemptRecord]]:
    """A week of traffic: task types on their tiers, failures, fallbacks, cache hits, a
    rollout's candidate arm, and latencies spread over three orders of magnitude."""
    rng = random.Random(seed)
    requests: list[RequestRecord] = []
    attempts: list[AttemptRecord] = []
    plan = {
        "classify": ("max", "d-max", "sim-c", 10.0, 40.0),
        "summarize": ("low", "a-mini", "sim-a", 1.0, 2.0),
        "extract": ("medium", "b-mid", "sim-b", 1.5, 4.0),
    }
    n = 0
    for hour in range(7 * 24):
        for _ in range(per_hour):
            n += 1
            task = rng.choice(list(plan))
            tier, dep, provider, p_in, p_out = plan[task]
            at = WEEK_START + hour * HOUR + rng.uniform(0, HOUR - 1)
            tokens_in, tokens_out = rng.randint(50, 400), rng.randint(5, 120)
            roll = rng.random()
            outcome, status, fallback, cache = "ok", 200, False, "miss"
            served: str | None = dep
            path = [dep]
            if roll < 0.05:
                outcome, status, served, path = "5xx", 502, None, [dep]
            elif roll < 0.12:
                fallback, path = True, [dep, "a-mini" if dep != "a-mini" else "b-mid"]
                served = path[-1]
            elif roll < 0.18:
                cache = "hit"
                served, path = None, []
            cost = None
            if served is not None:
                price = (
                    (1.0, 2.0)
                    if served == "a-mini"
                    else (1.5, 4.0)
                    if served == "b-mid"
                    else (p_in, p_out)
                )
                cost = (tokens_in * price[0] + tokens_out * price[1]) / 1e6
            elif cache == "hit":
                cost = 0.0
            arm = "candidate" if hour >= 6 * 24 and rng.random() < 0.2 else "baseline"
            rid = f"req-{n}"
            requests.append(
                RequestRecord(
                    request_id=rid,
                    started_at=at,
                    tenant=rng.choice(["acme", "globex", "local"]),
                    api="openai",
                    model_requested="auto",
                    tier=tier,
                    tier_reason="task",
                    arm=arm,
                    deployment=served,
                    provider=None
                    if served is None
                    else {"a-mini": "sim-a", "b-mid": "sim-b"}.get(served, provider),
                    stream=rng.random() < 0.3,
                    status=status,
                    outcome=outcome,
                    attempts=len(path),
                    fallback=fallback,
                    latency_ms=rng.lognormvariate(5, 1),
                    ttft_ms=rng.lognormvariate(4, 1),
                    input_tokens=None if outcome != "ok" else tokens_in,
                    output_tokens=None if outcome != "ok" else tokens_out,
                    cost_usd=cost,
                    cache=cache,
                    task=task,
                    saved_usd=0.001 if cache == "hit" else None,
                    release=2 if arm == "candidate" else 1,
                )
            )
            for i, d in enumerate(path, start=1):
                last = i == len(path)
                attempts.append(
                    AttemptRecord(
                        request_id=rid,
                        attempt=i,
                        started_at=at,
                        deployment=d,
                        provider={"a-mini": "sim-a", "b-mid": "sim-b"}.get(d, "sim-c"),
                        model=d + "-1",
                        outcome="ok" if last and outcome == "ok" else "5xx",
                        http_status=200 if last and outcome == "ok" else 502,
                        latency_ms=rng.lognormvariate(4.5, 1),
                        ttft_ms=None,
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                    )
                )
    return requests, attempts


async def fill(store: Store, requests: list[RequestRecord], attempts: list[AttemptRecord]) -> None:
    for rec in requests:
        store.log_request(rec)
    for att in attempts:
        store.log_attempt(att)
    await store.flush()


def config_for(tmp_path: Path, retention: str = "") -> Config:
    return make_config(tmp_path, EXTRA + "\n[tenants.acme]\n[tenants.globex]\n" + retention)


async def test_a_week_rolls_up_and_the_reports_answer_the_same(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    requests, attempts = synthetic_week()
    end = WEEK_START + 7 * DAY
    async with Store(config.state_path()) as store:
        await store.write(
            "INSERT INTO releases (id, created_at, actor, note, source, routing, parent, diff, "
            "status) VALUES (1, 0, 'config', '', 'config', '{}', NULL, '[]', 'retired'), "
            "(2, 0, 'ops', '', 'console', '{}', 1, '[]', 'baseline')"
        )
        await fill(store, requests, attempts)
        before = await window_report(store, config, start=WEEK_START, end=end)
        day_before = await daily_report(store, day="2025-11-26", config=config)

        hours = await roll_up(store, until=end)
        assert hours == 7 * 24
        assert await rolled_up_until(store) == end
        assert await roll_up(store, until=end) == 0  # idempotent: nothing twice
        pruned = await prune(store, raw_before=end - DAY, hours_before=0, audit_before=None)
        assert pruned.requests == sum(r.started_at < end - DAY for r in requests)
        left = await store.query("SELECT COUNT(*), MIN(started_at) FROM requests")
        assert left[0][0] == sum(r.started_at >= end - DAY for r in requests)
        assert left[0][1] >= end - DAY

        after = await window_report(store, config, start=WEEK_START, end=end)
        day_after = await daily_report(store, day="2025-11-26", config=config)

    # Counts, tokens and the latency histogram are exact; dollar sums differ only by the order
    # floating-point additions happened in.
    def money_free(report: object) -> object:
        return _round(dataclasses.asdict(report))  # type: ignore[call-overload]

    assert money_free(after) == money_free(before)
    assert money_free(day_after) == money_free(day_before)
    h = after.headline
    assert h.requests == len(requests)
    assert h.successes == sum(r.outcome == "ok" for r in requests)
    assert h.cost_usd == pytest.approx(sum(r.cost_usd or 0.0 for r in requests))
    assert after.fallbacks.fallbacks == sum(
        r.fallback and r.deployment is not None for r in requests
    )
    assert dict(after.fallbacks.by_cause) == {
        "5xx": sum(1 for a in attempts if a.outcome == "5xx" and _followed(a, attempts))
    }
    # Answer 1 still flags classification on the strongest tier, with the same avoidable cost.
    assert [m.task for m in after.misrouted] == ["classify"]
    assert after.misrouted[0].avoidable_usd == pytest.approx(before.misrouted[0].avoidable_usd)
    # Answer 4: the candidate arm of the last day against its baseline.
    assert [(r.candidate, r.baseline) for r in after.rollouts] == [("r2", "r1")]
    # The p95 from histograms is within a bucket (20%) of the exact figure.
    exact = sorted(r.latency_ms for r in requests if r.outcome == "ok")
    p95 = exact[int(0.95 * len(exact))]
    assert h.p95_ms is not None and abs(h.p95_ms - p95) / p95 < 0.2


def _followed(a: AttemptRecord, attempts: list[AttemptRecord]) -> bool:
    return any(b.request_id == a.request_id and b.attempt > a.attempt for b in attempts)


def _round(value: object) -> object:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items() if k != "rolled_up_until"}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


async def test_the_engine_applies_retention_on_its_configured_ages(tmp_path: Path) -> None:
    now = WEEK_START + 8 * DAY
    config = config_for(
        tmp_path, "[retention]\nrequests_days = 2\nhourly_days = 5\naudit_days = 3\n"
    )
    requests, attempts = synthetic_week(per_hour=2)
    async with Engine(config, clock=lambda: now) as engine:
        await fill(engine.store, requests, attempts)
        await engine.store.audit("ops", "drain", "sim-a", {"summary": "old"}, "applied")
        await engine.store.write("UPDATE audit SET at = ? WHERE actor = 'ops'", (now - 4 * DAY,))
        pruned = await engine.apply_retention()
        assert pruned.requests == sum(r.started_at < now - 2 * DAY for r in requests)
        assert pruned.request_hours > 0 and pruned.audit == 1
        oldest_hour = await engine.store.query("SELECT MIN(hour) FROM request_hours")
        assert oldest_hour[0][0] >= now - 5 * DAY
        # Everything complete is rolled up; the grace period keeps the last 15 minutes raw.
        assert await rolled_up_until(engine.store) == now - now % HOUR - (
            HOUR if now % HOUR < config.retention.grace_s else 0
        )


def test_quantiles_interpolate_inside_a_bucket() -> None:
    assert quantile({}, 0.95) is None
    assert quantile({10: 100}, 0.5) == pytest.approx((1.2**9 + 1.2**10) / 2, rel=1e-3)
