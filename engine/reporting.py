"""Reports for the command line, read from the state file (the engine need not be running)."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time

import orjson

from engine.analysis import render_text as render_window
from engine.analysis import to_dict as window_dict
from engine.analysis import window_report
from engine.budgets import day_of
from engine.config import Config
from engine.report import daily_report, render_text, to_dict
from state.store import Store


async def print_daily_report(config: Config, *, day: str | None, as_json: bool) -> int:
    """Print the daily report for ``day`` (UTC, default today); 2 on a malformed day."""
    async with Store(config.state_path()) as store:
        try:
            report = await daily_report(store, day=day or day_of(time.time()), config=config)
        except ValueError as exc:
            print(f"routedeck: {exc}", file=sys.stderr)
            return 2
    if as_json:
        print(orjson.dumps(to_dict(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(report))
    return 0


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(
    since: str, start: str | None, end: str | None, *, now: float
) -> tuple[float, float]:
    """(start, end) in Unix seconds from ``--since`` or ``--from``/``--to``; ValueError says
    what is wrong."""
    end_t = _moment(end, "--to") if end else now
    if start:
        start_t = _moment(start, "--from")
    else:
        match = _SPAN.match(since)
        if match is None:
            raise ValueError(f"--since takes a span like 90m, 24h, 7d or 2w, not {since!r}")
        start_t = end_t - float(match.group(1)) * _UNIT_S[match.group(2)]
    if start_t >= end_t:
        raise ValueError("the window is empty: --from must be before --to")
    return start_t, end_t


def _moment(text: str, flag: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} takes a UTC time like 2026-11-20 or 2026-11-20T14:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


async def print_window_report(config: Config, *, start: float, end: float, as_json: bool) -> int:
    """Print the report of requests started in [start, end)."""
    async with Store(config.state_path()) as store:
        report = await window_report(store, config, start=start, end=end)
    if as_json:
        print(orjson.dumps(window_dict(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_window(report))
    return 0
