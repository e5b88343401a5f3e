"""Operator commands: drain, undrain, safe mode and drills — audited, persisted, effective."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.commands import Drain, Drill, SetSafeMode, Undrain
from engine.link import LinkError, RemoteLink
from tests.engine.conftest import CHAT_LOW, Proxy, make_config, running

SAFE = '[policy]\nsafe_mode_tier = "high"\n'


async def served_by(http: httpx.AsyncClient, model: str = "low") -> tuple[str, str, str]:
    r = await http.post("/v1/chat/completions", json={**CHAT_LOW, "model": model})
    assert r.status_code == 200, r.text
    h = r.headers
    return h["x-routedeck-tier"], h["x-routedeck-tier-reason"], h["x-routedeck-deployment"]


async def test_drain_moves_traffic_and_undrain_restores_it(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    effect = proxy.engine.preview(Drain("sim-a"))
    assert effect.allowed
    assert (
        effect.summary == "drains sim-a: tier low moves to b-mid; tier medium loses fallback a-mini"
    )
    assert effect.stranded_tiers == ()

    result = await proxy.engine.submit(Drain("sim-a"), actor="test", reason="incident 42")
    assert result.ok and result.audit_id is not None
    proxy.sim.reset_stats()
    for _ in range(5):
        assert await served_by(http) == ("low", "tier", "b-mid")
    assert proxy.sim.stats()["by_provider"].get("sim-a", 0) == 0
    snap = proxy.engine.snapshot()
    assert snap.drained == ("sim-a",)
    assert {d.name: d.state for d in snap.deployments}["a-mini"] == "drained"
    assert snap.audit[0].action == "drain" and snap.audit[0].target == "sim-a"

    assert (await proxy.engine.submit(Undrain("sim-a"), actor="test")).ok
    assert await served_by(http) == ("low", "tier", "a-mini")


async def test_draining_the_last_healthy_deployment_asks_for_the_name(proxy: Proxy) -> None:
    await proxy.engine.submit(Drain("a-mini"), actor="test")
    effect = proxy.engine.preview(Drain("b-mid"))
    assert effect.allowed
    assert set(effect.stranded_tiers) == {"low", "medium"}
    assert effect.confirm_text == "b-mid"
    assert "tier low has no deployment left" in effect.summary


async def test_refused_commands_change_nothing_and_are_audited(proxy: Proxy) -> None:
    result = await proxy.engine.submit(Drain("nope"), actor="test")
    assert not result.ok and "not a provider or deployment" in result.message
    assert not (await proxy.engine.submit(Undrain("sim-a"), actor="test")).ok
    assert proxy.engine.drained == frozenset()
    rows = await proxy.engine.store.fetch_audit()
    assert [(r["action"], r["target"], r["result"]) for r in rows] == [
        ("drain", "nope", "refused"),
        ("undrain", "sim-a", "refused"),
    ]


async def test_audit_entry_records_before_and_after(proxy: Proxy) -> None:
    await proxy.engine.submit(Drain("c-big"), actor="alice", reason="flaky")
    (row,) = await proxy.engine.store.fetch_audit()
    assert row["actor"] == "alice" and row["result"] == "applied"
    assert row["detail"]["reason"] == "flaky"
    assert row["detail"]["before"] == {"drained": [], "safe_mode": False}
    assert row["detail"]["after"] == {"drained": ["c-big"], "safe_mode": False}


async def test_drains_and_safe_mode_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, SAFE)
    async with running(config) as p:
        assert (await p.engine.submit(Drain("sim-b"), actor="test")).ok
        assert (await p.engine.submit(SetSafeMode(True), actor="test")).ok
    async with running(config) as p, httpx.AsyncClient(base_url=p.url) as http:
        assert p.engine.drained == frozenset({"sim-b"})
        assert p.engine.safe_mode
        assert await served_by(http, "low") == ("high", "safe_mode", "c-big")
        assert [a.action for a in p.engine.snapshot().audit] == ["safe_mode", "drain"]


async def test_safe_mode_routes_everything_to_the_safe_tier(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, SAFE)) as p, httpx.AsyncClient(base_url=p.url) as http:
        effect = p.engine.preview(SetSafeMode(True))
        assert effect.summary == "safe mode on: every request goes to tier high (c-big > b-mid)"
        assert (await p.engine.submit(SetSafeMode(True), actor="test")).ok
        for model in ("low", "claude-sonnet", "a-mini"):
            assert await served_by(http, model) == ("high", "safe_mode", "c-big")
        assert p.engine.snapshot().safe_mode
        assert (await p.engine.submit(SetSafeMode(False), actor="test")).ok
        assert await served_by(http, "low") == ("low", "tier", "a-mini")


async def test_safe_mode_without_a_safe_tier_is_refused(proxy: Proxy) -> None:
    result = await proxy.engine.submit(SetSafeMode(True), actor="test")
    assert not result.ok and "safe_mode_tier" in result.message


async def test_drills_break_and_heal_a_simulated_provider(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    assert (await proxy.engine.submit(Drill("sim-a", "errors"), actor="test")).ok
    assert [(r.provider, r.error_rate) for r in proxy.sim.chaos.rules()] == [("sim-a", 0.8)]
    assert [(d.provider, d.kind) for d in proxy.engine.snapshot().drills] == [("sim-a", "errors")]
    assert (await proxy.engine.submit(Drill("sim-a", "heal"), actor="test")).ok
    assert proxy.sim.chaos.rules() == ()
    assert proxy.engine.snapshot().drills == ()
    refused = await proxy.engine.submit(Drill("nope", "hang"), actor="test")
    assert not refused.ok and "sim-a" in refused.message


async def test_remote_link_reaches_the_engine_through_the_admin_api(proxy: Proxy) -> None:
    link = RemoteLink(proxy.url, poll_interval=0.01)
    try:
        effect = await link.preview(Drain("sim-a"))
        assert effect.summary.startswith("drains sim-a: tier low moves to b-mid")
        result = await link.submit(Drain("sim-a"), actor="remote-op", reason="drill")
        assert result.ok
        assert proxy.engine.drained == frozenset({"sim-a"})
        async for snap in link.snapshots():
            if snap.drained == ("sim-a",):
                break
        assert snap.audit[0].actor == "remote-op"
        refused = await link.submit(Drain("sim-a"), actor="remote-op")
        assert not refused.ok and "already drained" in refused.message
    finally:
        await link.close()


async def test_admin_commands_reject_bad_bodies(http: httpx.AsyncClient) -> None:
    r = await http.post("/admin/commands", json={"command": "explode"})
    assert r.status_code == 400 and "unknown command 'explode'" in r.json()["error"]["message"]
    r = await http.post(
        "/admin/commands", json={"command": "drill", "provider": "sim-a", "kind": "fire"}
    )
    assert (
        r.status_code == 400 and "errors, 429, latency, hang, heal" in r.json()["error"]["message"]
    )
    r = await http.post("/admin/commands", json={"command": "drain", "target": "nope"})
    assert r.status_code == 409 and r.json()["ok"] is False


async def test_remote_link_reports_an_unreachable_engine() -> None:
    link = RemoteLink("http://127.0.0.1:9", timeout=1)
    try:
        with pytest.raises(LinkError, match="cannot reach routedeck"):
            await link.preview(Drain("x"))
    finally:
        await link.close()
