"""Cost control through the proxy: keys, quotas, budgets, caps, trimming, cache, prices."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.trimming import trim
from providers.canonical import ChatRequest, Message, TextPart, ToolCall
from tests.engine.conftest import CHAT_LOW, Proxy, make_config, running

TENANTS = """
[tenants.acme]
[tenants.globex]
"""


async def new_key(http: httpx.AsyncClient, tenant: str) -> str:
    r = await http.post("/admin/keys", json={"tenant": tenant, "name": "test"})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def test_virtual_keys_decide_the_tenant(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, TENANTS)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        key = await new_key(http, "acme")
        assert key.startswith("rd-")
        r = await http.post(
            "/v1/chat/completions", json=CHAT_LOW, headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200
        r = await http.post(
            "/v1/messages",
            json={
                "model": "low",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"x-api-key": key},
        )
        assert r.status_code == 200
        r = await http.post(
            "/v1/chat/completions",
            json=CHAT_LOW,
            headers={"authorization": "Bearer sk-placeholder"},
        )
        assert r.status_code == 200  # not a routedeck key: the local tenant
        await p.engine.store.flush()
        tenants = [row.tenant for row in await p.engine.store.fetch_requests()]
        assert tenants == ["acme", "acme", "local"]

        r = await http.post(
            "/v1/chat/completions", json=CHAT_LOW, headers={"authorization": "Bearer rd-forged"}
        )
        assert r.status_code == 401 and "Unknown routedeck key" in r.json()["error"]["message"]
        listed = (await http.get("/admin/keys")).json()["keys"]
        assert [(k["tenant"], k["prefix"]) for k in listed] == [("acme", key[:10])]
        assert key not in str(listed)
        r = await http.post(f"/admin/keys/{listed[0]['id']}/revoke")
        assert r.status_code == 200
        r = await http.post(
            "/v1/chat/completions", json=CHAT_LOW, headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        r = await http.post("/admin/keys", json={"tenant": "nobody"})
        assert r.status_code == 400 and "acme, globex, local" in r.json()["error"]["message"]
    # Only the key's hash is stored.
    with sqlite3.connect(tmp_path / "state.db") as db:
        stored = db.execute("SELECT hash, prefix FROM api_keys").fetchall()
    assert len(stored) == 1 and key not in stored[0]


async def test_keys_can_be_required(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = config.model_copy(
        update={"server": config.server.model_copy(update={"require_keys": True})}
    )
    async with running(config) as p, httpx.AsyncClient(base_url=p.url) as http:
        r = await http.post("/v1/chat/completions", json=CHAT_LOW)
        assert r.status_code == 401 and "requires a virtual key" in r.json()["error"]["message"]


async def test_rpm_and_tpm_quotas_answer_429_with_retry_after(tmp_path: Path) -> None:
    extra = "[tenants.local]\nrpm = 3\n"
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        for _ in range(3):
            assert (await http.post("/v1/chat/completions", json=CHAT_LOW)).status_code == 200
        r = await http.post("/v1/chat/completions", json=CHAT_LOW)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "RPM quota" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "rpm_exceeded"
        r = await http.post(
            "/v1/messages",
            json={"model": "low", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    extra = "[tenants.local]\ntpm = 200\n"
    async with (
        running(make_config(tmp_path / "t", extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        statuses = [
            (await http.post("/v1/chat/completions", json=CHAT_LOW)).status_code for _ in range(6)
        ]
        assert statuses[0] == 200 and 429 in statuses


BUDGET = """
[tenants.local]
daily_budget_usd = 0.002
"""


async def test_budget_holds_under_50_concurrent_requests(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, BUDGET)) as p,
        httpx.AsyncClient(base_url=p.url, timeout=30) as http,
    ):
        body = {**CHAT_LOW, "max_tokens": 100}
        responses = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for _ in range(50))
        )
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 5 and 429 in codes
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "daily budget" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0

        await p.engine.store.flush()
        spent = (await p.engine.store.query("SELECT cost_usd FROM spend WHERE tenant = 'local'"))[
            0
        ][0]
        assert 0 < spent <= 0.002
        rows = await p.engine.store.fetch_requests(limit=100)
        assert spent == pytest.approx(sum(r.cost_usd or 0 for r in rows), abs=1e-12)
        # The ledger is the sum of the attempts' costs at the deployments' prices.
        attempts = await p.engine.store.fetch_attempts(limit=1000)
        by_hand = sum(
            ((a.input_tokens or 0) * 1.0 + (a.output_tokens or 0) * 2.0) / 1e6
            for a in attempts
            if a.deployment == "a-mini"
        )
        assert spent == pytest.approx(by_hand, abs=1e-12)
        # Spend survives a restart.
    async with running(make_config(tmp_path, BUDGET)) as p:
        assert p.engine.budgets.spent_today("local") == pytest.approx(spent, abs=1e-12)


def conversation(turns: int) -> tuple[Message, ...]:
    messages = [Message("system", (TextPart("You are terse."),))]
    for i in range(turns):
        messages.append(Message("user", (TextPart(f"question {i} " + "word " * 40),)))
        messages.append(Message("assistant", tool_calls=(ToolCall(f"call_{i}", "lookup", "{}"),)))
        messages.append(Message("tool", (TextPart("result " * 20),), tool_call_id=f"call_{i}"))
        messages.append(Message("assistant", (TextPart(f"answer {i}"),)))
    messages.append(Message("user", (TextPart("and now?"),)))
    return tuple(messages)


def test_trimming_keeps_system_newest_turn_and_tool_pairs() -> None:
    request = ChatRequest(model="low", messages=conversation(6))

    def count(r: ChatRequest) -> int:
        return sum(len(m.text.split()) + 3 for m in r.messages)

    result = trim(request, 150, count)
    assert result.fits and result.trimmed_tokens > 0 and count(result.request) <= 150
    kept = result.request.messages
    assert kept[0].role == "system" and kept[-1].text == "and now?"
    calls = {c.id for m in kept for c in m.tool_calls}
    answered = {m.tool_call_id for m in kept if m.role == "tool"}
    assert calls == answered  # no call without its result, no result without its call
    assert kept[1].role == "user"  # the history starts at a whole turn
    too_small = trim(request, 5, count)
    assert not too_small.fits and too_small.request is request


CAPS = """
[tiers.capped]
deployments = ["b-mid"]
max_input_tokens = 300
max_output_tokens = 40

