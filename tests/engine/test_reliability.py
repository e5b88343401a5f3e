"""Reliability: retry budget, breakers, cooldowns, constraints, the cost ceiling."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from engine.engine import Engine
from engine.server import ProxyServer
from tests.engine.conftest import CHAT_LOW, Proxy, make_config, running


class Clock:
    """A wall clock the test moves by hand; deadlines still use the real monotonic clock."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running_with_clock(tmp_path: Path, clock: Clock, extra: str = "") -> AsyncIterator[Proxy]:
    async with (
        Engine(make_config(tmp_path, extra), clock=clock) as engine,
        ProxyServer(engine, host="127.0.0.1", port=0, admin_token=None) as server,
    ):
        yield Proxy(engine, server)


async def post(http: httpx.AsyncClient, **extra: object) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={**CHAT_LOW, **extra})


async def test_primary_down_every_request_still_succeeds_within_the_budget(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    for _ in range(50):  # steady traffic sets the budget's baseline
        assert (await post(http)).status_code == 200
    proxy.sim.reset_stats()
    proxy.fail("sim-a", error_rate=1.0, error_status=503)
    sent = 50
    served = Counter()
    for _ in range(sent):
        r = await post(http)
        assert r.status_code == 200, r.text
        served[r.headers["x-routedeck-deployment"]] += 1
    assert served == {"b-mid": sent}
    upstream = proxy.sim.stats()["total"]
    assert upstream <= sent * (1 + proxy.engine.config.policy.retry_budget)
    # The breaker opened after five failures in a row; from then on no attempt went to sim-a.
    assert proxy.sim.stats()["by_provider"]["sim-a"] == {"error_503": 5}
    a = next(d for d in proxy.engine.snapshot(fresh=True).deployments if d.name == "a-mini")
    assert a.breaker == "open" and a.state == "down"
    assert "5 failures in a row" in a.breaker_reason


async def test_a_429_retry_after_cools_the_deployment_then_a_probe_returns_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    async with running_with_clock(tmp_path, clock) as p, httpx.AsyncClient(base_url=p.url) as http:
        p.fail("sim-a", error_rate=1.0, error_status=429, retry_after=5)
        r = await post(http)
        assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"
        p.sim.chaos.clear()

        clock.now += 1
        r = await post(http)
        assert r.headers["x-routedeck-deployment"] == "b-mid"
        assert r.headers["x-routedeck-attempts"] == "1"
        a = next(d for d in p.engine.snapshot(fresh=True).deployments if d.name == "a-mini")
        assert a.breaker == "open" and a.breaker_left_s == pytest.approx(4.0)
        assert "429, Retry-After 5 s" in a.breaker_reason
        tier = next(t for t in p.engine.snapshot(fresh=True).tiers if t.name == "low")
        assert tier.skipped[0][0] == "a-mini" and "429" in tier.skipped[0][1]

        clock.now += 4.1
        r = await post(http)  # the cooldown is over: this request is the probe
        assert r.headers["x-routedeck-deployment"] == "a-mini"
        a = next(d for d in p.engine.snapshot(fresh=True).deployments if d.name == "a-mini")
        assert a.breaker == "closed"
        assert p.sim.stats()["by_provider"]["sim-a"] == {"error_429": 1, "ok": 1}


async def test_a_failed_probe_reopens_the_breaker(tmp_path: Path) -> None:
    clock = Clock()
    async with running_with_clock(tmp_path, clock) as p, httpx.AsyncClient(base_url=p.url) as http:
        p.fail("sim-a", error_rate=1.0, error_status=500)
        for _ in range(5):
            await post(http)
        states = {d.name: d.breaker for d in p.engine.snapshot(fresh=True).deployments}
        assert states["a-mini"] == "open"
        clock.now += p.engine.config.policy.breaker.open_s + 0.1
        r = await post(http)  # the probe fails, and the request still falls back
        assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"
        a = next(d for d in p.engine.snapshot(fresh=True).deployments if d.name == "a-mini")
        assert a.breaker == "open" and "probe failed" in a.breaker_reason


async def test_an_eu_tenant_is_never_served_outside_the_eu(tmp_path: Path) -> None:
    extra = '[tenants.local]\nregions = ["eu"]\n'
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        for _ in range(5):
            r = await post(http)
            assert r.headers["x-routedeck-deployment"] == "b-mid"  # sim-b is the eu provider
        p.fail("sim-b", error_rate=1.0, error_status=500)
        r = await post(http)
        assert r.status_code == 502  # never a-mini (us), even though it is healthy
        assert p.sim.stats()["by_provider"].get("sim-a", 0) == 0
        r = await post(http, model="high")  # c-big is in the us: only b-mid may serve high
        assert r.status_code == 502
        body = await http.post("/v1/chat/completions", json={**CHAT_LOW, "model": "c-big"})
        assert body.status_code == 403
        assert "c-big: region us is not allowed (only eu)" in body.json()["error"]["message"]
        assert body.json()["error"]["code"] == "no_eligible_deployment"


async def test_request_headers_narrow_region_and_compliance(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    r = await http.post("/v1/chat/completions", json=CHAT_LOW, headers={"x-routedeck-region": "eu"})
    assert r.headers["x-routedeck-deployment"] == "b-mid"
    r = await http.post(
        "/v1/chat/completions", json=CHAT_LOW, headers={"x-routedeck-compliance": "hipaa"}
    )
    assert r.status_code == 403
    assert "lacks compliance hipaa" in r.json()["error"]["message"]


COSTLY = """
[deployments.c-gold]
provider = "sim-c"
model = "gold-1"
price = { input_per_mtok = 30.0, output_per_mtok = 120.0 }

[tiers.thrifty]
deployments = ["a-mini", "c-gold"]

[tiers.recovery]
deployments = ["c-big"]
"""


async def test_a_fallback_over_the_cost_ceiling_is_refused(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, COSTLY)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        p.fail("sim-a", error_rate=1.0, error_status=500)
        r = await post(http, model="thrifty")
        assert r.status_code == 502
        assert "c-gold skipped: costs" in r.json()["error"]["message"]
        assert "ceiling 3x" in r.json()["error"]["message"]
        assert p.sim.stats()["by_provider"].get("sim-c", 0) == 0


async def test_the_cost_ceiling_can_send_requests_to_recovery(tmp_path: Path) -> None:
    extra = COSTLY + '[policy]\non_cost_ceiling = "recovery"\n'
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        p.fail("sim-a", error_rate=1.0, error_status=500)
        r = await post(http, model="thrifty")
        assert r.status_code == 200
        assert r.headers["x-routedeck-fallback"] == "a-mini>c-big"


async def test_same_deployment_retries_before_falling_back(tmp_path: Path) -> None:
    extra = "[policy]\nsame_deployment_retries = 1\nbackoff_ms = 1\n"
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        p.fail("sim-a", error_rate=1.0, error_status=500)
        r = await post(http)
        assert r.status_code == 200
        assert r.headers["x-routedeck-fallback"] == "a-mini>a-mini>b-mid"
        p.fail("sim-a", error_rate=1.0, error_status=429)  # a 429 is not retried in place
        r = await post(http)
        assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"


async def test_weighted_steps_split_traffic(tmp_path: Path) -> None:
    extra = '[tiers.split]\ndeployments = [{ "a-mini" = 3, "c-big" = 1 }, "b-mid"]\n'
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        served = Counter()
        for _ in range(400):
            r = await post(http, model="split")
            served[r.headers["x-routedeck-deployment"]] += 1
        assert served["b-mid"] == 0
        assert 0.68 <= served["a-mini"] / 400 <= 0.82
        p.fail("sim-a", error_rate=1.0, error_status=500)
        r = await post(http, model="split")
        # Whichever came first, the step's other deployment is the next fallback.
        assert r.headers["x-routedeck-deployment"] == "c-big"


async def test_safe_mode_respects_breakers_and_budgets(tmp_path: Path) -> None:
    from engine.commands import SetSafeMode

    extra = '[policy]\nsafe_mode_tier = "high"\n'
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        assert (await p.engine.submit(SetSafeMode(True), actor="test")).ok
        for _ in range(30):  # steady traffic sets the retry budget's baseline
            assert (await post(http)).status_code == 200
        p.fail("sim-c", error_rate=1.0, error_status=500)
        for _ in range(6):
            r = await post(http)  # everything goes to the safe-mode tier: c-big, then b-mid
            assert r.status_code == 200 and r.headers["x-routedeck-tier-reason"] == "safe_mode"
        states = {d.name: d.breaker for d in p.engine.snapshot(fresh=True).deployments}
        assert states["c-big"] == "open"
        r = await post(http)
        assert r.headers["x-routedeck-deployment"] == "b-mid"
        assert r.headers["x-routedeck-attempts"] == "1"  # the open breaker is skipped
    # The safe-mode tier here is priced (medium: b-mid, a-mini) so the budget can hold.
    budget = '[policy]\nsafe_mode_tier = "medium"\n[tenants.local]\ndaily_budget_usd = 0.00001\n'
    async with (
        running(make_config(tmp_path / "b", budget)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        assert (await p.engine.submit(SetSafeMode(True), actor="test")).ok
        statuses = [(await post(http, model="c-big", max_tokens=200)).status_code for _ in range(5)]
        assert 429 in statuses  # safe mode does not lift a tenant's budget
