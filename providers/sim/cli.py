"""Running the simulated upstream on its own: `serve_forever` and `main`.

``routedeck sim`` calls `main` with its arguments; ``python -m providers.sim`` does the same.
`main` prints one line, ``routedeck sim listening on http://HOST:PORT``, once the port is bound,
and returns 0 after a clean stop on SIGINT or SIGTERM.

``--profile NAME:key=value,...`` gives the prefix ``NAME`` its own `SimProfile` (keys are the
profile's fields except ``models``); ``NAME`` ``default`` sets the profile of every other prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import fields
from typing import Any

from providers.sim.profile import NO_PROFILES, SimProfile
from providers.sim.server import SimServer


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    profiles: Mapping[str, SimProfile] = NO_PROFILES,
    seed: int = 0,
    ready: Callable[[SimServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or the task is cancelled), then close gracefully.

    ``ready`` is called with the started server, once the port is bound.
    """
    stop = stop or asyncio.Event()
    async with SimServer(host=host, port=port, profiles=profiles, seed=seed) as server:
        if ready is not None:
            ready(server)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGINT/SIGTERM; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="routedeck sim",
        description="Run the simulated OpenAI/Anthropic upstream (see docs/sim.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8788, help="port, 0 for any (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of replies, latency and chaos")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a provider prefix's profile, e.g. sim-slow:latency_ms=800,ttft_ms=300,tokens_per_s=40",
    )
    args = parser.parse_args(argv)
    try:
        profiles = dict(_parse_profile(spec) for spec in args.profile)
    except ValueError as exc:
        parser.error(str(exc))

    def announce(server: SimServer) -> None:
        print(f"routedeck sim listening on {server.url}", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve_forever(
            args.host, args.port, profiles=profiles, seed=args.seed, ready=announce, stop=stop
        )

    try:
        _run(run())
    except OSError as exc:
        print(f"routedeck sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # uvloop, when installed, keeps the simulator's own overhead out of benchmark figures.
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


_PROFILE_KEYS = tuple(f.name for f in fields(SimProfile) if f.name != "models")


def _parse_profile(spec: str) -> tuple[str, SimProfile]:
    name, sep, settings = spec.partition(":")
    if not sep or not name:
        raise ValueError(f"--profile {spec!r}: expected NAME:key=value,...")
    values: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or key not in _PROFILE_KEYS:
            raise ValueError(
                f"--profile {spec!r}: {item!r} is not key=value with a key among "
                f"{', '.join(_PROFILE_KEYS)}"
            )
        try:
            if key == "require_key":
                values[key] = raw
            elif key == "context_window":
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        except ValueError:
            raise ValueError(f"--profile {spec!r}: {key} needs a number, got {raw!r}") from None
    return name, SimProfile(**values)
