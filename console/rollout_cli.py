"""``routedeck rollout ...``: releases and their rollouts on a running engine, from a shell.

    routedeck rollout status [--json]                       the stage, the gates, recent releases
    routedeck rollout start --config new.toml --note "..."  propose a release and start it
    routedeck rollout edit TIER "a > b"  --note "..."       the same, for one tier's mapping
    routedeck rollout advance [--override --reason "..."]   the next stage (the last promotes)
    routedeck rollout rollback [--reason "..."]             every request back on the baseline
    routedeck rollout export [--out FILE] [--routing-only]  the baseline's config as TOML

Everything goes through the admin API (``--url``, token from ``--token-env``), so a command
is previewed, confirmed when the engine asks for it (an emergency change or a gate override:
type the word, or pass ``--confirm WORD`` in scripts), then applied and audited. Each prints the
effect; a refusal exits 1 with the engine's reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from engine.commands import Advance, Command, EditTier, Rollback, StartRollout
from engine.link import LinkError, RemoteLink, admin_error, admin_headers

OperatorArgs = Callable[[argparse.ArgumentParser], None]


def add_parser(sub: Any, operator_args: OperatorArgs) -> None:
    rollout = sub.add_parser("rollout", help="releases and staged rollouts on a running engine")
    verbs = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)

    status = verbs.add_parser("status", help="the rollout in progress and the newest releases")
    status.add_argument("--json", action="store_true", help="JSON for scripts")

    start = verbs.add_parser("start", help="propose a release from a TOML file and start it")
    start.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="TOML with the new routing: a whole config file or just its routing sections",
    )
    edit = verbs.add_parser("edit", help="propose a new mapping for one tier and start it")
    edit.add_argument("tier")
    edit.add_argument("mapping", help='steps in fallback order: "a > b=3 + c=1 > d"')
    for p in (start, edit):
        p.add_argument("--note", default="", help="what the release changes and why")
        p.add_argument(
            "--emergency",
            action="store_true",
            help="apply to 100%% of traffic now, skipping stages (needs --reason)",
        )

    advance = verbs.add_parser("advance", help="the next stage; the last promotes to baseline")
    advance.add_argument(
        "--override",
        action="store_true",
        help="advance (or resume) although gates do not pass (needs --reason)",
    )
    verbs.add_parser("rollback", help="end the rollout: every request back on the baseline")

    export = verbs.add_parser("export", help="the baseline release's config as TOML")
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    export.add_argument(
        "--routing-only", action="store_true", help="only tiers, aliases, tasks, classifier, policy"
    )

    for p in (status, start, edit, advance, verbs.choices["rollback"], export):
        operator_args(p)
        p.add_argument(
            "--confirm", metavar="WORD", help="the word a confirmation asks for, for scripts"
        )
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env) or None
    if args.action == "status":
        return _get(args, token, "/admin/rollout", _print_status)
    if args.action == "export":
        return _get(args, token, "/admin/export", _write_export)
    try:
        command = _command(args)
    except OSError as exc:
        print(f"routedeck: cannot read {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(_apply(args, token, command))


def _command(args: argparse.Namespace) -> Command:
    if args.action == "start":
        text = Path(args.config).read_text(encoding="utf-8")
        return StartRollout(text, args.note, args.emergency, source="file")
    if args.action == "edit":
        return EditTier(args.tier, args.mapping, args.note, args.emergency)
    if args.action == "advance":
        return Advance(args.override)
    return Rollback()


async def _apply(args: argparse.Namespace, token: str | None, command: Command) -> int:
    link = RemoteLink(args.url, token=token)
    try:
        effect = await link.preview(command)
        if not effect.allowed:
            print(f"routedeck: refused: {effect.summary}", file=sys.stderr)
            return 1
        print(effect.summary)
        for line in effect.details:
            print(f"  {line}")
        if effect.needs_reason and not args.reason.strip():
            print("routedeck: this needs a reason: pass --reason '...'", file=sys.stderr)
            return 2
        if effect.confirm_text is not None and not _confirmed(args, effect.confirm_text):
            return 1
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


def _confirmed(args: argparse.Namespace, word: str) -> bool:
    if args.confirm is not None:
        if args.confirm == word:
            return True
        print(f"routedeck: --confirm must be {word!r} for this", file=sys.stderr)
        return False
    if not sys.stdin.isatty():
        print(f"routedeck: this needs confirmation: pass --confirm {word}", file=sys.stderr)
        return False
    typed = input(f"Type {word} to confirm: ").strip()
    if typed != word:
        print("routedeck: not confirmed; nothing changed", file=sys.stderr)
        return False
    return True


def _get(
    args: argparse.Namespace,
    token: str | None,
    path: str,
    handle: Callable[[argparse.Namespace, httpx.Response], int],
) -> int:
    base = args.url.rstrip("/")
    params = {"routing_only": "1"} if getattr(args, "routing_only", False) else {}
    try:
        with httpx.Client(base_url=base, headers=admin_headers(token), timeout=10) as http:
            response = http.get(path, params=params)
    except httpx.HTTPError as exc:
        print(f"routedeck: cannot reach routedeck at {base}: {exc}", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        message = admin_error(response) or f"HTTP {response.status_code} from {base}{path}"
        print(f"routedeck: {message}", file=sys.stderr)
        return 1
    return handle(args, response)


def _write_export(args: argparse.Namespace, response: httpx.Response) -> int:
    if args.out:
        Path(args.out).write_text(response.text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(response.text)
    return 0


def _print_status(args: argparse.Namespace, response: httpx.Response) -> int:
    body = response.json()
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"baseline: {body['baseline']}")
    rollout = body["rollout"]
    if rollout is None:
        print("no rollout in progress")
    else:
        for line in format_rollout(rollout):
            print(line)
    if body["releases"]:
        print("\nreleases (newest first):")
        for rel in body["releases"][:10]:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rel["created_at"]))
            flag = " emergency" if rel["emergency"] and rel["source"] != "config" else ""
            note = f" — {rel['note']}" if rel["note"] else ""
            print(f"  r{rel['id']:<4} {rel['status']:<12} {when} by {rel['actor']}{flag}{note}")
    return 0


def format_rollout(view: dict[str, Any]) -> list[str]:
    """A rollout view (the admin API's JSON) as lines for a terminal."""
    ladder = []
    for i, stage in enumerate(view["stages"]):
        name = f"{stage['name']} ({stage['percent']:g}%)"
        if i < view["stage_index"]:
            name += " done"
        elif i == view["stage_index"]:
            name = f"[{name}]"
        ladder.append(name)
    state = view["state"].upper()
    lines = [
        f"rollout: {view['release']} against {view['baseline']} — {state}"
        + (f": {view['state_reason']}" if view["state_reason"] else ""),
        "stages: " + " > ".join(ladder),
    ]
    if view["note"]:
        lines.append(f"note: {view['note']}")
    lines += [f"  {line}" for line in view["diff"]]
    cand, base = view["candidate"], view["baseline_signals"]
    lines.append(f"{'signal':<16}{'candidate':>12}{'baseline':>12}")
    for label, key, fmt in (
        ("requests", "requests", "{:.0f}"),
        ("p95", "p95_ms", "{:.0f} ms"),
        ("error rate", "error_rate", "{:.1%}"),
        ("429 rate", "rate_429", "{:.1%}"),
        ("timeout rate", "timeout_rate", "{:.1%}"),
        ("fallback ratio", "fallback_ratio", "{:.1%}"),
        ("$/success", "cost_per_success_usd", "${:.6f}"),
    ):
        c = "-" if cand[key] is None else fmt.format(cand[key])
        b = "-" if base[key] is None else fmt.format(base[key])
        lines.append(f"{label:<16}{c:>12}{b:>12}")
    for gate in view["gates"]:
        lines.append(f"gate {gate['signal']:<9} {gate['verdict']:<8} {gate['why']}")
    key = "advance" if view["can_advance"] else "advance --override --reason ..."
    lines.append(f"next: {view['next_action']} (routedeck rollout {key})")
    return lines
