"""Starting the console: embedded (engine and proxy in this process), attached, or the demo.

In every mode the Textual app, the engine and the proxy share one event loop; the app reaches
the engine only through an `EngineLink`. Log records go to a file while the console owns the
terminal, so nothing scribbles over the screen.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from pathlib import Path

from console.app import RouteDeckApp
from engine.config import Config
from engine.engine import Engine
from engine.link import EngineLink, LocalLink, RemoteLink
from engine.server import ProxyServer
from engine.traffic import TrafficGenerator


def log_to_file(path: Path, level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


async def run_app(link: EngineLink, *, read_only: bool, demo: bool, refresh: float) -> None:
    app = RouteDeckApp(link, read_only=read_only, demo=demo, refresh_interval=refresh)
    await app.run_async()


async def run_embedded(
    config: Config,
    *,
    host: str,
    port: int,
    admin_token: str | None,
    read_only: bool,
    refresh: float,
    demo_traffic: float | None = None,
) -> int:
    """The console over an engine and proxy in this process; with ``demo_traffic`` (requests
    per second) a synthetic traffic generator runs too and drill keys are enabled."""
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(Engine(config))
        for warning in engine.warnings:
            logging.getLogger("routedeck").warning("%s", warning)
        server = await stack.enter_async_context(
            ProxyServer(engine, host=host, port=port, admin_token=admin_token)
        )
        if demo_traffic is not None:
            await stack.enter_async_context(TrafficGenerator(server.url, rate=demo_traffic))
        await run_app(
            LocalLink(engine), read_only=read_only, demo=demo_traffic is not None, refresh=refresh
        )
    return 0


async def run_attached(url: str, *, token: str | None, read_only: bool, refresh: float) -> int:
    link = RemoteLink(url, token=token, poll_interval=min(refresh, 1.0))
    try:
        await run_app(link, read_only=read_only, demo=False, refresh=refresh)
    finally:
        await link.close()
    return 0
