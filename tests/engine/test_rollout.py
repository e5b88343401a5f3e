"""Releases and canary rollouts over simulated upstreams: stages, sticky arms, gates, restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest

from engine.commands import Advance, EditTier, Rollback, StartRollout
from engine.config import parse_config
from engine.engine import Engine
from engine.pipeline import Inbound
from engine.releases import parse_mapping, routing_of
from engine.rollout import bucket
from engine.snapshot import RolloutView, Snapshot
from providers.canonical import ChatRequest, Message, TextPart
from tests.engine.conftest import CHAT_LOW, Proxy, make_config, running

# Internal tenant "staff" sees every release first; small samples so that tests are quick.
ROLLOUT = """
[tenants.staff]
internal = true

[tenants.local]

[rollout]
on_fail = "{on_fail}"
latency = {{ max_ratio = 3.0, max_delta = 2000, min_samples = 20 }}
errors = {{ max_delta = 0.05, min_samples = 20 }}
fallback = {{ max_delta = 0.1, min_samples = 20 }}
cost = {{ max_ratio = {cost_ratio}, min_samples = 20 }}
"""

REQUEST = ChatRequest(
    model="low", messages=(Message("user", (TextPart("Classify: urgent or not?"),)),)
)


def rollout_config(*, on_fail: str = "halt", cost_ratio: float = 1.2) -> str:
    return ROLLOUT.format(on_fail=on_fail, cost_ratio=cost_ratio)


async def staff_key(proxy: Proxy) -> str:
    key, _ = await proxy.engine.keys.create("staff", "rollout tests", now=proxy.engine.clock())
    return key


async def send(
    engine: Engine,
    users: Iterable[str | None],
    *,
    key: str | None = None,
    request: ChatRequest = REQUEST,
) -> list[tuple[str, str, int]]:
    """(arm, deployment, status) of one request per user, 50 at a time."""
    results: list[tuple[str, str, int]] = []

    async def one(user: str | None) -> tuple[str, str, int]:
        try:
            _, meta = await engine.complete(request, Inbound(api="openai", key=key, user=user))
        except Exception as exc:  # a failed request still counts; its arm is in the log
            return ("?", "", getattr(exc, "status", 500))
        return (meta.arm, meta.deployment, 200)

    batch: list[str | None] = []
    for user in users:
        batch.append(user)
        if len(batch) == 50:
            results += await asyncio.gather(*(one(u) for u in batch))
            batch = []
    results += await asyncio.gather(*(one(u) for u in batch))
    return results


def users(prefix: str, n: int) -> list[str | None]:
    return [f"{prefix}-{i}" for i in range(n)]


async def wait_rollout(
    engine: Engine, predicate: Callable[[RolloutView | None], bool], deadline_s: float = 5.0
) -> Snapshot:
    """The first snapshot whose rollout satisfies ``predicate`` (the gates act as snapshots are
    taken)."""
    async with asyncio.timeout(deadline_s):
        async for snap in engine.snapshots():
            if predicate(snap.rollout):
                return snap
    raise AssertionError("unreachable")


async def rollout(engine: Engine) -> RolloutView:
    """The rollout as of every request sent so far (signals come from the flushed log)."""
    await engine.store.flush()
    await engine.rollouts.refresh()
    view = engine.snapshot(fresh=True).rollout
    assert view is not None
    return view


async def test_first_start_records_the_config_as_release_one(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as proxy:
        snap = proxy.engine.snapshot(fresh=True)
        assert snap.release == "r1" and snap.rollout is None
        rows = await proxy.engine.store.query("SELECT id, status, source FROM releases")
        assert [tuple(r) for r in rows] == [(1, "baseline", "config")]
        async with httpx.AsyncClient(base_url=proxy.url) as http:
            r = await http.post("/v1/chat/completions", json=CHAT_LOW)
        assert r.headers["x-routedeck-arm"] == "baseline"
        assert r.headers["x-routedeck-release"] == "r1"


async def test_a_failing_candidate_halts_at_canary_and_its_traffic_returns(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, rollout_config(cost_ratio=100))
    async with running(config) as proxy:
        engine = proxy.engine
        staff = await staff_key(proxy)
        result = await engine.submit(
            EditTier("low", "b-mid", note="low on b-mid"), actor="alice", reason="try b"
        )
        assert result.ok, result.message
        assert (await rollout(engine)).stage == "internal"
        # Internal stage: healthy on both arms, so the gates pass and it may advance.
        await send(engine, users("staff", 25), key=staff)
        await send(engine, users("u", 25))
        view = await rollout(engine)
        assert view.can_advance, view.gates
        assert (await engine.submit(Advance(), actor="alice")).ok
        assert (await rollout(engine)).stage == "canary"

        # The candidate's deployment now fails most requests; the baseline's does not.
        proxy.fail("sim-b", error_rate=0.7, error_status=500)
        results = await send(engine, users("staff", 40), key=staff)
        results += await send(engine, users("u", 60))
        snap = await wait_rollout(engine, lambda r: r is not None and r.state == "halted")
        view = snap.rollout
        assert view is not None and view.stage == "canary"
        errors = next(g for g in view.gates if g.signal == "errors")
        assert errors.verdict == "failing"
        assert "errors" in view.state_reason
        assert view.target_percent == 0

        # Traffic is back on the baseline, internal tenants included.
        after = await send(engine, users("staff", 20), key=staff)
        assert {arm for arm, _, _ in after} == {"baseline"}
        assert {dep for _, dep, _ in after} == {"a-mini"}

        await engine.store.flush()
        audit = await engine.store.fetch_audit()
        halt = [a for a in audit if a["action"] == "halt"]
        assert len(halt) == 1 and halt[0]["actor"] == "gate" and halt[0]["target"] == "r2"
        assert any(
            g["signal"] == "errors" and g["verdict"] == "failing"
            for g in halt[0]["detail"]["gates"]
        )
        alerts = [a for a in snap.alerts if a.kind == "rollout"]
        assert alerts and alerts[0].severity == "critical" and "halted" in alerts[0].message
        events = await engine.store.query(
            "SELECT event, stage FROM rollout_events WHERE release = 2 ORDER BY id"
        )
        assert [tuple(e) for e in events] == [
            ("started", "internal"),
            ("advanced", "canary"),
            ("halted", "canary"),
        ]
        # Resuming needs an override with a reason; rolling back needs neither.
        assert not engine.preview(Advance()).allowed
        assert not (await engine.submit(Advance(override=True), actor="bob")).ok
        assert (await engine.submit(Rollback(), actor="bob", reason="b is broken")).ok
        assert engine.snapshot(fresh=True).rollout is None
        status = await engine.store.query("SELECT status FROM releases WHERE id = 2")
        assert status[0]["status"] == "rolled_back"


async def test_on_fail_rollback_ends_the_rollout_on_its_own(tmp_path: Path) -> None:
    config = make_config(tmp_path, rollout_config(on_fail="rollback", cost_ratio=100))
    async with running(config) as proxy:
        engine = proxy.engine
        staff = await staff_key(proxy)
        proxy.fail("sim-b", error_rate=1.0, error_status=503)
        assert (await engine.submit(EditTier("low", "b-mid"), actor="alice")).ok
        await send(engine, users("staff", 25), key=staff)
        await send(engine, users("u", 25))
        await wait_rollout(engine, lambda r: r is None)
        rows = await engine.store.query("SELECT id, status FROM releases ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "baseline"), (2, "rolled_back")]
        audit = await engine.store.fetch_audit()
        assert [(a["action"], a["actor"]) for a in audit][-1] == ("rollback", "gate")


async def test_a_more_expensive_candidate_fails_the_cost_gate_with_no_errors(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        staff = await staff_key(proxy)
        # b-mid costs 1.5/4 dollars per million tokens against a-mini's 1/2; answers of the
        # same length make the price the only difference.
        assert (await engine.submit(EditTier("low", "b-mid > a-mini"), actor="a")).ok
        short = ChatRequest(model="low", messages=REQUEST.messages, max_tokens=16)
        await send(engine, users("staff", 25), key=staff, request=short)
        await send(engine, users("u", 25), request=short)
        snap = await wait_rollout(engine, lambda r: r is not None and r.state == "halted")
        assert snap.rollout is not None
        verdicts = {g.signal: g.verdict for g in snap.rollout.gates}
        assert verdicts == {
            "latency": "passing",
            "errors": "passing",
            "fallback": "passing",
            "cost": "failing",
        }
        cand = snap.rollout.candidate
        base = snap.rollout.baseline_signals
        assert cand is not None and base is not None
        assert cand.error_rate == 0 and base.error_rate == 0
        assert cand.cost_per_success_usd is not None and base.cost_per_success_usd is not None
        assert cand.cost_per_success_usd > 1.2 * base.cost_per_success_usd
        assert snap.rollout.state_reason.startswith("cost: cost/success")


async def test_a_healthy_candidate_advances_to_full_and_becomes_the_baseline(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        staff = await staff_key(proxy)
        # Same deployments, other order for medium: no signal should tell them apart much.
        result = await engine.submit(
            StartRollout(
                _routing_toml(medium='["a-mini", "b-mid"]'),
                note="medium on a-mini first",
                source="file",
            ),
            actor="alice",
        )
        assert result.ok, result.message
        stages = []
        for _ in range(4):
            view = await rollout(engine)
            stages.append(view.stage)
            await send(engine, users("staff", 25), key=staff)
            await send(engine, users(f"u{view.stage}", 60))  # baseline >= 20 at 20%
            assert (await rollout(engine)).can_advance, (await rollout(engine)).gates
            effect = engine.preview(Advance())
            assert effect.allowed and not effect.needs_reason
            assert (await engine.submit(Advance(), actor="alice")).ok
        assert stages == ["internal", "canary", "5%", "20%"]
        snap = engine.snapshot(fresh=True)
        assert snap.rollout is None and snap.release == "r2"
        medium = next(t for t in snap.tiers if t.name == "medium")
        assert medium.mapping == "a-mini > b-mid"
        req = ChatRequest(model="medium", messages=REQUEST.messages)
        _, meta = await engine.complete(req, Inbound(api="openai"))
        assert (meta.deployment, meta.release, meta.arm) == ("a-mini", "r2", "baseline")
        rows = await engine.store.query("SELECT id, status FROM releases ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "retired"), (2, "baseline")]
        events = await engine.store.query("SELECT event FROM rollout_events ORDER BY id")
        assert [e["event"] for e in events] == [
            "started",
            "advanced",
            "advanced",
            "advanced",
            "promoted",
        ]


def _routing_toml(*, medium: str) -> str:
    return f"""
