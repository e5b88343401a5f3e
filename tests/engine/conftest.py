"""A real engine and proxy on loopback ports, over the in-process simulated upstream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import Config, parse_config
from engine.engine import Engine
from engine.server import ProxyServer
from providers.sim import SimServer

# Three simulated providers answering at once, so tests are fast; tiers chain them so that a
# failure of the first shows up as a fallback to the second.
TEST_CONFIG = """
[server]
port = 0
metrics_window_s = 60
snapshot_interval_s = 0.05

[state]
path = "{state}"
flush_interval_ms = 2

[providers.sim-a]
protocol = "openai"
region = "us"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0, context_window = 4000 }}

[providers.sim-b]
protocol = "anthropic"
region = "eu"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0, context_window = 100000 }}

[providers.sim-c]
protocol = "openai"
region = "us"
simulated = {{ latency_ms = 0, ttft_ms = 0, tokens_per_s = 0, jitter = 0 }}

[deployments.a-mini]
provider = "sim-a"
model = "a-mini-1"
context_window = 4000
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[deployments.b-mid]
provider = "sim-b"
model = "b-mid-1"
context_window = 100000
price = {{ input_per_mtok = 1.5, output_per_mtok = 4.0 }}

[deployments.c-big]
provider = "sim-c"
model = "c-big-1"

[tiers.low]
deployments = ["a-mini", "b-mid"]
connect_timeout_s = 1
first_token_timeout_s = 1
attempt_timeout_s = 1
timeout_s = 3

[tiers.medium]
deployments = ["b-mid", "a-mini"]
timeout_s = 3
first_token_timeout_s = 1
attempt_timeout_s = 1

[tiers.high]
deployments = ["c-big", "b-mid"]
timeout_s = 3
first_token_timeout_s = 1
attempt_timeout_s = 1

[aliases]
"gpt-4o-mini" = "low"
"claude-sonnet" = "medium"
"""


def make_config(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(TEST_CONFIG.format(state=tmp_path / "state.db") + extra)


@dataclass
class Proxy:
    engine: Engine
    server: ProxyServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sim(self) -> SimServer:
        assert self.engine.sim is not None
        return self.engine.sim

    def fail(self, provider: str, **knobs: Any) -> None:
        """Break a simulated provider (see providers.sim.chaos for the knobs)."""
        self.sim.chaos.set(provider, **knobs)


@asynccontextmanager
async def running(config: Config, *, admin_token: str | None = None) -> AsyncIterator[Proxy]:
    async with (
        Engine(config) as engine,
        ProxyServer(engine, host="127.0.0.1", port=0, admin_token=admin_token) as server,
    ):
        yield Proxy(engine, server)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    async with running(make_config(tmp_path)) as p:
        yield p


@pytest.fixture
async def http(proxy: Proxy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        yield client


CHAT_LOW = {"model": "low", "messages": [{"role": "user", "content": "Classify: urgent or not?"}]}


async def wait_logged(proxy: Proxy, requests: int, deadline_s: float = 5.0) -> None:
    """Wait until the engine has finished ``requests`` requests (a stream finishes after its
    client has seen the last byte), then flush the log."""
    async with asyncio.timeout(deadline_s):
        async for snap in proxy.engine.snapshots():
            if snap.requests_total >= requests:
                break
    await proxy.engine.store.flush()


def _loopback(host: object) -> bool:
    return isinstance(host, str) and (
        host.startswith("127.") or host in ("::1", "localhost", "0.0.0.0", "")
    )


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Any connection or name lookup beyond loopback fails, and fails the test afterwards.

    Recording the attempts matters: a library that swallows the error would otherwise pass.
    """
    attempts: list[object] = []
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def guard(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(address)
            raise OSError(f"network disabled in this test: {address}")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        guard(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        guard(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            attempts.append(host)
            raise socket.gaierror(f"network disabled in this test: {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"network was attempted: {attempts}"
