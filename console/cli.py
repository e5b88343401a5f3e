"""The ``routedeck`` command line.

    routedeck serve [--config F | --demo] [--host H] [--port P]   the proxy, headless
    routedeck sim [--host H] [--port P] [--seed N] [--profile ...] the simulated upstream alone
    routedeck check-config [--config F]                          validate a config, list problems

The config comes from ``--config``, else ``$ROUTEDECK_CONFIG``, else ``./routedeck.toml``.
Exit codes: 0 success, 1 runtime failure, 2 bad usage or a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from engine.config import (
    Config,
    ConfigError,
    demo_config,
    load_config,
    missing_secrets,
    resolve_config_path,
)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop does not build everywhere (Windows); asyncio is the fallback
        return asyncio.run(coro)
    return uvloop.run(coro)


def _load(args: argparse.Namespace) -> Config:
    if getattr(args, "demo", False):
        if args.config:
            raise SystemExit("routedeck: --demo and --config are exclusive; pass one")
        return demo_config()
    return load_config(resolve_config_path(args.config))


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.server import ServeError, serve

    config = _load(args)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    token = os.environ.get(config.server.admin_token_env) or None
    try:
        return _run(serve(config, admin_token=token, host=host, port=port))
    except ServeError as exc:
        print(f"routedeck: {exc}", file=sys.stderr)
        return 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    warnings = missing_secrets(config)
    for problem in warnings:
        print(f"warning: {problem}")
    if warnings and args.strict:
        print(f"{config.source}: {len(warnings)} warning(s), failing because of --strict")
        return 1
    print(
        f"{config.source}: ok — {len(config.providers)} providers, "
        f"{len(config.deployments)} deployments, {len(config.tiers)} tiers, "
        f"{len(config.aliases)} aliases"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routedeck",
        description="A control console and routing proxy for LLM traffic.",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser, *, demo: bool) -> None:
        p.add_argument(
            "--config", help="config file (default: $ROUTEDECK_CONFIG, else ./routedeck.toml)"
        )
        if demo:
            p.add_argument(
                "--demo",
                action="store_true",
                help="use the built-in demo config on simulated providers",
            )

    serve = sub.add_parser("serve", help="run the proxy headless")
    config_args(serve, demo=True)
    serve.add_argument("--host", help="address to listen on (default: [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: [server] port)")
    serve.set_defaults(func=_cmd_serve)

    sub.add_parser(
        "sim",
        help="run the simulated upstream (OpenAI and Anthropic protocols); see `routedeck sim --help`",
        add_help=False,
    )

    check = sub.add_parser("check-config", help="validate a config and print every problem")
    config_args(check, demo=True)
    check.add_argument(
        "--strict", action="store_true", help="also fail on warnings (an unset key variable)"
    )
    check.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        # The simulator parses its own arguments (`routedeck sim --help`).
        from engine.simulator import run_simulator

        return run_simulator(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    raise SystemExit(main())
