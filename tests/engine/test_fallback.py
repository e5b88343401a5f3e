"""Failures of a tier's first deployment: the next one serves, headers and the log say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.engine.conftest import Proxy, make_config, running, wait_logged

CHAT = {"model": "low", "messages": [{"role": "user", "content": "Classify: urgent or not?"}]}


async def attempts_of(proxy: Proxy, request_id: str) -> list[tuple[str, str]]:
    await proxy.engine.store.flush()
    rows = await proxy.engine.store.fetch_attempts(request_id)
    return [(r.deployment, r.outcome) for r in rows]


@pytest.mark.parametrize(
    ("knobs", "cause"),
    [
        # The simulator's OpenAI 503 says "overloaded", as OpenAI's own does.
        ({"error_rate": 1.0, "error_status": 503}, "overloaded"),
        ({"error_rate": 1.0, "error_status": 500}, "5xx"),
        ({"error_rate": 1.0, "error_status": 502}, "5xx"),
        ({"error_rate": 1.0, "error_status": 529}, "overloaded"),
        ({"error_rate": 1.0, "error_status": 429, "retry_after": 7}, "429"),
        ({"hang_rate": 1.0}, "timeout"),
        ({"reset_rate": 1.0}, "connect"),
    ],
)
async def test_first_deployment_failing_falls_back(
    proxy: Proxy, http: httpx.AsyncClient, knobs: dict[str, Any], cause: str
) -> None:
    proxy.fail("sim-a", **knobs)
    r = await http.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert r.headers["x-routedeck-deployment"] == "b-mid"
    assert r.headers["x-routedeck-provider"] == "sim-b"
    assert r.headers["x-routedeck-attempts"] == "2"
    assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"
    request_id = r.headers["x-routedeck-request-id"]
    assert await attempts_of(proxy, request_id) == [("a-mini", cause), ("b-mid", "ok")]
    (row,) = [q for q in await proxy.engine.store.fetch_requests() if q.request_id == request_id]
    assert row.fallback and row.attempts == 2 and row.deployment == "b-mid" and row.outcome == "ok"
    assert row.tier == "low" and row.tier_reason == "tier"


@pytest.mark.parametrize(
    "knobs", [{"error_rate": 1.0, "error_status": 503}, {"hang_rate": 1.0}, {"reset_rate": 1.0}]
)
async def test_streams_fall_back_before_the_first_byte(
    proxy: Proxy, http: httpx.AsyncClient, knobs: dict[str, Any]
) -> None:
    proxy.fail("sim-a", **knobs)
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        body = (await r.aread()).decode()
    assert r.status_code == 200
    assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"
    assert body.rstrip().endswith("data: [DONE]")
    outcomes = await attempts_of(proxy, r.headers["x-routedeck-request-id"])
    assert [d for d, _ in outcomes] == ["a-mini", "b-mid"]
    assert outcomes[1][1] == "ok"


async def test_a_stream_that_breaks_midway_is_not_retried(proxy: Proxy) -> None:
    proxy.fail("sim-a", midstream_fail_rate=1.0)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
        stream = await oai.chat.completions.create(
            model="low", messages=[{"role": "user", "content": "go"}], stream=True
        )
        with pytest.raises(openai.APIError, match="stream started"):
            async for _ in stream:
                pass
    await wait_logged(proxy, 1)
    (row,) = await proxy.engine.store.fetch_requests()
    assert row.attempts == 1 and row.outcome == "stream" and not row.fallback
    assert await attempts_of(proxy, row.request_id) == [("a-mini", "stream")]
    assert proxy.sim.stats()["by_provider"].get("sim-b", 0) == 0


async def test_anthropic_client_sees_a_terminating_error_event(proxy: Proxy) -> None:
    proxy.fail("sim-b", midstream_fail_rate=1.0)
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError, match="incomplete"):
            async with client.messages.stream(
                model="medium", max_tokens=100, messages=[{"role": "user", "content": "go"}]
            ) as stream:
                async for _ in stream:
                    pass


async def test_a_request_too_long_for_the_first_choice_skips_it(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    # ~6000 tokens overflow a-mini's 4000-token window but fit b-mid's: routing skips a-mini.
    big = {"model": "low", "messages": [{"role": "user", "content": "word " * 5000}]}
    r = await http.post("/v1/chat/completions", json=big)
    assert r.status_code == 200
    assert r.headers["x-routedeck-deployment"] == "b-mid"
    assert r.headers["x-routedeck-attempts"] == "1"
    assert proxy.sim.stats()["by_provider"].get("sim-a", 0) == 0


async def test_an_upstream_context_length_error_moves_to_a_larger_window(tmp_path: Path) -> None:
    # a-wide claims a 50k window, but its provider (sim-a) only takes 4000 tokens: the upstream's
    # own context-length error moves the request to the next deployment with a larger window.
    extra = """
