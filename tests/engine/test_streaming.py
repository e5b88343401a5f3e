"""Streams through the proxy: a client that goes away stops the upstream stream too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.engine.conftest import make_config, running

SLOW = """
[providers.sim-slow]
protocol = "openai"
simulated = { latency_ms = 0, ttft_ms = 0, tokens_per_s = 20, jitter = 0 }

[deployments.slow-1]
provider = "sim-slow"
model = "slow-model"

[tiers.slow]
deployments = ["slow-1"]
timeout_s = 60
first_token_timeout_s = 5
"""


async def test_client_disconnect_closes_the_upstream_stream(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, SLOW)) as proxy:
        body = {
            "model": "slow",
            "stream": True,
            "max_tokens": 400,  # 20 s of tokens at 20 tokens/s
            "messages": [{"role": "user", "content": "a long answer please"}],
        }
        async with (
            httpx.AsyncClient(base_url=proxy.url) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            async for _chunk in r.aiter_bytes():
                break  # the first bytes arrived; now walk away
        deadline = time.monotonic() + 5
        rows = []
        while time.monotonic() < deadline:
            await proxy.engine.store.flush()
            rows = await proxy.engine.store.fetch_requests()
            if rows and proxy.sim.stats()["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert [(r.outcome, r.deployment) for r in rows] == [("client_closed", "slow-1")]
        assert proxy.sim.stats()["by_outcome"].get("disconnected") == 1
        (attempt,) = await proxy.engine.store.fetch_attempts(rows[0].request_id)
        assert attempt.outcome == "client_closed"
        # Going away is the client's doing: it does not count against the deployment's health.
        snap = proxy.engine.snapshot(fresh=True)
        assert next(d for d in snap.deployments if d.name == "slow-1").state == "idle"
