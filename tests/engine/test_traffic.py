"""The demo's synthetic traffic goes through the real proxy and mixes what it should."""

from __future__ import annotations

import asyncio

from engine.traffic import TrafficGenerator
from tests.engine.conftest import Proxy


async def test_generator_sends_a_mix_through_the_proxy(proxy: Proxy) -> None:
    # The test config knows tier names only; send the mix to them.
    from engine.traffic import TaskType

    tasks = (
        TaskType("classification", "low", 3, "Classify {n}", 16),
        TaskType("rag_answer", "medium", 1, "Answer {n}", 64),
        TaskType("reasoning", "high", 1, "Plan {n}", 64),
    )
    async with TrafficGenerator(proxy.url, rate=200, tasks=tasks, seed=1) as gen:
        async with asyncio.timeout(10):
            async for snap in proxy.engine.snapshots():
                if snap.requests_total >= 60:
                    break
    assert gen.stats.failed == 0
    snap = proxy.engine.snapshot(fresh=True)
    assert snap.requests_total >= 60 and snap.errors_total == 0
    served = {t.name: t.rps for t in snap.tiers}
    assert all(served[tier] > 0 for tier in ("low", "medium", "high"))
    await proxy.engine.store.flush()
    rows = await proxy.engine.store.fetch_requests(limit=10_000)
    assert {r.api for r in rows} == {"openai", "anthropic"}
    assert {r.stream for r in rows} == {True, False}
