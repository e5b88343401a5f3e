"""The daily report from a real state file holding a known day of traffic."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from engine.alerts import AlertInputs, Alerts
from engine.budgets import Budgets
from engine.config import Config
from engine.report import (
    CACHE,
    NO_TIER,
    NOT_SERVED,
    SpendRow,
    TenantDay,
    daily_report,
    render_text,
    to_dict,
)
from state.records import RequestRecord
from state.store import Store
from tests.engine.conftest import make_config

DAY = "2025-03-14"
START = dt.datetime(2025, 3, 14, tzinfo=dt.UTC).timestamp()

TENANTS = """
[tenants.acme]
daily_budget_usd = 10

[tenants.globex]

[tenants.idle]
daily_budget_usd = 5
"""


def row(
    n: int,
    *,
    tenant: str,
    tier: str | None,
    deployment: str | None,
    outcome: str = "ok",
    cost: float | None,
    fallback: bool = False,
    cache: str = "miss",
    tokens: tuple[int, int] | None = (100, 20),
    saved: float | None = None,
    at: float = START + 3600,
) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{n}",
        started_at=at,
        tenant=tenant,
        api="openai",
        model_requested=tier or "low",
        tier=tier,
        tier_reason="alias" if tier else None,
        arm="baseline",
        deployment=deployment,
        provider=None,
        stream=False,
        status=200 if outcome == "ok" else 429 if outcome == "budget" else 504,
        outcome=outcome,
        attempts=0 if deployment is None and cost is None else 1,
        fallback=fallback,
        latency_ms=10.0,
        ttft_ms=None,
        input_tokens=tokens[0] if tokens else None,
        output_tokens=tokens[1] if tokens else None,
        cost_usd=cost,
        cache=cache,
        saved_usd=saved,
    )


# (record, goes to the ledger): what the pipeline logs and settles for each request.
ROWS = [
    (row(1, tenant="acme", tier="low", deployment="a-mini", cost=0.5), True),
    # A fallback: the failed first attempt's cost is part of the request's.
    (row(2, tenant="acme", tier="low", deployment="b-mid", cost=0.75, fallback=True), True),
    # Every attempt failed, after consuming tokens.
    (
        row(3, tenant="acme", tier="medium", deployment=None, outcome="timeout", cost=0.25),
        True,
    ),
    (
        row(
            4,
            tenant="acme",
            tier="low",
            deployment=None,
            cost=0.0,
            cache="hit",
            tokens=(100, 20),
            saved=0.5,
        ),
        True,
    ),
    # c-big has no price.
    (row(5, tenant="globex", tier="high", deployment="c-big", cost=None, tokens=(50, 10)), True),
    (row(6, tenant="globex", tier="high", deployment="b-mid", cost=1.0, fallback=True), True),
    # Refused by a budget before routing: no attempt, nothing settled.
    (
        row(
            7,
            tenant="globex",
            tier=None,
            deployment=None,
            outcome="budget",
            cost=None,
            tokens=None,
        ),
        False,
    ),
    # The days around are not part of the report.
    (row(8, tenant="acme", tier="low", deployment="a-mini", cost=7.0, at=START - 1), False),
    (row(9, tenant="acme", tier="low", deployment="a-mini", cost=7.0, at=START + 86400), False),
]


async def fill(store: Store, config: Config) -> None:
    budgets = Budgets(config.tenants, store, clock=lambda: START)
    for rec, settled in ROWS:
        store.log_request(rec)
        if settled:
            await budgets.record(
                rec.tenant,
                cost=rec.cost_usd,
                input_tokens=rec.input_tokens or 0,
                output_tokens=rec.output_tokens or 0,
                cache_hit=rec.cache == "hit",
                saved=rec.saved_usd,
                now=rec.started_at,
            )
    await store.flush()
    alerts = Alerts(config.alerts, store, clock=lambda: START)
    await alerts.load()
    for now in (START - 60, START + 7200):  # one alert the day before, one on the day
        await alerts.evaluate(
            AlertInputs(budgets=[], unpriced={"c-big": 1}, fallback=None, now=now)
        )


async def test_the_daily_report_matches_the_days_rows_exactly(tmp_path: Path) -> None:
    config = make_config(tmp_path, TENANTS)
    async with Store(config.state_path()) as store:
        await fill(store, config)
        report = await daily_report(store, day=DAY, config=config)

    assert report.day == DAY
    assert report.tenants == (
        TenantDay(
            tenant="acme",
            spent_usd=1.5,
            daily_budget_usd=10.0,
            share=0.15,
            requests=4,
            successful=3,
            input_tokens=400,
            output_tokens=80,
            cache_hits=1,
            saved_usd=0.5,
            unpriced_requests=0,
            cost_per_success_usd=0.5,
        ),
        TenantDay(
            tenant="globex",
            spent_usd=1.0,
            daily_budget_usd=None,
            share=None,
            requests=3,
            successful=2,
            input_tokens=150,
            output_tokens=30,
            cache_hits=0,
            saved_usd=0.0,
            unpriced_requests=1,
            cost_per_success_usd=0.5,
        ),
        TenantDay(
            tenant="idle",
            spent_usd=0.0,
            daily_budget_usd=5.0,
            share=0.0,
            requests=0,
            successful=0,
            input_tokens=0,
            output_tokens=0,
            cache_hits=0,
            saved_usd=0.0,
            unpriced_requests=0,
            cost_per_success_usd=None,
        ),
    )
    t = report.totals
    assert (t.spent_usd, t.cost_usd) == (2.5, 2.5)
    assert (t.requests, t.successful, t.failed) == (7, 5, 2)
    # $2.50 over 5 successful tasks, the failed request's $0.25 included.
    assert t.cost_per_success_usd == 0.5
    assert (t.input_tokens, t.output_tokens, t.cache_hits, t.saved_usd) == (550, 110, 1, 0.5)
    assert t.unpriced_requests == 1
    assert (t.served, t.fallbacks, t.fallback_ratio) == (4, 2, 0.5)

    assert report.tiers == (
        SpendRow("low", requests=3, successful=3, cost_usd=1.25, share=0.5, unpriced_requests=0),
        SpendRow("high", requests=2, successful=2, cost_usd=1.0, share=0.4, unpriced_requests=1),
        SpendRow("medium", requests=1, successful=0, cost_usd=0.25, share=0.1, unpriced_requests=0),
        SpendRow(NO_TIER, requests=1, successful=0, cost_usd=0.0, share=0.0, unpriced_requests=0),
    )
    assert report.deployments == (
        SpendRow("b-mid", requests=2, successful=2, cost_usd=1.75, share=0.7, unpriced_requests=0),
        SpendRow("a-mini", requests=1, successful=1, cost_usd=0.5, share=0.2, unpriced_requests=0),
        SpendRow(
            NOT_SERVED, requests=2, successful=0, cost_usd=0.25, share=0.1, unpriced_requests=0
        ),
        SpendRow(CACHE, requests=1, successful=1, cost_usd=0.0, share=0.0, unpriced_requests=0),
        SpendRow("c-big", requests=1, successful=1, cost_usd=0.0, share=None, unpriced_requests=1),
    )
    assert [(a.key, a.day) for a in report.alerts] == [("unpriced:c-big", DAY)]

    data = to_dict(report)
    assert json.loads(json.dumps(data)) == data
    assert data["totals"]["cost_per_success_usd"] == 0.5
    assert data["tenants"][1]["share"] is None
    assert data["alerts"][0]["kind"] == "unpriced"


async def test_render_text_shows_the_figures_and_never_prices_unpriced_at_zero(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, TENANTS)
    async with Store(config.state_path()) as store:
        await fill(store, config)
        text = render_text(await daily_report(store, day=DAY, config=config))

    lines = text.splitlines()
    assert lines[0] == "routedeck daily report for 2025-03-14 (UTC)"

    def line(start: str) -> str:
        found = [ln for ln in lines if ln.strip().startswith(start)]
        assert found, f"no line starting with {start!r} in:\n{text}"
        return found[0]

    assert line("Spend").split(maxsplit=1)[1] == "$2.5000 + 1 unpriced"
    assert "7 (5 successful, 2 failed)" in line("Requests")
    assert line("Cost per successful task").endswith(">= $0.5000")
    assert line("Fallback ratio").endswith("50% (2 of 4 served)")
    assert "1 hit saved $0.5000" in line("Cache")
    assert "1 request of unknown cost" in line("Unpriced")

    assert line("acme").split() == [
        "acme",
        "$1.5000",
        "$10.00",
        "15%",
        "4",
        "3",
        "400",
        "80",
        "1",
        "$0.5000",
        "0",
        "$0.5000",
    ]
    assert line("globex").split()[:5] == ["globex", "$1.0000", "+", "1", "unpriced"]
    assert line("globex").split()[-1] == "$0.5000"  # globex's unpriced request is not success
    assert line("c-big").split() == ["c-big", "1", "1", "unpriced", "-"]
    assert "$0.0000" not in line("c-big")
    assert line("high").split()[3:] == ["$1.0000", "+", "1", "unpriced", "40%"]
    assert any("warning" in ln and "unpriced:c-big" in ln for ln in lines)

    # Columns line up: right-aligned cells end where their header ends.
    header = line("tenant")
    end = header.index("spent") + len("spent")
    assert line("acme")[:end].endswith(" $1.5000")
    assert line("globex")[:end].endswith(" $1.0000 + 1 unpriced")
    assert line("idle")[:end].endswith(" $0.0000")


async def test_a_day_without_traffic(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with Store(config.state_path()) as store:
        report = await daily_report(store, day="2025-01-01", config=config)
        with pytest.raises(ValueError, match="01/01/2025"):
            await daily_report(store, day="01/01/2025", config=config)
    assert report.tenants == report.tiers == report.deployments == report.alerts == ()
    assert report.totals.cost_per_success_usd is None
    assert report.totals.fallback_ratio is None
    text = render_text(report)
    assert "Cost per successful task  -" in text
    assert "Alerts (0)" in text
    assert "unpriced" not in text
    assert "Spend                     $0.0000" in text