[tiers.strict]
deployments = ["b-mid"]
max_input_tokens = 300
on_input_over = "reject"
"""


def long_chat(model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(8):
        messages.append({"role": "user", "content": f"q{i} " + "alpha beta gamma delta " * 12})
        messages.append({"role": "assistant", "content": f"a{i} " + "epsilon zeta " * 10})
    messages.append({"role": "user", "content": "finally?"})
    return {"model": model, "messages": messages}


async def test_caps_trim_clamp_and_reject(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, CAPS)) as p, httpx.AsyncClient(base_url=p.url) as http:
        r = await http.post("/v1/chat/completions", json={**long_chat("capped"), "max_tokens": 500})
        assert r.status_code == 200, r.text
        trimmed = int(r.headers["x-routedeck-trimmed-tokens"])
        assert trimmed > 0
        assert r.json()["usage"]["prompt_tokens"] <= 300
        assert r.json()["usage"]["completion_tokens"] <= 40  # max_tokens clamped to the cap
        await p.engine.store.flush()
        (row,) = await p.engine.store.fetch_requests()
        assert row.trimmed_tokens == trimmed

        r = await http.post("/v1/chat/completions", json=long_chat("strict"))
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "input_over_cap"
        assert "over the 300-token input cap of tier 'strict'" in error["message"]


async def test_deterministic_requests_are_cached_per_tenant(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, TENANTS)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        body = {**CHAT_LOW, "temperature": 0}
        first = await http.post("/v1/chat/completions", json=body)
        assert first.headers["x-routedeck-cache"] == "miss"
        second = await http.post("/v1/chat/completions", json=body)
        assert second.headers["x-routedeck-cache"] == "hit"
        assert second.headers["x-routedeck-cost"] == "0.00000000"
        assert second.json()["choices"] == first.json()["choices"]
        assert p.sim.stats()["total"] == 1

        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            streamed = (await r.aread()).decode()
        assert r.headers["x-routedeck-cache"] == "hit" and streamed.rstrip().endswith("[DONE]")
        assert p.sim.stats()["total"] == 1

        key = await new_key(http, "acme")
        other = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert other.headers["x-routedeck-cache"] == "miss"  # never across tenants
        assert p.sim.stats()["total"] == 2
        no = await http.post("/v1/chat/completions", json={**CHAT_LOW, "temperature": 0.7})
        assert no.headers["x-routedeck-cache"] == "bypass"
        bad = await http.post(
            "/v1/chat/completions", json=body, headers={"x-routedeck-cache": "maybe"}
        )
        assert bad.status_code == 400

        await p.engine.store.flush()
        saved = (
            await p.engine.store.query(
                "SELECT cache_hits, saved_usd FROM spend WHERE tenant = 'local'"
            )
        )[0]
        assert saved[0] == 2 and saved[1] == pytest.approx(
            2 * float(first.headers["x-routedeck-cost"])
        )


async def test_an_unknown_model_is_unpriced_never_free(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    r = await http.post("/v1/chat/completions", json={**CHAT_LOW, "model": "c-big"})
    assert r.status_code == 200
    assert r.headers["x-routedeck-cost"] == "unpriced"
    await proxy.engine.store.flush()
    (row,) = await proxy.engine.store.fetch_requests()
    assert row.cost_usd is None
    unpriced = (await proxy.engine.store.query("SELECT unpriced_requests FROM spend"))[0][0]
    assert unpriced == 1


async def test_the_snapshot_shows_dollars_cache_and_unpriced(tmp_path: Path) -> None:
    extra = "[tenants.local]\ndaily_budget_usd = 5.0\n"
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        body = {**CHAT_LOW, "temperature": 0}
        for _ in range(3):
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert (
            await http.post("/v1/chat/completions", json={**CHAT_LOW, "model": "c-big"})
        ).status_code == 200
        spend = p.engine.snapshot(fresh=True).spend
        assert spend is not None
        ledger = (await p.engine.store.query("SELECT sum(cost_usd) FROM spend"))[0][0]
        assert spend.today_usd == pytest.approx(ledger) and ledger > 0
        (local,) = [t for t in spend.by_tenant if t.tenant == "local"]
        assert local.daily_budget_usd == 5.0 and local.spent_today_usd == pytest.approx(ledger)
        assert dict(spend.by_tier)["low"] == pytest.approx(ledger)
        assert spend.unpriced == (("c-big", 1),)
        assert spend.cache_hit_ratio == pytest.approx(2 / 3)
        assert spend.cache_saved_usd == pytest.approx(2 * ledger)
        assert spend.successes_today == 4
        assert spend.cost_per_success_usd == pytest.approx(ledger / 4)


async def test_trimmed_turns_can_be_summarised_by_the_low_tier(tmp_path: Path) -> None:
    extra = """