[tiers.low]
deployments = ["a-mini", "b-mid"]
connect_timeout_s = 1
first_token_timeout_s = 1
attempt_timeout_s = 1
timeout_s = 3

[tiers.medium]
deployments = {medium}
timeout_s = 3
first_token_timeout_s = 1
attempt_timeout_s = 1

[tiers.high]
deployments = ["c-big", "b-mid"]
timeout_s = 3
first_token_timeout_s = 1
attempt_timeout_s = 1

[aliases]
"gpt-4o-mini" = "low"
"claude-sonnet" = "medium"
"""


async def test_auto_advance_after_the_dwell_with_passing_gates(tmp_path: Path) -> None:
    extra = rollout_config() + "auto_advance = true\ndwell_s = 0\n"
    async with running(make_config(tmp_path, extra)) as proxy:
        engine = proxy.engine
        staff = await staff_key(proxy)
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        assert (await rollout(engine)).stage == "internal"
        await send(engine, users("staff", 25), key=staff)
        await send(engine, users("u", 25))
        snap = await wait_rollout(engine, lambda r: r is not None and r.stage == "canary")
        assert snap.rollout is not None and snap.rollout.candidate is not None
        assert snap.rollout.candidate.requests == 0  # the new stage's signals start over
        audit = await engine.store.fetch_audit()
        assert (audit[-1]["action"], audit[-1]["actor"]) == ("advance", "auto")


async def test_share_on_the_candidate_follows_each_stage(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        shares = {}
        for stage in ("canary", "5%", "20%"):
            assert (await engine.submit(Advance(override=True), actor="a", reason="share test")).ok
            view = await rollout(engine)
            assert view.stage == stage
            await send(engine, users(f"share-{stage}", 2000))
            # Every request's arm from the log, failed ones included.
            await engine.store.flush()
            rows = await engine.store.query(
                "SELECT arm, COUNT(*) FROM requests WHERE started_at >= ? GROUP BY arm",
                (view.stage_started_at,),
            )
            counts = {row[0]: row[1] for row in rows}
            assert sum(counts.values()) == 2000
            shares[stage] = counts.get("candidate", 0) / 2000
            # 2000 users: at 20% one standard deviation is 0.9 points; 3 points is over 3.
            assert abs(shares[stage] - view.target_percent / 100) < 0.03, shares
            # The rollout's own signals see the same split (they leave out the few requests
            # that are not judged, like a failure that is the client's own).
            observed = (await rollout(engine)).observed_share
            assert observed is not None and abs(observed - shares[stage]) < 0.005


async def test_restart_mid_rollout_keeps_the_stage_and_every_users_arm(tmp_path: Path) -> None:
    config = make_config(tmp_path, rollout_config())
    people = users("person", 300)
    async with running(config) as proxy:
        engine = proxy.engine
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        arms_by_stage = []
        for _ in range(3):  # canary, 5%, 20%
            assert (await engine.submit(Advance(override=True), actor="a", reason="t")).ok
            results = await send(engine, people)
            arms_by_stage.append(
                {u for u, r in zip(people, results, strict=True) if r[0] == "candidate"}
            )
        # A wider stage only adds users: nobody flips back to the baseline.
        assert arms_by_stage[0] <= arms_by_stage[1] <= arms_by_stage[2]
        assert 30 < len(arms_by_stage[2]) < 100  # about 20% of 300
        before = await rollout(engine)
        assert before.stage == "20%"
    async with running(config) as proxy:
        engine = proxy.engine
        after = await rollout(engine)
        assert (after.release, after.stage, after.stage_started_at) == (
            before.release,
            before.stage,
            before.stage_started_at,
        )
        for arm in ("candidate", "baseline_signals"):
            a, b = getattr(after, arm), getattr(before, arm)
            assert a is not None and b is not None
            # The same requests; sums of dollars may differ in their last bits by read order.
            assert (a.requests, a.successes, a.p95_ms) == (b.requests, b.successes, b.p95_ms)
            assert a.cost_per_success_usd == pytest.approx(b.cost_per_success_usd)
        results = await send(engine, people)
        assert {
            u for u, r in zip(people, results, strict=True) if r[0] == "candidate"
        } == arms_by_stage[2]


async def test_overlapping_refreshes_count_each_request_once(tmp_path: Path) -> None:
    """The snapshot loop and a command can refresh the signals at the same time; each logged
    request must still count once (it did twice when both read from the same row id)."""
    config = make_config(tmp_path, rollout_config())
    async with running(config) as proxy:
        engine = proxy.engine
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        for _ in range(3):  # canary, 5%, 20%
            assert (await engine.submit(Advance(override=True), actor="a", reason="t")).ok
        results = await send(engine, users("overlap", 200))
        assert all(status == 200 for _, _, status in results)
        await engine.store.flush()
        await asyncio.gather(*(engine.rollouts.refresh() for _ in range(3)))
        view = engine.snapshot(fresh=True).rollout
        assert view is not None and view.candidate is not None
        assert view.baseline_signals is not None
        rows = await engine.store.query(
            "SELECT arm, COUNT(*) FROM requests WHERE started_at >= ? GROUP BY arm",
            (view.stage_started_at,),
        )
        logged = {row[0]: row[1] for row in rows}
        assert view.candidate.requests == logged.get("candidate", 0) > 0
        assert view.baseline_signals.requests == logged["baseline"]


async def test_emergency_change_applies_to_everyone_at_once(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        change = EditTier("low", "b-mid", note="sim-a is down", emergency=True)
        effect = engine.preview(change)
        assert effect.allowed and effect.confirm_text == "emergency" and effect.needs_reason
        assert "rolls back r2 first" in effect.summary
        refused = await engine.submit(change, actor="oncall")
        assert not refused.ok and "reason" in refused.message
        assert engine.snapshot(fresh=True).release == "r1"
        result = await engine.submit(change, actor="oncall", reason="INC-7: sim-a 100% 500s")
        assert result.ok, result.message
        snap = engine.snapshot(fresh=True)
        assert snap.rollout is None and snap.release == "r3"
        results = await send(engine, users("x", 30))
        assert {(arm, dep) for arm, dep, _ in results} == {("baseline", "b-mid")}
        rows = await engine.store.query("SELECT id, status, emergency FROM releases ORDER BY id")
        assert [tuple(r) for r in rows] == [
            (1, "retired", 0),
            (2, "rolled_back", 0),
            (3, "baseline", 1),
        ]
        audit = await engine.store.fetch_audit()
        last = audit[-1]
        assert (last["action"], last["actor"], last["target"]) == (
            "emergency_change",
            "oncall",
            "r3",
        )
        assert last["detail"]["reason"] == "INC-7: sim-a 100% 500s"
        assert last["detail"]["diff"] == ["tiers.low: a-mini > b-mid → b-mid"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (EditTier("low", "a-mini > nope"), "unknown deployment 'nope'"),
        (EditTier("lowest", "a-mini"), "no tier 'lowest'"),
        (EditTier("low", "a-mini >"), "step 2"),
        (EditTier("low", "a-mini > b-mid"), "no change against the baseline r1"),
        (StartRollout("[tiers.low\n"), "not valid TOML"),
        (StartRollout("[server]\nport = 1\n"), "has no routing section"),
        (StartRollout("[tier.low]\ndeployments = ['a-mini']\n"), "did you mean `tiers`"),
        (
            StartRollout(_routing_toml(medium='["a-mini"]') + "[policy.breaker]\nopen_s = 1\n"),
            "policy.breaker: is engine-wide",
        ),
        (
            StartRollout(
                '[deployments.new]\nprovider = "sim-a"\nmodel = "x"\n'
                + _routing_toml(medium='["new"]')
            ),
            "a release changes routing only",
        ),
        (Advance(), "no rollout in progress"),
        (Rollback(), "no rollout in progress"),
    ],
)
async def test_bad_releases_are_refused_with_the_reason_and_nothing_changes(
    tmp_path: Path, command: object, message: str
) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        effect = engine.preview(command)  # type: ignore[arg-type]
        assert not effect.allowed and message in effect.summary, effect.summary
        result = await engine.submit(command, actor="a")  # type: ignore[arg-type]
        assert not result.ok and message in result.message
        rows = await engine.store.query(
            "SELECT id, status FROM releases WHERE status != 'proposed'"
        )
        assert [tuple(r) for r in rows] == [(1, "baseline")]
        audit = await engine.store.fetch_audit()
        assert audit[-1]["result"] == "refused"


async def test_advance_with_failing_gates_needs_an_override_and_a_reason(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        assert (await engine.submit(EditTier("medium", "a-mini > b-mid"), actor="a")).ok
        effect = engine.preview(Advance())
        assert not effect.allowed and "latency waiting" in effect.summary
        override = engine.preview(Advance(override=True))
        assert override.allowed and override.confirm_text == "override" and override.needs_reason
        assert not (await engine.submit(Advance(override=True), actor="a")).ok
        result = await engine.submit(Advance(override=True), actor="a", reason="no internal users")
        assert result.ok and "override" in result.message
        audit = await engine.store.fetch_audit()
        assert audit[-1]["detail"]["override"] is True
        assert audit[-1]["detail"]["reason"] == "no internal users"
        assert [g["verdict"] for g in audit[-1]["detail"]["gates"]] == ["waiting"] * 4


async def test_a_changed_config_file_becomes_a_new_baseline_at_start(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as proxy:
        assert proxy.engine.snapshot(fresh=True).release == "r1"
    changed = make_config(tmp_path, '[tasks]\nclassify = "low"\n')
    async with running(changed) as proxy:
        assert proxy.engine.snapshot(fresh=True).release == "r2"
        audit = await proxy.engine.store.fetch_audit()
        assert audit[-1]["action"] == "release_baseline"
        assert audit[-1]["detail"]["diff"] == ['+ tasks.classify = "low"']
    async with running(changed) as proxy:  # unchanged file: same baseline
        assert proxy.engine.snapshot(fresh=True).release == "r2"


async def test_export_writes_the_promoted_routing_back_as_toml(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, rollout_config())) as proxy:
        engine = proxy.engine
        change = EditTier("high", "b-mid > c-big", emergency=True)
        assert (await engine.submit(change, actor="a", reason="test")).ok
        async with httpx.AsyncClient(base_url=proxy.url) as http:
            text = (await http.get("/admin/export")).text
            routing_only = (await http.get("/admin/export", params={"routing_only": "1"})).text
        assert text.startswith("# routedeck config exported from release r2")
        exported = parse_config(text)
        assert routing_of(exported) == routing_of(engine.config)
        assert exported.tiers["high"].deployments == ("b-mid", "c-big")
        assert "[providers" not in routing_only and "[tiers.high]" in routing_only


def test_mapping_syntax_round_trips() -> None:
    assert parse_mapping("a > b=3 + c > d") == ["a", {"b": 3.0, "c": 1.0}, "d"]
    with pytest.raises(ValueError, match="weight after `=` must be a number"):
        parse_mapping("a=x + b")
    with pytest.raises(ValueError, match="empty"):
        parse_mapping("  ")


def test_buckets_are_stable_and_uniform() -> None:
    assert bucket("salt", "acme\x00u1") == bucket("salt", "acme\x00u1")
    values = [bucket("s", f"t\x00user{i}") for i in range(20_000)]
    below = sum(v < 500 for v in values) / len(values)
    assert abs(below - 0.05) < 0.006
    assert json.dumps(values[:3]) != json.dumps([bucket("t", f"t\x00user{i}") for i in range(3)])
