"""`routedeck report`'s answers for a known traffic mix sent through the simulated providers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from console.cli import main
from engine.analysis import render_text, to_dict, window_report
from engine.commands import EditTier
from engine.config import load_config
from engine.engine import Engine
from tests.engine.conftest import TEST_CONFIG, Proxy, make_config, running, wait_logged

# "classify" is small work deliberately mapped to the strongest tier ("max", priced 10/40 per
# million tokens against low's 1/2); "plan" is large work on the same tier.
MIX = """
[deployments.d-max]
provider = "sim-c"
model = "d-max-1"
price = { input_per_mtok = 10.0, output_per_mtok = 40.0 }

[tiers.max]
deployments = ["d-max", "b-mid"]
timeout_s = 3
attempt_timeout_s = 1
first_token_timeout_s = 1

[tasks]
classify = "max"
plan = "max"
summarize = "low"
extract = "medium"

[tenants.staff]
internal = true

[tenants.local]

[cache]
enabled = false

[policy]
retry_budget_floor = 20

[policy.breaker]
consecutive_failures = 50
min_attempts = 50

[report]
low_complexity_max_input_tokens = 500
low_complexity_max_output_tokens = 200
"""
LONG = "Plan the migration of the billing service step by step. " * 150


async def chat(
    http: httpx.AsyncClient, task: str, text: str, *, key: str | None = None, max_tokens: int = 64
) -> httpx.Response:
    headers = {"x-routedeck-task": task}
    if key:
        headers["authorization"] = f"Bearer {key}"
    r = await http.post(
        "/v1/chat/completions",
        json={
            "model": "auto",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return r


async def send_mix(proxy: Proxy) -> int:
    engine = proxy.engine
    sent = 0
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        for i in range(30):
            await chat(
                http, "classify", f"Classify ticket {i}: billing, bug or other?", max_tokens=8
            )
        for i in range(6):
            await chat(http, "plan", f"{LONG} Service {i}.", max_tokens=200)
        # medium's first deployment fails: every request falls back to a-mini (the breaker is
        # set not to open within ten failures).
        proxy.fail("sim-b", error_rate=1.0, error_status=503)
        for i in range(10):
            await chat(http, "extract", f"Extract the invoice number from INV-{i}.")
        proxy.sim.chaos.clear("sim-b")
        sent += 46
        # A rollout: low moves to b-mid first; staff (internal) are on the candidate.
        key, _ = await engine.keys.create("staff", "report test", now=engine.clock())
        assert (await engine.submit(EditTier("low", "b-mid > a-mini"), actor="ops")).ok
        for i in range(12):
            await chat(http, "summarize", f"Summarise note {i}.", key=key, max_tokens=32)
            await chat(http, "summarize", f"Summarise note {i}.", max_tokens=32)
        sent += 24
    await wait_logged(proxy, sent)
    return sent


async def test_the_report_answers_the_four_questions_for_a_known_mix(tmp_path: Path) -> None:
    config = make_config(tmp_path, MIX)
    async with running(config) as proxy:
        sent = await send_mix(proxy)
        engine = proxy.engine
        report = await window_report(
            engine.store, engine.config, start=engine.clock() - 600, end=engine.clock() + 1
        )
        truth = await _truth(engine)

    h = report.headline
    assert h.requests == sent and h.successes == sent
    assert h.cost_usd == pytest.approx(truth["cost"])

    # 1. Small work on the strongest tier is flagged with what it would cost on low.
    assert report.strongest_tier == "max"
    assert [m.task for m in report.misrouted] == ["classify"]
    flagged = report.misrouted[0]
    assert (flagged.tier, flagged.belongs_to, flagged.requests) == ("max", "low", 30)
    tokens_in, tokens_out, cost = truth["classify"]
    assert flagged.cost_usd == pytest.approx(cost)
    assert flagged.would_cost_usd == pytest.approx((tokens_in * 1.0 + tokens_out * 2.0) / 1e6)
    assert flagged.avoidable_usd == pytest.approx(cost - flagged.would_cost_usd)
    assert flagged.avoidable_usd > 0.8 * cost  # 10/40 against 1/2 per million tokens
    max_tier = next(t for t in report.tiers if t.tier == "max")
    assert {r.name: r.requests for r in max_tier.by_task} == {"classify": 30, "plan": 6}
    assert {r.name for r in max_tier.by_reason} == {"task"}

    # 2. The effective policy, and the fallbacks observed by cause and deployment.
    assert report.fallbacks.policy[0].startswith("fall back on: 429, 5xx, connect, overloaded")
    assert report.fallbacks.fallbacks == truth["fallbacks"] == 10
    assert [(d.cause, d.deployment, d.count) for d in report.fallbacks.by_deployment] == [
        ("5xx", "b-mid", truth["failed_b_mid"])
    ]

    # 3. Cost per successful task by task type, tier, tenant and arm.
    by_task = {r.name: r for r in report.cost_by_task}
    for task, (requests, cost_sum) in truth["by_task"].items():
        assert by_task[task].requests == requests
        assert by_task[task].cost_per_success_usd == pytest.approx(cost_sum / requests)
    assert {r.name for r in report.cost_by_tenant} == {"local", "staff"}
    assert {r.name for r in report.cost_by_arm} == {"baseline r1", "candidate r2"}

    # 4. The rollout: the candidate (b-mid first) against its baseline.
    (delta,) = report.rollouts
    assert (delta.candidate, delta.baseline) == ("r2", "r1")
    assert (delta.candidate_requests, delta.baseline_requests) == (12, 12)
    assert delta.candidate_cost_per_success_usd == pytest.approx(truth["candidate_cps"])
    assert delta.baseline_cost_per_success_usd == pytest.approx(truth["baseline_cps"])
    assert delta.cost_ratio is not None and delta.cost_ratio > 1

    text = render_text(report)
    assert "FLAGGED: low-complexity work on the strongest tier" in text
    assert "classify: 30 requests on max" in text
    assert "r2 against r1" in text
    assert to_dict(report)["misrouted"][0]["task"] == "classify"


async def _truth(engine: Engine) -> dict[str, object]:
    """The same figures straight from the request log."""

    async def one(sql: str, *params: object) -> tuple[object, ...]:
        rows = await engine.store.query(sql, params)
        return tuple(rows[0])

    (cost,) = await one("SELECT TOTAL(cost_usd) FROM requests")
    classify = await one(
        "SELECT SUM(input_tokens), SUM(output_tokens), TOTAL(cost_usd) FROM requests "
        "WHERE task = 'classify'"
    )
    (fallbacks,) = await one(
        "SELECT COUNT(*) FROM requests WHERE fallback AND deployment IS NOT NULL"
    )
    (failed_b_mid,) = await one(
        "SELECT COUNT(*) FROM attempts WHERE deployment = 'b-mid' AND outcome = '5xx'"
    )
    by_task = {
        row[0]: (row[1], row[2])
        for row in await engine.store.query(
            "SELECT task, COUNT(*), TOTAL(cost_usd) FROM requests GROUP BY task"
        )
    }
    (candidate_cps,) = await one(
        "SELECT TOTAL(cost_usd) / COUNT(*) FROM requests WHERE arm = 'candidate' AND release = 2"
    )
    (baseline_cps,) = await one(
        "SELECT TOTAL(cost_usd) / COUNT(*) FROM requests WHERE arm = 'baseline' AND release = 1 "
        "AND started_at >= (SELECT created_at FROM releases WHERE id = 2)"
    )
    return {
        "cost": cost,
        "classify": classify,
        "fallbacks": fallbacks,
        "failed_b_mid": failed_b_mid,
        "by_task": by_task,
        "candidate_cps": candidate_cps,
        "baseline_cps": baseline_cps,
    }


async def test_report_cli_prints_the_window_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routedeck.toml"
    path.write_text(TEST_CONFIG.format(state=tmp_path / "state.db") + MIX)
    async with running(load_config(path)) as proxy:
        await send_mix(proxy)
    args = ["report", "--since", "1h", "--config", str(path)]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert out.startswith("routedeck report: ")
    assert "classify: 30 requests on max" in out
    assert await asyncio.to_thread(main, [*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["headline"]["requests"] == 70
    assert (
        await asyncio.to_thread(main, ["report", "--since", "a week", "--config", str(path)]) == 2
    )
    assert "--since takes a span like 90m" in capsys.readouterr().err
