"""Daily alerts on a real state file, delivered to a real webhook server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.alerts import COOLDOWN_S, RETRY_BACKOFF_S, Alert, AlertInputs, Alerts
from engine.budgets import Budgets
from engine.config import AlertsConfig, TenantConfig
from engine.server import bind
from state.records import RequestRecord
from state.store import Store

DAY = 86400.0
T0 = dt.datetime(2025, 3, 14, 10, 0, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@dataclass(frozen=True)
class Fallback:
    ratio: float | None
    requests: int
    by_cause: tuple[tuple[str, int], ...] = ()


def inputs(
    now: float,
    *,
    budgets: Budgets | None = None,
    unpriced: Mapping[str, int] | None = None,
    fallback: Fallback | None = None,
    reasons: Mapping[str, str] | None = None,
) -> AlertInputs:
    return AlertInputs(
        budgets=budgets.view() if budgets is not None else [],
        unpriced=unpriced or {},
        fallback=fallback,
        now=now,
        unpriced_reasons=reasons or {},
    )


def request(
    n: int, at: float, *, tenant: str = "acme", cost: float | None = 1.0, deployment: str = "a"
) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{n}",
        started_at=at,
        tenant=tenant,
        api="openai",
        model_requested="low",
        tier="low",
        tier_reason="alias",
        arm="baseline",
        deployment=deployment,
        provider="p",
        stream=False,
        status=200,
        outcome="ok",
        attempts=1,
        fallback=False,
        latency_ms=10.0,
        ttft_ms=None,
        input_tokens=100,
        output_tokens=10,
        cost_usd=cost,
        cache="miss",
    )


async def alert_rows(store: Store) -> list[tuple[str, str, str, float | None]]:
    rows = await store.query("SELECT day, key, severity, delivered_at FROM alerts ORDER BY id")
    return [tuple(row) for row in rows]  # type: ignore[misc]


@contextlib.asynccontextmanager
async def opened(
    path: Path, config: AlertsConfig, clock: Clock, **kw: Any
) -> AsyncIterator[tuple[Store, Alerts]]:
    async with Store(path) as store, Alerts(config, store, clock=clock, **kw) as alerts:
        yield store, alerts


# -- budget thresholds ---------------------------------------------------------------------


async def test_budget_thresholds_fire_once_each_per_day_and_again_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="routedeck.alerts")
    clock = Clock(T0)
    async with Store(tmp_path / "state.db") as store:
        budgets = Budgets(
            {"acme": TenantConfig(daily_budget_usd=10.0), "free": TenantConfig()},
            store,
            clock=clock,
        )
        alerts = Alerts(AlertsConfig(), store, clock=clock)
        await alerts.load()

        async def spend(amount: float, tenant: str = "acme") -> list[Alert]:
            budgets.open(tenant).settle(amount)
            return await alerts.evaluate(inputs(clock.now, budgets=budgets))

        assert await spend(4.0) == []
        assert await spend(1000.0, "free") == []  # no budget, no budget alert

        first = await spend(1.5)  # 55 %
        assert [(a.key, a.kind, a.severity) for a in first] == [
            ("budget:acme:0.5", "budget", "info")
        ]
        assert "$5.5000 of its $10.0000 daily budget (55%)" in first[0].message
        assert first[0].detail == {
            "tenant": "acme",
            "spent_usd": 5.5,
            "daily_budget_usd": 10.0,
            "share": 0.55,
            "threshold": 0.5,
        }
        assert await spend(0.5) == []  # 60 %: the 50 % alert was raised today already

        second = await spend(2.5)  # 85 %
        assert [(a.key, a.severity) for a in second] == [("budget:acme:0.8", "warning")]

        third = await spend(2.0)  # 105 %
        assert [(a.key, a.severity) for a in third] == [("budget:acme:1.0", "critical")]
        assert "at its daily budget: $10.5000 of $10.00 (105%)" in third[0].message
        assert await alerts.evaluate(inputs(clock.now, budgets=budgets)) == []

        assert [a.key for a in alerts.recent()] == [
            "budget:acme:1.0",
            "budget:acme:0.8",
            "budget:acme:0.5",
        ]
        assert [a.key for a in alerts.recent(1)] == ["budget:acme:1.0"]

        # The next UTC day the ledger starts again, and so do the thresholds. Jumping straight
        # past all three raises only the highest.
        clock.now += DAY
        nextday = await spend(12.0)
        assert [(a.key, a.day) for a in nextday] == [("budget:acme:1.0", "2025-03-15")]
        assert await spend(1.0) == []

        assert [(day, key, severity) for day, key, severity, _ in await alert_rows(store)] == [
            ("2025-03-14", "budget:acme:0.5", "info"),
            ("2025-03-14", "budget:acme:0.8", "warning"),
            ("2025-03-14", "budget:acme:1.0", "critical"),
            ("2025-03-15", "budget:acme:1.0", "critical"),
        ]

    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "routedeck.alerts"]
    assert [level for level, _ in levels] == [
        logging.INFO,
        logging.WARNING,
        logging.CRITICAL,
        logging.CRITICAL,
    ]
    assert "budget:acme:0.8" in levels[1][1]


async def test_a_restart_does_not_raise_todays_alerts_again(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "state.db"
    tenants = {"acme": TenantConfig(daily_budget_usd=10.0)}
    async with opened(path, AlertsConfig(), clock) as (store, alerts):
        budgets = Budgets(tenants, store, clock=clock)
        budgets.open("acme").settle(6.0)
        await budgets.record(
            "acme",
            cost=6.0,
            input_tokens=1,
            output_tokens=1,
            cache_hit=False,
            saved=None,
            now=clock.now,
        )
        raised = await alerts.evaluate(
            inputs(clock.now, budgets=budgets, unpriced={"local-llm": 2})
        )
        assert {a.key for a in raised} == {"budget:acme:0.5", "unpriced:local-llm"}

    clock.now += 600
    async with opened(path, AlertsConfig(), clock) as (store, alerts):
        budgets = Budgets(tenants, store, clock=clock)
        await budgets.load()
        # The pane shows what was raised before the restart.
        assert {a.key for a in alerts.recent()} == {"budget:acme:0.5", "unpriced:local-llm"}
        again = inputs(clock.now, budgets=budgets, unpriced={"local-llm": 5})
        assert await alerts.evaluate(again) == []
        budgets.open("acme").settle(3.0)
        assert [a.key for a in await alerts.evaluate(inputs(clock.now, budgets=budgets))] == [
            "budget:acme:0.8"
        ]
        assert len(await alert_rows(store)) == 3


# -- spend rate ----------------------------------------------------------------------------


async def test_spend_rate_against_the_same_hour_of_trailing_days(tmp_path: Path) -> None:
    hour = dt.datetime(2025, 3, 14, 14, 0, tzinfo=dt.UTC).timestamp()
    clock = Clock(hour + 1800)  # 14:30 UTC
    config = AlertsConfig(spend_rate_factor=2.0, trailing_days=7)
    async with Store(tmp_path / "state.db") as store:
        n = 0
        for back in range(1, 8):
            n += 1
            store.log_request(request(n, hour - back * DAY + 600, cost=1.0))
            n += 1
            store.log_request(request(n, hour - back * DAY + 900, tenant="globex", cost=0.5))
            # Other hours of those days are not the baseline.
            n += 1
            store.log_request(request(n, hour - back * DAY - 1800, cost=50.0))
        # This hour so far: acme $1.50 (under 2x its $1.00 average); newco has no history.
        store.log_request(request(100, hour + 300, cost=1.5))
        store.log_request(request(101, hour + 400, tenant="newco", cost=9.0))
        store.log_request(request(102, hour - 1, cost=40.0))  # 13:59:59: the previous hour
        store.log_request(request(103, hour + 500, cost=None, deployment="unpriced"))
        await store.flush()

        alerts = Alerts(config, store, clock=clock)
        await alerts.load()
        assert await alerts.evaluate(inputs(clock.now)) == []

        store.log_request(request(104, hour + 1700, cost=0.75))  # now $2.25, over $2.00
        await store.flush()
        clock.now += 60
        raised = await alerts.evaluate(inputs(clock.now))
        assert [(a.key, a.kind, a.severity) for a in raised] == [
            ("spend_rate:acme", "spend_rate", "warning")
        ]
        assert raised[0].detail == {
            "tenant": "acme",
            "hour_start": hour,
            "spent_usd": 2.25,
            "baseline_usd": 1.0,
            "baseline_days": 7,
            "factor": 2.25,
            "threshold_factor": 2.0,
        }
        assert raised[0].message == (
            "Tenant acme has spent $2.2500 since 14:00 UTC, 2.2x its average of $1.0000 for "
            "that hour over the last 7 days (alert over 2x)."
        )

        # Still over in the next hour: once per tenant per day.
        store.log_request(request(105, hour + 3700, cost=30.0))
        await store.flush()
        clock.now = hour + 3800
        assert await alerts.evaluate(inputs(clock.now)) == []


async def test_spend_rate_averages_only_the_days_the_log_covers(tmp_path: Path) -> None:
    hour = dt.datetime(2025, 3, 14, 14, 0, tzinfo=dt.UTC).timestamp()
    clock = Clock(hour + 1200)
    async with Store(tmp_path / "state.db") as store:
        store.log_request(request(1, hour - 2 * DAY - 5 * 3600, cost=0.0))  # first row ever
        store.log_request(request(2, hour - 2 * DAY + 60, cost=3.0))
        store.log_request(request(3, hour - DAY + 60, cost=1.0))
        store.log_request(request(4, hour + 60, cost=3.0))  # under 2 x $2.00
        await store.flush()
        alerts = Alerts(AlertsConfig(trailing_days=7), store, clock=clock)
        await alerts.load()
        # Averaged over all seven days the baseline would be $0.57 and this an alert.
        assert await alerts.evaluate(inputs(clock.now)) == []

        store.log_request(request(5, hour + 900, cost=1.5))
        await store.flush()
        raised = await alerts.evaluate(inputs(clock.now))
        assert [a.key for a in raised] == ["spend_rate:acme"]
        assert raised[0].detail["baseline_days"] == 2
        assert raised[0].detail["baseline_usd"] == 2.0
        assert raised[0].detail["spent_usd"] == 4.5


# -- unpriced and fallback ratio -----------------------------------------------------------


async def test_unpriced_traffic_raises_one_alert_per_deployment(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with opened(tmp_path / "state.db", AlertsConfig(), clock) as (_store, alerts):
        raised = await alerts.evaluate(
            inputs(
                clock.now,
                unpriced={"local-llm": 3, "spare": 0},
                reasons={"local-llm": "model 'llama' is served by a simulated provider"},
            )
        )
        assert [(a.key, a.kind, a.severity) for a in raised] == [
            ("unpriced:local-llm", "unpriced", "warning")
        ]
        assert raised[0].message == (
            "Deployment local-llm has no price and served 3 requests: their cost is unknown and "
            "not counted against budgets. Why: model 'llama' is served by a simulated provider."
        )
        assert await alerts.evaluate(inputs(clock.now, unpriced={"local-llm": 9})) == []
        raised = await alerts.evaluate(inputs(clock.now, unpriced={"spare": 1}))
        assert [a.key for a in raised] == ["unpriced:spare"]
        assert "Set a price on the deployment" in raised[0].message


async def test_fallback_ratio_needs_enough_requests_and_a_ratio_over_the_threshold(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    config = AlertsConfig(fallback_ratio=0.2, min_requests=20)
    async with opened(tmp_path / "state.db", config, clock) as (_store, alerts):
        assert await alerts.evaluate(inputs(clock.now, fallback=Fallback(0.5, 19))) == []
        assert await alerts.evaluate(inputs(clock.now, fallback=Fallback(0.2, 100))) == []
        assert await alerts.evaluate(inputs(clock.now, fallback=Fallback(None, 0))) == []
        spike = Fallback(0.3, 40, (("429", 4), ("timeout", 8)))
        raised = await alerts.evaluate(inputs(clock.now, fallback=spike))
        assert [(a.key, a.severity) for a in raised] == [("fallback_ratio", "warning")]
        assert raised[0].message == (
            "30% of requests were served by a fallback (12 of 40 in the metrics window; alert "
            "over 20%). Failures that caused them: timeout 8, 429 4."
        )
        assert raised[0].detail["by_cause"] == {"429": 4, "timeout": 8}
        assert await alerts.evaluate(inputs(clock.now, fallback=spike)) == []


# -- the webhook ---------------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # leave pytest's signal handlers alone


class Webhook:
    """A real HTTP server on loopback that records POSTs; answers ``fail`` statuses first."""

    def __init__(self) -> None:
        self.fail: list[int] = []
        self.posts: list[tuple[int, dict[str, Any], str | None]] = []
        self.changed = asyncio.Event()

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [body for status, body, _ in self.posts if status == 204]

    async def _hook(self, request: Request) -> Response:
        body = await request.json()
        status = self.fail.pop(0) if self.fail else 204
        self.posts.append((status, body, request.headers.get("idempotency-key")))
        self.changed.set()
        return Response(status_code=status)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = Starlette(routes=[Route("/hook/{token}", self._hook, methods=["POST"])])
        sock = bind("127.0.0.1", 0)  # listening already: connections wait until uvicorn runs
        port = sock.getsockname()[1]
        server = _Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{port}/hook/secret-token"
        finally:
            server.should_exit = True
            await task
            sock.close()


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, str]]:
    hook = Webhook()
    async with hook.serving() as url:
        yield hook, url


async def test_the_webhook_receives_each_alert_once_across_failures_and_restarts(
    tmp_path: Path, webhook: tuple[Webhook, str], caplog: pytest.LogCaptureFixture
) -> None:
    hook, url = webhook
    hook.fail = [500]
    clock = Clock(T0)
    sleeps = Sleeps()
    path = tmp_path / "state.db"
    config = AlertsConfig(webhook_url=url, webhook_retries=3, webhook_timeout_s=5)
    async with (
        httpx.AsyncClient() as client,
        opened(path, config, clock, client=client, sleep=sleeps) as (store, alerts),
    ):
        raised = await alerts.evaluate(
            inputs(clock.now, unpriced={"local-llm": 1}, fallback=Fallback(0.5, 50))
        )
        assert [a.key for a in raised] == ["unpriced:local-llm", "fallback_ratio"]
        clock.now += 5
        assert await alerts.deliver() == 2
        # The first POST got a 500 and was retried after the first backoff step.
        assert [status for status, _, _ in hook.posts] == [500, 204, 204]
        assert sleeps.delays == [RETRY_BACKOFF_S]
        body = hook.accepted[0]
        assert body == {
            "source": "routedeck",
            "id": "2025-03-14/unpriced:local-llm",
            **raised[0].as_dict(),
        }
        assert [key for _, _, key in hook.posts] == [
            "2025-03-14/unpriced:local-llm",
            "2025-03-14/unpriced:local-llm",
            "2025-03-14/fallback_ratio",
        ]
        assert [row[3] for row in await alert_rows(store)] == [T0 + 5, T0 + 5]
        assert await alerts.deliver() == 0
        assert len(hook.posts) == 3

    # After a restart nothing is sent again, and a new alert is sent once.
    async with (
        httpx.AsyncClient() as client,
        opened(path, config, clock, client=client, sleep=sleeps) as (store, alerts),
    ):
        assert await alerts.deliver() == 0
        assert len(hook.posts) == 3
        raised = await alerts.evaluate(
            inputs(clock.now, unpriced={"local-llm": 4, "other": 1}, fallback=Fallback(0.6, 60))
        )
        assert [a.key for a in raised] == ["unpriced:other"]
        assert await alerts.deliver() == 1
        assert [b["key"] for b in hook.accepted] == [
            "unpriced:local-llm",
            "fallback_ratio",
            "unpriced:other",
        ]
    assert "secret-token" not in caplog.text


async def test_a_failing_webhook_is_retried_then_left_alone_for_a_cool_down(
    tmp_path: Path, webhook: tuple[Webhook, str], caplog: pytest.LogCaptureFixture
) -> None:
    hook, url = webhook
    hook.fail = [503, 503, 503]
    clock = Clock(T0)
    sleeps = Sleeps()
    config = AlertsConfig(webhook_url=url, webhook_retries=2)
    async with opened(tmp_path / "state.db", config, clock, sleep=sleeps) as (_store, alerts):
        await alerts.evaluate(inputs(clock.now, unpriced={"a": 1, "b": 1}))
        assert await alerts.deliver() == 0  # never raises
        # One alert, 1 + 2 attempts; the round stopped there instead of trying "b" as well.
        assert [status for status, _, _ in hook.posts] == [503, 503, 503]
        assert sleeps.delays == [RETRY_BACKOFF_S, 2 * RETRY_BACKOFF_S]
        assert await alerts.deliver() == 0  # cooling down: no POST
        assert len(hook.posts) == 3

        clock.now += COOLDOWN_S
        assert await alerts.deliver() == 2
        assert [b["key"] for b in hook.accepted] == ["unpriced:a", "unpriced:b"]

        # A status that would fail the same way again is not retried.
        hook.fail = [400, 400]
        await alerts.evaluate(inputs(clock.now, unpriced={"c": 1}))
        before = (len(hook.posts), len(sleeps.delays))
        assert await alerts.deliver() == 0
        assert [status for status, _, _ in hook.posts][-1] == 400
        assert (len(hook.posts), len(sleeps.delays)) == (before[0] + 1, before[1])
        clock.now += COOLDOWN_S
        assert await alerts.deliver() == 0  # a second failure in a row: the cool-down doubles
        assert len(hook.posts) == before[0] + 2
        clock.now += COOLDOWN_S
        assert await alerts.deliver() == 0
        assert len(hook.posts) == before[0] + 2
        clock.now += COOLDOWN_S
        assert await alerts.deliver() == 1
        assert [b["key"] for b in hook.accepted][-1] == "unpriced:c"
    assert "secret-token" not in caplog.text
    assert "HTTP 503" in caplog.text


async def test_an_unreachable_webhook_does_not_raise_and_keeps_alerts_for_later(
    tmp_path: Path,
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here: connections are refused
    clock = Clock(T0)
    config = AlertsConfig(webhook_url=f"http://127.0.0.1:{port}/hook", webhook_retries=1)
    async with opened(tmp_path / "state.db", config, clock, sleep=Sleeps()) as (store, alerts):
        await alerts.evaluate(inputs(clock.now, unpriced={"a": 1}))
        assert await alerts.deliver() == 0
        assert [row[3] for row in await alert_rows(store)] == [None]


async def test_run_evaluates_and_delivers_until_cancelled(
    tmp_path: Path, webhook: tuple[Webhook, str]
) -> None:
    hook, url = webhook
    clock = Clock(T0)
    config = AlertsConfig(webhook_url=url)
    measured = {"local-llm": 0}
    async with opened(tmp_path / "state.db", config, clock) as (_store, alerts):
        task = asyncio.create_task(
            alerts.run(lambda: inputs(clock.now, unpriced=dict(measured)), interval_s=0.01)
        )
        try:
            measured["local-llm"] = 1
            async with asyncio.timeout(5):
                while not hook.accepted:
                    hook.changed.clear()
                    await hook.changed.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert [b["key"] for b in hook.accepted] == ["unpriced:local-llm"]
        assert [a.key for a in alerts.recent()] == ["unpriced:local-llm"]


async def test_spend_rate_ignores_swings_under_the_floor(tmp_path: Path) -> None:
    hour = dt.datetime(2025, 3, 14, 14, 0, tzinfo=dt.UTC).timestamp()
    clock = Clock(hour + 1800)
    config = AlertsConfig(spend_rate_factor=2.0, trailing_days=7, spend_rate_min_usd=1.0)
    async with Store(tmp_path / "state.db") as store:
        for back in range(1, 8):
            store.log_request(request(back, hour - back * DAY + 600, cost=0.001))
        store.log_request(request(100, hour + 300, cost=0.5))  # 500x its average, but 50 cents
        await store.flush()
        alerts = Alerts(config, store, clock=clock)
        await alerts.load()
        assert await alerts.evaluate(inputs(clock.now)) == []
        store.log_request(request(101, hour + 400, cost=0.6))  # $1.10: over the floor now
        await store.flush()
        clock.now += 60
        assert [a.key for a in await alerts.evaluate(inputs(clock.now))] == ["spend_rate:acme"]