[tiers.summarised]
deployments = ["b-mid"]
max_input_tokens = 300
summarize_trimmed = true
summary_tier = "low"
"""
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        for _ in range(2):
            r = await http.post("/v1/chat/completions", json=long_chat("summarised"))
            assert r.status_code == 200, r.text
            assert int(r.headers["x-routedeck-trimmed-tokens"]) > 0
        await p.engine.store.flush()
        rows = await p.engine.store.fetch_requests()
        summaries = [(r.tier, r.cache) for r in rows if r.task == "history_summary"]
        # The summary is made by the low tier once; the second time it comes from the cache.
        assert summaries == [("low", "miss"), ("low", "hit")]
        main = [r for r in rows if r.tier == "summarised"]
        assert len(main) == 2 and all(r.trimmed_tokens for r in main)


async def test_report_daily_reads_the_day_from_the_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from console.cli import main
    from engine.config import load_config
    from tests.engine.conftest import TEST_CONFIG

    path = tmp_path / "routedeck.toml"
    path.write_text(
        TEST_CONFIG.format(state="state.db") + "[tenants.local]\ndaily_budget_usd = 1.0\n"
    )
    async with running(load_config(path)) as p, httpx.AsyncClient(base_url=p.url) as http:
        for _ in range(4):
            assert (await http.post("/v1/chat/completions", json=CHAT_LOW)).status_code == 200
        assert (
            await http.post("/v1/chat/completions", json={**CHAT_LOW, "model": "c-big"})
        ).status_code == 200
        spent = p.engine.budgets.spent_today("local")
    assert (
        await asyncio.to_thread(main, ["report", "--daily", "--json", "--config", str(path)]) == 0
    )
    import json

    report = json.loads(capsys.readouterr().out)
    (local,) = report["tenants"]
    assert local["tenant"] == "local" and local["requests"] == 5
    assert local["spent_usd"] == pytest.approx(spent)
    assert local["share"] == pytest.approx(spent / 1.0)
    assert local["unpriced_requests"] == 1
    assert await asyncio.to_thread(main, ["report", "--daily", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "unpriced" in text and "local" in text
    assert (
        await asyncio.to_thread(main, ["report", "--day", "yesterday", "--config", str(path)]) == 2
    )


async def test_budget_alerts_reach_the_console_and_the_webhook_once(tmp_path: Path) -> None:
    from tests.engine.test_alerts import Webhook

    hook = Webhook()
    async with hook.serving() as url:
        extra = f'[tenants.local]\ndaily_budget_usd = 0.0002\n[alerts]\nwebhook_url = "{url}"\n'
        async with (
            running(make_config(tmp_path, extra)) as p,
            httpx.AsyncClient(base_url=p.url) as http,
        ):
            for _ in range(3):
                await http.post("/v1/chat/completions", json={**CHAT_LOW, "max_tokens": 20})
            raised = await p.engine.check_alerts()
            assert [a.key for a in raised] == ["budget:local:0.5"]
            assert "of its $0.0002 daily budget" in raised[0].message
            assert await p.engine.check_alerts() == []  # once per day
            snap = p.engine.snapshot(fresh=True)
            assert snap.alerts[0].kind == "budget" and "local" in snap.alerts[0].message
        assert [body["kind"] for body in hook.accepted] == ["budget"]
