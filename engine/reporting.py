"""Reports for the command line, read from the state file (the engine need not be running)."""

from __future__ import annotations

import sys
import time

import orjson

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
