"""Starting the console: on an engine of its own, attached to a running one, or on the demo.

The engine and its proxy never share an event loop — or an interpreter — with the console:
`routedeck` and `routedeck demo` start the engine as a child process (`routedeck serve`) and
drive it through its admin API, exactly as `routedeck console --attach` drives a remote one.
Redrawing a screen takes tens of milliseconds of Python; on the proxy's loop that is tail
latency for every request in flight, and under the GIL it is lost throughput, so the two get
separate processes (and, on a machine with two cores, separate cores). The console's
`EngineLink` is the same seam either way.

Log records go to a file while the console owns the terminal (the engine's too), so nothing
scribbles over the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

from console.app import RouteDeckApp
from engine.link import EngineLink, RemoteLink
from engine.server import ServeError
from engine.traffic import TrafficGenerator

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0
_LISTENING = "routedeck listening on "


def log_to_file(path: Path, level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


class EngineProcess:
    """``routedeck serve`` as a child process, for as long as the console runs.

    Entering starts it and waits until it listens (raising `ServeError` with what it printed
    when it cannot start: a busy port, a bad config); its output then goes to ``log_path``.
    Leaving stops it with SIGTERM, so it finishes in-flight requests and flushes its state.
    """

    def __init__(
        self,
        serve_args: Sequence[str],
        *,
        log_path: Path,
        log_level: str,
        token_env: str,
        token: str,
    ) -> None:
        self._args = list(serve_args)
        self._log_path = log_path
        self._log_level = log_level
        self._token_env = token_env
        self._token = token
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.url = ""

    async def __aenter__(self) -> EngineProcess:
        env = {**os.environ, self._token_env: self._token, "PYTHONUNBUFFERED": "1"}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "console.cli",
            "--log-level",
            self._log_level,
            "serve",
            *self._args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self._proc.stderr is not None
        said: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while line := (await self._proc.stderr.readline()).decode(errors="replace"):
                    if _LISTENING in line:
                        self.url = line.split(_LISTENING, 1)[1].strip()
                        break
                    said.append(line.rstrip())
        except TimeoutError:
            pass
        if not self.url:
            await self._stop()
            detail = "\n".join(said[-20:]) or "it printed nothing"
            raise ServeError(f"the engine did not start:\n{detail}")
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._pump = asyncio.create_task(self._copy_output(said))
        return self

    async def _copy_output(self, already: list[str]) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with self._log_path.open("a", encoding="utf-8") as log:
            for line in already:
                log.write(line + "\n")
            while chunk := await self._proc.stderr.readline():
                log.write(chunk.decode(errors="replace"))
                log.flush()

    async def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


async def run_app(link: EngineLink, *, read_only: bool, demo: bool, refresh: float) -> None:
    app = RouteDeckApp(link, read_only=read_only, demo=demo, refresh_interval=refresh)
    await app.run_async()


async def run_embedded(
    serve_args: Sequence[str],
    *,
    log_path: Path,
    log_level: str,
    token_env: str,
    read_only: bool,
    refresh: float,
    demo_traffic: float | None = None,
) -> int:
    """The console over an engine of its own; with ``demo_traffic`` (requests per second) a
    synthetic traffic generator runs too and the drill keys are on."""
    token = os.environ.get(token_env) or secrets.token_urlsafe(24)
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(
            EngineProcess(
                serve_args,
                log_path=log_path,
                log_level=log_level,
                token_env=token_env,
                token=token,
            )
        )
        link = RemoteLink(engine.url, token=token, poll_interval=min(refresh, 0.5), attached=False)
        stack.push_async_callback(link.close)
        if demo_traffic is not None:
            await stack.enter_async_context(TrafficGenerator(engine.url, rate=demo_traffic))
        await run_app(link, read_only=read_only, demo=demo_traffic is not None, refresh=refresh)
    return 0


async def run_attached(url: str, *, token: str | None, read_only: bool, refresh: float) -> int:
    link = RemoteLink(url, token=token, poll_interval=min(refresh, 1.0))
    try:
        await run_app(link, read_only=read_only, demo=False, refresh=refresh)
    finally:
        await link.close()
    return 0
