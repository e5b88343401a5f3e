"""Live metrics and the Snapshot seam: what the panes and /admin/snapshot show."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.http import create_app
from tests.engine.conftest import CHAT_LOW, Proxy, make_config, running

# Breakers and the retry budget would change the traffic this file counts; they have their own
# tests, so here they are set out of reach.
NO_BREAKERS = """
[policy]
retry_budget = 10
[policy.breaker]
consecutive_failures = 1000
min_attempts = 100000
"""


async def send(http: httpx.AsyncClient, n: int, **extra: object) -> None:
    for _ in range(n):
        r = await http.post("/v1/chat/completions", json={**CHAT_LOW, **extra})
        assert r.status_code == 200, r.text


async def test_snapshot_reflects_failures_and_fallbacks(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, NO_BREAKERS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        await check_snapshot(proxy, http)


async def check_snapshot(proxy: Proxy, http: httpx.AsyncClient) -> None:
    await send(http, 4)
    healthy = proxy.engine.snapshot()
    before = {d.name: d for d in proxy.engine.snapshot(fresh=True).deployments}
    assert before["a-mini"].state == "healthy"
    assert before["a-mini"].share == 1.0
    assert before["c-big"].state == "idle"

    proxy.fail("sim-a", error_rate=1.0, error_status=500)
    await send(http, 6)
    snap = proxy.engine.snapshot(fresh=True)
    assert snap.seq > healthy.seq
    deployments = {d.name: d for d in snap.deployments}
    a = deployments["a-mini"]
    assert a.state == "down"
    assert "60% of 10 attempts failed" in a.state_reason
    assert a.errors_by_cause == (("5xx", 6),)
    assert a.error_rate == pytest.approx(0.6)
    assert deployments["b-mid"].state == "healthy"
    providers = {p.name: p for p in snap.providers}
    assert providers["sim-a"].state == "down" and providers["sim-b"].protocol == "anthropic"

    assert snap.fallback.requests == 10 and snap.fallback.fallbacks == 6
    assert snap.fallback.ratio == pytest.approx(0.6)
    assert snap.fallback.by_cause == (("5xx", 6),)
    low = next(t for t in snap.tiers if t.name == "low")
    assert [(s.deployment, round(s.share, 2)) for s in low.steps] == [
        ("a-mini", 0.4),
        ("b-mid", 0.6),
    ]
    assert low.fallback_ratio == pytest.approx(0.6)

    assert snap.requests_total == 10 and snap.errors_total == 0
    assert snap.tokens.input_today > 0 and snap.tokens.output_today > 0
    assert snap.tokens.by_tier[0][0] == "low"
    assert snap.tokens.by_tenant == (("local", snap.tokens.input_today, snap.tokens.output_today),)
    newest = snap.recent[0]
    assert newest.path == ("a-mini", "b-mid") and newest.deployment == "b-mid"
    assert newest.tier == "low" and newest.tier_reason == "tier"
    assert len(snap.recent) == 10


async def test_snapshots_are_published_continuously(proxy: Proxy) -> None:
    seqs = []
    async for snap in proxy.engine.snapshots():
        seqs.append(snap.seq)
        if len(seqs) == 3:
            break
    assert seqs == sorted(set(seqs))


async def test_admin_snapshot_on_loopback_without_token(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    await send(http, 2)
    r = await http.get("/admin/snapshot")
    assert r.status_code == 200
    body = r.json()
    assert body["listen"] == proxy.url
    assert {d["name"] for d in body["deployments"]} == {"a-mini", "b-mid", "c-big"}
    assert body["engine_state"] == "running"
    assert body["rollout"] is None


async def test_admin_snapshot_requires_the_token_when_set(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path), admin_token="s3cret-admin") as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        r = await http.get("/admin/snapshot")
        assert r.status_code == 401
        assert "ROUTEDECK_ADMIN_TOKEN" in r.json()["error"]["message"]
        r = await http.get("/admin/snapshot", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await http.get("/admin/snapshot", headers={"authorization": "Bearer s3cret-admin"})
        assert r.status_code == 200


async def test_admin_api_refuses_to_run_open_off_loopback(proxy: Proxy) -> None:
    app = create_app(proxy.engine, admin_token=None, host="0.0.0.0")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rd"
    ) as http:
        r = await http.get("/admin/snapshot")
    assert r.status_code == 403
    assert "Set $ROUTEDECK_ADMIN_TOKEN" in r.json()["error"]["message"]


async def test_healthz(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
