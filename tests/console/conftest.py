"""Fixtures for the console tests: a real engine and proxy on loopback over simulated providers,
and helpers to drive the app with Pilot and wait on conditions with a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from console.app import RouteDeckApp
from engine.config import Config, parse_config
from engine.engine import Engine
from engine.link import LocalLink
from engine.server import ProxyServer

# Three simulated providers that answer at once. Every tier has a second choice except
# recovery (the safe-mode tier), so draining sim-c strands it. a-mini and b-mid have prices;
# c-big's model is in no price list, so its traffic is unpriced.
CONFIG = """
[server]
port = 0
metrics_window_s = 60
snapshot_interval_s = 0.1

[state]
path = "{state}"
flush_interval_ms = 2

[providers.sim-a]
protocol = "openai"
region = "us"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0 }}

[providers.sim-b]
protocol = "anthropic"
region = "eu"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0 }}

[providers.sim-c]
protocol = "openai"
region = "us"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0 }}

[deployments.a-mini]
provider = "sim-a"
model = "a-mini-1"
price = {{ input_per_mtok = 2.0, output_per_mtok = 8.0 }}

[deployments.b-mid]
provider = "sim-b"
model = "b-mid-1"
price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}

[deployments.c-big]
provider = "sim-c"
model = "c-big-1"

[tiers.low]
deployments = ["a-mini", "b-mid"]
timeout_s = 3
attempt_timeout_s = 1

[tiers.high]
deployments = ["c-big", "b-mid"]
timeout_s = 3
attempt_timeout_s = 1

[tiers.recovery]
deployments = ["c-big"]
timeout_s = 3
attempt_timeout_s = 1
"""

SIZE = (120, 40)
ADMIN_TOKEN = "console-test-token"
FAST_REFRESH = 0.2


def make_config(tmp_path: Path) -> Config:
    return parse_config(CONFIG.format(state=tmp_path / "state.db"))


@dataclass
class Proxy:
    engine: Engine
    server: ProxyServer

    @property
    def url(self) -> str:
        return self.server.url

    async def chat(
        self, model: str = "low", content: str = "ping", **fields: object
    ) -> httpx.Response:
        """One non-streaming chat completion through the proxy; raises unless it succeeded.

        ``fields`` join the request body (``temperature=0`` makes it cacheable)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": content}],
                    **fields,
                },
            )
        response.raise_for_status()
        return response

    def sim_requests(self, provider: str) -> int:
        """Requests the simulated upstream received for ``provider`` so far, any outcome."""
        assert self.engine.sim is not None
        by_provider: dict[str, dict[str, int]] = self.engine.sim.stats()["by_provider"]
        return sum(by_provider.get(provider, {}).values())


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    async with (
        Engine(make_config(tmp_path)) as engine,
        ProxyServer(engine, host="127.0.0.1", port=0, admin_token=ADMIN_TOKEN) as server,
    ):
        yield Proxy(engine, server)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Render wall-clock times in UTC so screens do not depend on the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], what: str, within: float = 5.0
) -> None:
    """Let the app run until ``condition()`` is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await pilot.pause(0.02)


async def run_command(pilot: Pilot[Any], line: str) -> None:
    """Open command mode with the real ``:`` key, fill in ``line``, and press enter.

    The text is filled in rather than typed key by key: typing is Textual's Input at work,
    and each simulated key costs the test a wait for the app to go idle.
    """
    await pilot.press("colon")
    pilot.app.query_one("#command-line", Input).value = line
    await pilot.press("enter")


@asynccontextmanager
async def console(proxy: Proxy, **options: Any) -> AsyncIterator[tuple[RouteDeckApp, Pilot[None]]]:
    """The console on ``proxy``'s engine, with its first snapshot on screen."""
    options.setdefault("refresh_interval", FAST_REFRESH)
    app = RouteDeckApp(LocalLink(proxy.engine), **options)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None, "the first snapshot")
        yield app, pilot
