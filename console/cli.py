"""The ``routedeck`` command line.

    routedeck [console] [--config F] [--read-only]               the console, engine embedded
    routedeck console --attach URL [--read-only]                 the console on a remote engine
    routedeck demo [--rate R]                                    console + simulated providers + traffic
    routedeck serve [--config F | --demo] [--host H] [--port P]   the proxy, headless
    routedeck sim [--host H] [--port P] [--seed N] [--profile ...] the simulated upstream alone
    routedeck check-config [--config F] [--strict]               validate a config, list problems
    routedeck report [--since 7d | --from T --to T] [--json]     what the logs say about a window
    routedeck report --daily [--day D] [--json] [--config F]     the day's spend, budgets, alerts
    routedeck drain|undrain TARGET [--url U]                     operator commands on a running engine
    routedeck safe-mode on|off [--url U]
    routedeck keys create --tenant T [--name N] | list | revoke ID [--url U]
    routedeck rollout status | start --config F | edit TIER MAPPING | advance | rollback | export
    routedeck audit [--actor A] [--action X] [--since 24h] [--grep TEXT] [--follow] [--url U]

The config comes from ``--config``, else ``$ROUTEDECK_CONFIG``, else ``./routedeck.toml``.
Exit codes: 0 success, 1 runtime failure, 2 bad usage or a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from console import rollout_cli
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


def _cmd_console(args: argparse.Namespace) -> int:
    from console.run import log_to_file, run_attached, run_embedded

    if args.attach:
        if args.config:
            raise SystemExit("routedeck: --attach and --config are exclusive; pass one")
        token = os.environ.get(args.token_env) or None
        return _run_console(
            run_attached(args.attach, token=token, read_only=args.read_only, refresh=args.refresh)
        )
    config = _load(args)  # validated here, so a bad config is reported before the screen opens
    log_path = config.state_path().with_suffix(".log")
    log_to_file(log_path, args.log_level)
    serve_args = ["--config", str(Path(config.source).resolve()), *_listen_args(args)]
    return _run_console(
        run_embedded(
            serve_args,
            log_path=log_path,
            log_level=args.log_level,
            token_env=config.server.admin_token_env,
            read_only=args.read_only,
            refresh=args.refresh,
        )
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from console.run import log_to_file, run_embedded

    config = demo_config()
    log_path = config.state_path().with_suffix(".log")
    log_to_file(log_path, args.log_level)
    return _run_console(
        run_embedded(
            ["--demo", *_listen_args(args)],
            log_path=log_path,
            log_level=args.log_level,
            token_env=config.server.admin_token_env,
            read_only=args.read_only,
            refresh=args.refresh,
            demo_traffic=args.rate,
        )
    )


def _listen_args(args: argparse.Namespace) -> list[str]:
    out = []
    if args.host:
        out += ["--host", args.host]
    if args.port is not None:
        out += ["--port", str(args.port)]
    return out


def _run_console(coro: Coroutine[Any, Any, int]) -> int:
    from engine.server import ServeError

    try:
        # Textual drives its own asyncio loop policy; the console runs on plain asyncio.
        return asyncio.run(coro)
    except ServeError as exc:
        print(f"routedeck: {exc}", file=sys.stderr)
        return 1


def _operator(args: argparse.Namespace) -> int:
    from engine.commands import Command, Drain, SetSafeMode, Undrain
    from engine.link import LinkError, RemoteLink

    command: Command
    if args.command == "drain":
        command = Drain(args.target)
    elif args.command == "undrain":
        command = Undrain(args.target)
    else:
        command = SetSafeMode(args.state == "on")
    token = os.environ.get(args.token_env) or None

    async def run() -> int:
        link = RemoteLink(args.url, token=token)
        try:
            result = await link.submit(command, actor=args.actor, reason=args.reason)
        except LinkError as exc:
            print(f"routedeck: {exc}", file=sys.stderr)
            return 1
        finally:
            await link.close()
        if not result.ok:
            print(f"routedeck: refused: {result.message}", file=sys.stderr)
            return 1
        print(f"{result.message} (audit #{result.audit_id})")
        return 0

    return asyncio.run(run())


def _cmd_keys(args: argparse.Namespace) -> int:
    import httpx

    from engine.link import admin_error, admin_headers

    headers = admin_headers(os.environ.get(args.token_env) or None)
    base = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            if args.action == "create":
                r = http.post(
                    "/admin/keys",
                    json={"tenant": args.tenant, "name": args.name, "actor": args.actor},
                )
            elif args.action == "revoke":
                r = http.post(f"/admin/keys/{args.id}/revoke")
            else:
                r = http.get("/admin/keys")
    except httpx.HTTPError as exc:
        print(f"routedeck: cannot reach routedeck at {base}: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        print(f"routedeck: {admin_error(r) or f'HTTP {r.status_code}'}", file=sys.stderr)
        return 1
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if args.action == "create":
        print(f"created {body['id']} for tenant {body['tenant']}; the key (shown only now):")
        print(body["key"])
    elif args.action == "revoke":
        print(f"revoked {body['id']} ({body['prefix']}…, tenant {body['tenant']})")
    else:
        print(f"{'id':<18} {'tenant':<14} {'name':<16} {'prefix':<12} state")
        for key in body["keys"]:
            state = "revoked" if key["revoked_at"] else "active"
            print(
                f"{key['id']:<18} {key['tenant']:<14} {key['name']:<16} {key['prefix']:<12} {state}"
            )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import httpx

    from engine.link import admin_error, admin_headers
    from engine.reporting import parse_window

    headers = admin_headers(os.environ.get(args.token_env) or None)
    base = args.url.rstrip("/")
    params: dict[str, str] = {"limit": str(args.limit)}
    for name in ("actor", "action", "target", "result"):
        value = getattr(args, name)
        if value:
            params[name] = value
    if args.grep:
        params["q"] = args.grep
    if args.since:
        try:
            start, _ = parse_window(args.since, None, None, now=time.time())
        except ValueError as exc:
            print(f"routedeck: {exc}", file=sys.stderr)
            return 2
        params["since"] = str(start)
    last = 0
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            while True:
                r = http.get(
                    "/admin/audit", params={**params, **({"after": str(last)} if last else {})}
                )
                if r.status_code >= 400:
                    print(
                        f"routedeck: {admin_error(r) or f'HTTP {r.status_code}'}", file=sys.stderr
                    )
                    return 1
                entries = r.json()["entries"]
                if args.json:
                    for entry in entries:
                        print(json.dumps(entry))
                else:
                    for entry in entries:
                        print(_audit_line(entry))
                if entries:
                    last = entries[-1]["id"]
                if not args.follow:
                    return 0
                sys.stdout.flush()
                time.sleep(1.0)  # --follow polls the admin API once a second
    except httpx.HTTPError as exc:
        print(f"routedeck: cannot reach routedeck at {base}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _audit_line(entry: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["at"]))
    detail = entry.get("detail") or {}
    summary = detail.get("summary") or ""
    reason = detail.get("reason") or ""
    change = ""
    if "before" in detail and "after" in detail:
        change = f" [{_short(detail['before'])} → {_short(detail['after'])}]"
    target = f" {entry['target']}" if entry.get("target") else ""
    text = f"#{entry['id']} {when} {entry['actor']}: {entry['action']}{target} ({entry['result']})"
    if summary:
        text += f" — {summary}"
    if reason:
        text += f" — reason: {reason}"
    return text + change


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _cmd_report(args: argparse.Namespace) -> int:
    from engine.reporting import parse_window, print_daily_report, print_window_report

    config = _load(args)
    if args.daily or args.day:
        return _run(print_daily_report(config, day=args.day, as_json=args.json))
    try:
        start, end = parse_window(args.since, args.start, args.end, now=time.time())
    except ValueError as exc:
        print(f"routedeck: {exc}", file=sys.stderr)
        return 2
    return _run(print_window_report(config, start=start, end=end, as_json=args.json))


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

    def console_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--read-only", action="store_true", help="hide every key that changes anything"
        )
        p.add_argument(
            "--refresh", type=float, default=0.5, help="seconds between redraws (default 0.5)"
        )
        p.add_argument("--host", help="proxy address (default: [server] host)")
        p.add_argument("--port", type=int, help="proxy port (default: [server] port)")

    console = sub.add_parser("console", help="the console, with the engine embedded (the default)")
    config_args(console, demo=False)
    console_args(console)
    console.add_argument("--attach", metavar="URL", help="attach to a running `routedeck serve`")
    console.add_argument(
        "--token-env",
        default="ROUTEDECK_ADMIN_TOKEN",
        help="env var holding the admin token for --attach",
    )
    console.set_defaults(func=_cmd_console)

    demo = sub.add_parser("demo", help="the console on simulated providers with synthetic traffic")
    console_args(demo)
    demo.add_argument("--rate", type=float, default=6.0, help="synthetic requests per second")
    demo.set_defaults(func=_cmd_demo)

    def operator_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default="http://127.0.0.1:8787", help="the running engine")
        p.add_argument(
            "--token-env", default="ROUTEDECK_ADMIN_TOKEN", help="env var holding the admin token"
        )
        p.add_argument("--reason", default="", help="why, for the audit log")
        p.add_argument(
            "--actor", default=os.environ.get("USER", "cli"), help="who, for the audit log"
        )
        p.set_defaults(func=_operator)

    for verb, text in (
        ("drain", "take a provider or deployment out of routing"),
        ("undrain", "put a drained provider or deployment back"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("target", help="provider or deployment name")
        operator_args(p)
    keys = sub.add_parser("keys", help="create, list and revoke virtual API keys")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", help="a new key for a tenant (shown once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="what the key is for")
    keys_sub.add_parser("list", help="every key, without the secret")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    for p in (create, keys_sub.choices["list"], revoke):
        operator_args(p)
        p.set_defaults(func=_cmd_keys)

    safe = sub.add_parser("safe-mode", help="send all traffic to the safe-mode tier, or stop")
    safe.add_argument("state", choices=["on", "off"])
    operator_args(safe)

    rollout_cli.add_parser(sub, operator_args)

    audit = sub.add_parser("audit", help="the audit trail of a running engine: tail and search")
    audit.add_argument("--limit", type=int, default=50, help="the newest N entries (default 50)")
    audit.add_argument("--actor", help="only this actor")
    audit.add_argument(
        "--action", help="only actions starting with this (keys, rollout_start, ...)"
    )
    audit.add_argument("--target", help="only this target (a provider, a release like r4, ...)")
    audit.add_argument("--result", choices=["applied", "refused"], help="only applied or refused")
    audit.add_argument("--since", help="only the last 90m, 24h, 7d, ...")
    audit.add_argument("--grep", help="only entries whose detail (reason, summary, ...) has this")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument("--url", default="http://127.0.0.1:8787", help="the running engine")
    audit.add_argument(
        "--token-env", default="ROUTEDECK_ADMIN_TOKEN", help="env var holding the admin token"
    )
    audit.set_defaults(func=_cmd_audit)

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

    report = sub.add_parser(
        "report", help="what the stored logs say about a window (default: the last 24 hours)"
    )
    config_args(report, demo=True)
    report.add_argument(
        "--since", default="24h", help="the window up to now: 90m, 24h, 7d (default 24h)"
    )
    report.add_argument("--from", dest="start", help="window start: YYYY-MM-DD[THH:MM] UTC")
    report.add_argument("--to", dest="end", help="window end: YYYY-MM-DD[THH:MM] UTC (default now)")
    report.add_argument("--daily", action="store_true", help="the daily spend and budget report")
    report.add_argument("--day", help="the daily report's day, YYYY-MM-DD in UTC (default today)")
    report.add_argument("--json", action="store_true", help="JSON for scripts")
    report.set_defaults(func=_cmd_report)

    check = sub.add_parser("check-config", help="validate a config and print every problem")
    config_args(check, demo=True)
    check.add_argument(
        "--strict", action="store_true", help="also fail on warnings (an unset key variable)"
    )
    check.set_defaults(func=_cmd_check_config)
    return parser


VERBS = frozenset(
    {
        "console",
        "demo",
        "drain",
        "undrain",
        "safe-mode",
        "keys",
        "rollout",
        "audit",
        "report",
        "serve",
        "sim",
        "check-config",
    }
)


def _default_to_console(argv: list[str]) -> list[str]:
    """Insert the ``console`` verb when none is given: ``routedeck --read-only`` works."""
    i = 0
    while i < len(argv) and (argv[i] == "--log-level" or argv[i].startswith("--log-level=")):
        i += 1 if "=" in argv[i] else 2
    if i < len(argv) and (argv[i] in VERBS or argv[i] in ("-h", "--help")):
        return argv
    return [*argv[:i], "console", *argv[i:]]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        # The simulator parses its own arguments (`routedeck sim --help`).
        from engine.simulator import run_simulator

        return run_simulator(argv[1:])
    parser = _parser()
    args = parser.parse_args(_default_to_console(argv))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
