"""Serving the engine's HTTP app on a real port, embedded or headless.

`ProxyServer` binds the socket itself (so a busy port is a clear error, and port 0 picks a free
one), runs uvicorn on the current event loop, and stops gracefully: it stops accepting, lets
in-flight requests finish within the grace period, then returns. It installs no signal
handlers; `serve` (``routedeck serve``) does, so the console can embed a server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Generator
from types import TracebackType

import uvicorn

from engine.config import Config
from engine.engine import Engine
from engine.http import create_app

log = logging.getLogger("routedeck.server")


class ServeError(Exception):
    """The server could not start; the message says why and what to do."""


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals belong to whoever embeds the server (the CLI or the console).
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the listening
    # socket says TCP explicitly; without it every response waits ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Several `routedeck serve` processes on one port: the kernel spreads connections.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise ServeError(
                f"{host}:{port} is already in use. Stop the other process, or pass --port "
                "(or set [server] port) to use another port."
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ProxyServer:
    def __init__(self, engine: Engine, *, host: str, port: int, admin_token: str | None) -> None:
        self._engine = engine
        self._host = host
        self._sock = bind(host, port, reuse_port=engine.config.server.reuse_port)
        self.port: int = self._sock.getsockname()[1]
        app = create_app(engine, admin_token=admin_token, host=host)
        self._server = _Uvicorn(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                access_log=False,
                http="httptools",
                proxy_headers=False,  # routedeck is the edge; X-Forwarded-* are not trusted
                server_header=False,  # says nothing a client needs; one header less to encode
                timeout_graceful_shutdown=max(1, round(engine.config.server.shutdown_grace_s)),
                timeout_keep_alive=30,
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> ProxyServer:
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._sock]), name="routedeck-http"
        )
        ready = asyncio.create_task(self._server.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._task  # raises why it stopped
            raise ServeError("the HTTP server stopped while starting")
        self._engine.set_listen(self.url)
        return self

    def request_stop(self) -> None:
        self._server.should_exit = True

    async def wait(self) -> None:
        """Return when the server has stopped (after `request_stop` or a fatal error)."""
        assert self._task is not None
        await asyncio.shield(self._task)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.request_stop()
        if self._task is not None:
            await self._task
        self._sock.close()


async def serve(config: Config, *, admin_token: str | None, host: str, port: int) -> int:
    """Run the proxy headless until SIGINT/SIGTERM; return the process exit code."""
    async with Engine(config) as engine:
        for warning in engine.warnings:
            log.warning("%s", warning)
        async with ProxyServer(engine, host=host, port=port, admin_token=admin_token) as server:
            # Everything loaded so far (price data, encodings, config) lives for the process:
            # keep it out of the collector's full passes, which otherwise pause the loop.
            gc.collect()
            gc.freeze()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.request_stop)
            print(f"routedeck listening on {server.url}", file=sys.stderr, flush=True)
            if engine.sim is not None:
                print(f"simulated providers on {engine.sim.url}", file=sys.stderr, flush=True)
            await server.wait()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    print("routedeck stopped; state flushed", file=sys.stderr, flush=True)
    return 0