[deployments.a-wide]
provider = "sim-a"
model = "a-wide-1"
context_window = 50000

[tiers.wide]
deployments = ["a-wide", "c-big", "b-mid"]
"""
    async with (
        running(make_config(tmp_path, extra)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        body = {"model": "wide", "messages": [{"role": "user", "content": "word " * 5000}]}
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
        assert r.headers["x-routedeck-fallback"] == "a-wide>c-big"
        outcomes = await attempts_of(p, r.headers["x-routedeck-request-id"])
        assert outcomes == [("a-wide", "context_length"), ("c-big", "ok")]


async def test_context_too_long_everywhere_is_a_clear_400(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    huge = {"model": "low", "messages": [{"role": "user", "content": "word " * 120_000}]}
    r = await http.post("/v1/chat/completions", json=huge)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "a-mini: context window 4000 < ~" in error["message"]
    assert "Shorten the conversation" in error["message"]
    assert proxy.sim.stats()["total"] == 0


async def test_a_bad_request_is_not_retried_elsewhere(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    """A request the first deployment rejects as malformed would fail everywhere: no fallback."""
    body = {
        "model": "medium",  # b-mid (Anthropic) first, then a-mini
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "not json"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ],
    }
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "upstream_bad_request"
    outcomes = await attempts_of(proxy, r.headers["x-routedeck-request-id"])
    assert outcomes == [("b-mid", "bad_request")]
    assert proxy.sim.stats()["total"] == 0


async def test_every_deployment_down_fails_fast_with_bounded_attempts(
    proxy: Proxy, http: httpx.AsyncClient
) -> None:
    proxy.fail("*", error_rate=1.0, error_status=500)
    sent = 30
    codes = []
    for _ in range(sent):
        r = await http.post("/v1/chat/completions", json=CHAT)
        assert r.status_code in (502, 503), r.text
        codes.append(r.json()["error"]["code"])
    policy = proxy.engine.config.policy
    upstream = proxy.sim.stats()["total"]
    # Retries and fallbacks come out of the budget: 20% of requests plus a floor of 3.
    assert upstream <= (1 + policy.retry_budget) * sent + policy.retry_budget_floor
    # Five failures in a row open both breakers: later requests fail without an upstream call.
    assert codes[-1] == "no_deployment"
    assert "breaker open" in r.json()["error"]["message"]
    states = {d.name: d.breaker for d in proxy.engine.snapshot(fresh=True).deployments}
    assert states["a-mini"] == states["b-mid"] == "open"


async def test_all_rate_limited_is_a_429_with_retry_after(proxy: Proxy) -> None:
    proxy.fail("*", error_rate=1.0, error_status=429, retry_after=4)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            await oai.chat.completions.create(
                model="low", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.response.headers["retry-after"] == "4"


async def test_fallback_can_be_turned_off_by_policy(tmp_path: Any) -> None:
    from tests.engine.conftest import make_config, running

    config = make_config(tmp_path, '[policy]\nfallback_on = ["timeout"]\n')
    async with running(config) as p, httpx.AsyncClient(base_url=p.url) as http:
        p.fail("sim-a", error_rate=1.0, error_status=503)
        r = await http.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 502
        assert p.sim.stats()["by_provider"].get("sim-b", 0) == 0


async def test_max_attempts_caps_the_chain(tmp_path: Any) -> None:
    from tests.engine.conftest import make_config, running

    config = make_config(tmp_path, "[policy]\nmax_attempts = 1\n")
    async with running(config) as p, httpx.AsyncClient(base_url=p.url) as http:
        p.fail("sim-a", error_rate=1.0, error_status=503)
        r = await http.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 502
        assert p.sim.stats()["total"] == 1
