"""Provider keys never leave the process: not in answers, the request log or log output."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from engine.config import parse_config
from engine.engine import Engine
from engine.server import ProxyServer
from providers.sim import SimProfile, SimServer

SECRET = "sk-live-0123456789abcdefSECRET"


async def test_a_rejected_key_is_reported_without_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RD_TEST_UPSTREAM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    async with SimServer(profiles={"up": SimProfile(require_key="the-right-key")}) as upstream:
        config = parse_config(f"""
[state]
path = "{tmp_path / "state.db"}"
[providers.up]
protocol = "openai"
base_url = "{upstream.base_url("up", "openai")}"
api_key_env = "RD_TEST_UPSTREAM_KEY"
[deployments.d]
provider = "up"
model = "m"
[tiers.low]
deployments = ["d"]
""")
        async with (
            Engine(config) as engine,
            ProxyServer(engine, host="127.0.0.1", port=0, admin_token=None) as server,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            r = await http.post(
                "/v1/chat/completions",
                json={"model": "low", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 502
            error = r.json()["error"]
            assert error["code"] == "upstream_auth_failed"
            assert "$RD_TEST_UPSTREAM_KEY" in error["message"]  # names where the key comes from
            snapshot = (await http.get("/admin/snapshot")).text
            await engine.store.flush()
    assert SECRET not in r.text and SECRET not in snapshot
    assert SECRET not in caplog.text
    stored = await asyncio.to_thread(
        lambda: [path.read_bytes() for path in tmp_path.glob("state.db*")]
    )
    assert stored and all(SECRET.encode() not in data for data in stored)
