"""Several engines on one state file: drains, safe mode, keys, releases and budgets agree.

Two `Engine`s with their own SQLite connections to the same file are what two `routedeck serve`
processes are to SQLite; calling `sync_state` stands in for the sync interval elapsing, so the
tests are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from engine.commands import Advance, Drain, EditTier, SetSafeMode
from engine.pipeline import Inbound
from providers.canonical import ChatRequest, Message, TextPart
from tests.engine.conftest import CHAT_LOW, make_config, running

SHARED = """
[tenants.acme]
daily_budget_usd = 0.002

[tiers.recovery]
deployments = ["b-mid"]

[policy]
safe_mode_tier = "recovery"
"""
REQUEST = ChatRequest(
    model="low", messages=(Message("user", (TextPart("Classify: urgent?"),)),), max_tokens=50
)


async def test_drains_safe_mode_keys_and_rollouts_reach_the_other_process(tmp_path: Path) -> None:
    config = make_config(tmp_path, SHARED)
    async with running(config) as a, running(config) as b:
        assert a.engine.leader != b.engine.leader  # one of them runs automatic decisions
        assert (await a.engine.submit(Drain("sim-a"), actor="ops", reason="x")).ok
        assert await b.engine.sync_state()
        assert b.engine.drained == frozenset({"sim-a"})
        async with httpx.AsyncClient(base_url=b.url) as http:
            r = await http.post("/v1/chat/completions", json=CHAT_LOW)
        assert r.headers["x-routedeck-deployment"] == "b-mid"
        # The event log on b shows what was done on a.
        assert b.engine.snapshot(fresh=True).audit[0].action == "drain"

        assert (await b.engine.submit(SetSafeMode(True), actor="ops")).ok
        await a.engine.sync_state()
        assert a.engine.safe_mode

        key, _ = await a.engine.keys.create("acme", "shared", now=a.engine.clock())
        await b.engine.sync_state()
        assert b.engine.keys.tenant_for(key) == "acme"

        assert (await a.engine.submit(SetSafeMode(False), actor="ops")).ok
        assert (await a.engine.submit(EditTier("medium", "a-mini > b-mid"), actor="ops")).ok
        await b.engine.sync_state()
        view = b.engine.snapshot(fresh=True).rollout
        assert view is not None and (view.release, view.stage) == ("r2", "canary")
        assert (await b.engine.submit(Advance(override=True), actor="ops", reason="t")).ok
        await a.engine.sync_state()
        view = a.engine.snapshot(fresh=True).rollout
        assert view is not None and view.stage == "5%"
        # Both assign a user to the same arm: the salt is shared.
        for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
            arms = {e.rollouts.assign("local", user, "-")[0] for e in (a.engine, b.engine)}
            assert len(arms) == 1


async def test_a_budget_holds_across_processes(tmp_path: Path) -> None:
    config = make_config(tmp_path, SHARED)
    async with running(config) as a, running(config) as b:
        key, _ = await a.engine.keys.create("acme", "budget", now=a.engine.clock())
        await b.engine.sync_state()
        served = 0
        refused = 0
        for i in range(40):
            engine = (a.engine, b.engine)[i % 2]
            try:
                await engine.complete(REQUEST, Inbound(api="openai", key=key))
                served += 1
            except Exception as exc:
                assert getattr(exc, "code", "") == "budget_exceeded", exc
                refused += 1
            # Each sync interval, a process learns what the other settled.
            await (b.engine if i % 2 == 0 else a.engine).sync_state()
        assert refused > 0
        spent = await a.engine.store.query("SELECT cost_usd FROM spend WHERE tenant = 'acme'")
        # Each process admits at most the worst case of one request beyond what it knew: with a
        # sync after every request, the ledger stays within the budget.
        assert spent[0][0] <= 0.002
