"""Console behaviour on a deterministic fake link: the pump, staleness, panes, filter, keys."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from rich.style import Style
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Label

from console import bindings
from console.app import RouteDeckApp
from console.screens.confirm import ConfirmScreen
from console.screens.help import HelpScreen
from console.widgets import formatting as fmt
from console.widgets.alerts_pane import AlertsPane
from console.widgets.live_table import Column, LiveTable
from console.widgets.provider_table import ProviderTable, deployment_key, provider_key
from console.widgets.rollout_pane import RolloutPane
from console.widgets.spend_pane import SpendPane, SpendTable, budget_state, rows
from console.widgets.status_header import StatusHeader, shorten_error
from console.widgets.tail_pane import PATH_SEPARATOR, TailPane
from console.widgets.tier_pane import TierPane
from engine.commands import Drain, Drill, SetSafeMode
from engine.snapshot import AlertView
from tests.console.conftest import run_command, wait_for
from tests.console.fakes import (
    ALERTS,
    BUDGET_SPEND,
    T0,
    FakeLink,
    budget_snapshot,
    degraded_snapshot,
    drained_snapshot,
    make_snapshot,
    rollout_snapshot,
    with_seq,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def fake_console(
    link: FakeLink, size: tuple[int, int] = (120, 40), **options: Any
) -> AsyncIterator[tuple[RouteDeckApp, Pilot[None]]]:
    options.setdefault("refresh_interval", 0.01)
    app = RouteDeckApp(link, **options)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None, "the first snapshot")
        yield app, pilot


def _text(widget: Any) -> str:
    return str(widget.render())


def _words(widget: Any) -> str:
    """The widget's text with every run of whitespace (line breaks included) as one space."""
    return " ".join(_text(widget).split())


async def test_header_turns_stale_when_snapshots_stop_and_recovers() -> None:
    clock = Clock()
    link = FakeLink([make_snapshot()])
    async with fake_console(link, clock=clock, refresh_interval=0.5) as (app, pilot):
        header = app.query_one(StatusHeader)
        age = header.query_one("#age", Label)
        app.update_age()
        assert not header.has_class("-stale")
        assert _text(age) == "data 0s old"

        clock.now += app.stale_after + 0.5
        app.update_age()
        await pilot.pause()
        assert header.has_class("-stale") and age.has_class("-stale")
        assert _text(age).startswith("STALE")

        link.push(make_snapshot(seq=2))
        await wait_for(pilot, lambda: not header.has_class("-stale"), "the header to recover")
        assert app.snapshot is not None and app.snapshot.seq == 2


async def test_stale_header_says_why_the_link_went_quiet() -> None:
    clock = Clock()
    url = "http://10.0.0.7:8787"
    link = FakeLink([make_snapshot()], label=url, attached=True)
    async with fake_console(link, clock=clock, refresh_interval=0.5) as (app, pilot):
        error = app.query_one("#link-error", Label)
        link.last_error = f"cannot reach routedeck at {url}: All connection attempts failed"
        app.update_age()
        await pilot.pause()
        assert not error.display, "a failed poll alone is not news until the data is stale"

        clock.now += app.stale_after + 0.5
        app.update_age()
        await pilot.pause()
        assert _text(app.query_one("#age")).startswith("STALE")
        assert error.display
        assert _text(error) == "All connection attempts failed"
        assert not app.query_one("#summary").display, "the error takes the stale summary's place"

        link.last_error = None
        link.push(make_snapshot(seq=2))
        await wait_for(pilot, lambda: not error.display, "the error to go with the staleness")


def test_link_errors_are_shortened_to_one_line() -> None:
    url = "http://10.0.0.7:8787"
    assert shorten_error(f"cannot reach routedeck at {url}: timed out", url) == "timed out"
    assert shorten_error("routedeck answered\nHTTP 401", url) == "routedeck answered HTTP 401"
    long = shorten_error("x" * 200, url)
    assert len(long) == 60 and long.endswith("…")


async def test_header_shows_where_what_and_modes() -> None:
    snapshot = dataclasses.replace(rollout_snapshot(), safe_mode=True)
    link = FakeLink([snapshot], label="http://10.0.0.7:8787", attached=True)
    async with fake_console(link, read_only=True) as (app, _):
        header = app.query_one(StatusHeader)
        assert _text(header.query_one("#where")) == "http://10.0.0.7:8787"
        # Three badges leave no room for the engine state and rate: the stage stays.
        summary = _text(header.query_one("#summary"))
        assert summary == "release r3 → r4 · canary (1%)"
        for badge in ("#badge-safe", "#badge-read-only", "#badge-attached"):
            assert header.query_one(badge).display, badge
        assert not header.query_one("#badge-paused").display
        assert not header.query_one("#badge-halted").display
        assert "r4 vs baseline r3" in _text(app.query_one(RolloutPane))


async def test_rollout_pane_says_there_is_none() -> None:
    async with fake_console(FakeLink([make_snapshot()])) as (app, _):
        text = _text(app.query_one(RolloutPane))
        assert "no rollout in progress" in text
        assert "serving release config" in text


def _style_on_screen(widget: Any, needle: str) -> Style:
    """The style ``needle``'s first character is drawn with, as the widget renders it."""
    for y in range(widget.size.height):
        offset = 0
        segments = list(widget.render_line(y))
        line = "".join(segment.text for segment in segments)
        start = line.find(needle)
        if start < 0:
            continue
        for segment in segments:
            if offset <= start < offset + len(segment.text):
                return segment.style or Style()
            offset += len(segment.text)
    raise AssertionError(f"{needle!r} is not on screen")


def _lines(widget: Any) -> list[str]:
    return [line.rstrip() for line in _text(widget).splitlines()]


async def test_spend_pane_shows_dollars_budgets_cache_and_unpriced_traffic() -> None:
    async with fake_console(FakeLink([budget_snapshot()]), size=(160, 48)) as (app, pilot):
        summary = app.query_one("#spend-summary")
        table = app.query_one(SpendTable)
        await wait_for(pilot, lambda: table.shows("scope"), "the by column")
        assert _lines(summary) == [
            "spent    ≥$136.71 today · ≥$0.0042 per successful task",
            "▲ unpriced: local-llama (12 req) — cost unknown, not $0",
            "per min  in 590k · out 317k  ▄▇██▇█▇█",
            "today    in 41.2M · out 18.8M",
            "cache    31.2% hit · saved $12.34 · 1,204 entries",
        ]
        assert table.keys == [
            "tenant:acme",
            "tenant:globex",
            "tenant:initech",
            "tenant:local",
            "tier:high",
            "tier:low",
            "tier:medium",
            "deployment:local-llama",
            "deployment:balanced-sonnet",
            "deployment:fast-mini",
            "deployment:strong-large",
        ]
        assert table.cell_text("tenant:acme", "usd") == "$85.00"
        assert table.cell_text("tenant:acme", "budget") == "██████▊░ 85% of $100"
        assert table.cell_text("tenant:globex", "budget") == "████████ 125% of $10"
        assert table.cell_text("tenant:initech", "budget") == "████▊░░░ 60% of $60"
        assert table.cell_text("tenant:local", "usd") == "$3.21"
        assert table.cell_text("tenant:local", "budget") == "", "no budget, no bar"
        assert table.cell_text("tier:medium", "usd") == "$44.40"
        assert table.cell_text("deployment:fast-mini", "usd") == "$3.71"
        assert table.cell_text("deployment:local-llama", "usd") == "▲ unpriced"
        assert table.cell_text("deployment:local-llama", "budget") == "12 req, cost unknown"
        loud = summary.get_component_rich_style("state--loud", partial=True)
        shown = _style_on_screen(summary, "▲ unpriced")
        assert (shown.color, shown.bgcolor, shown.bold) == (loud.color, loud.bgcolor, True)
        everything = " ".join(table.cell_text(key, "usd") for key in table.keys)
        assert "$0.00" not in everything, "unpriced traffic is never $0"


async def test_budget_bars_are_coloured_by_the_share_spent() -> None:
    assert [budget_state(s) for s in (0.0, 0.49, 0.5, 0.79, 0.8, 0.99, 1.0, 1.25)] == [
        "budget-ok",
        "budget-ok",
        "budget-watch",
        "budget-watch",
        "budget-high",
        "budget-high",
        "budget-over",
        "budget-over",
    ]
    async with fake_console(FakeLink([budget_snapshot()]), size=(160, 48)) as (app, pilot):
        table = app.query_one(SpendTable)
        await wait_for(pilot, lambda: table.row_count > 0, "the spend rows")
        for tenant, state in (
            ("acme", "budget-high"),
            ("globex", "budget-over"),
            ("initech", "budget-watch"),
        ):
            cell = table.get_cell(f"tenant:{tenant}", "budget")
            assert cell.style == table.get_component_rich_style(
                f"live-table--{state}", partial=True
            ), tenant
        over = table.get_component_rich_style("live-table--budget-over", partial=True)
        high = table.get_component_rich_style("live-table--budget-high", partial=True)
        assert over.color != high.color, "over budget and near it look different"


def test_spend_rows_carry_tokens_month_and_budget_when_wide_enough() -> None:
    by_key = dict(rows(budget_snapshot()))
    assert by_key["tenant:acme"] == (
        "tenant",
        "acme",
        "30.0M",
        "12.0M",
        "$85.00",
        ("$1,020 of $3,000", "budget-ok"),
        ("██████▊░ 85% of $100", "budget-high"),
    )
    assert by_key["tenant:globex"][5] == "$140.00", "no monthly budget: just dollars"
    assert by_key["tier:high"][2:5] == ("9.1M", "4.4M", "$88.10")
    compact = [key for key, _ in rows(budget_snapshot(), compact=True)]
    assert compact[0] == "heading:tenants" and "heading:deployments" in compact


async def test_spend_summary_at_80x24_leads_with_dollars_and_the_unpriced_warning() -> None:
    async with fake_console(FakeLink([budget_snapshot()]), size=(80, 24)) as (app, pilot):
        summary = app.query_one("#spend-summary")
        pane = app.query_one(SpendPane)
        await wait_for(pilot, lambda: summary.size.height == 2, "the short layout")
        await wait_for(
            pilot, lambda: "cache 31%" in _text(summary), "the cache ratio on the first line"
        )
        shown = _lines(summary)[: summary.size.height]
        assert shown == [
            "≥$136.71 today · ≥$0.0042 per task · cache 31%",
            "▲ unpriced: local-llama (12 req)",
        ]
        assert pane.region.width >= len(shown[0]), "the summary line fits"
        assert not app.query_one("#spend-table").display
        assert not app.query_one(AlertsPane).display, "alerts give way at 80x24"
        badge = app.query_one("#badge-alerts", Label)
        assert badge.display and _text(badge) == "✖ 3 alerts"
        assert badge.has_class("-critical")


async def test_unknown_dollars_show_a_dash_never_zero() -> None:
    unknown = dataclasses.replace(
        BUDGET_SPEND,
        today_usd=0.0,
        by_tenant=(),
        by_deployment=(),
        cost_per_success_usd=None,
        cache_hit_ratio=None,
        unpriced=(("local-llama", 40),),
    )
    snapshot = make_snapshot(spend=unknown)
    async with fake_console(FakeLink([snapshot]), size=(160, 48)) as (app, pilot):
        summary = app.query_one("#spend-summary")
        await wait_for(pilot, lambda: _text(summary).startswith("spent"), "the summary")
        lines = _lines(summary)
        assert lines[0] == "spent    — today · — per successful task"
        assert lines[1] == "▲ unpriced: local-llama (40 req) — cost unknown, not $0"
        assert lines[4] == "cache    — hit · saved $12.34 · 1,204 entries"
        table = app.query_one(SpendTable)
        assert table.cell_text("deployment:local-llama", "usd") == "▲ unpriced"
        assert table.cell_text("tenant:acme", "usd") == "—", "tokens but no ledger row"

    async with fake_console(FakeLink([make_snapshot(spend=None)]), size=(160, 48)) as (app, pilot):
        summary = app.query_one("#spend-summary")
        await wait_for(pilot, lambda: _text(summary).strip(), "the summary")
        assert _lines(summary)[0] == "no dollar figures from this engine"
        assert "in 41.2M · out 18.8M" in _text(summary), "tokens still show"


def test_dollars_and_bars_format() -> None:
    assert [fmt.usd(v) for v in (None, 0.0, 0.00004, 0.0042, 12.345, 1234.5)] == [
        "—",
        "$0.00",
        "<$0.0001",
        "$0.0042",
        "$12.35",
        "$1,234",
    ]
    assert fmt.usd_at_least(1.5, partial=True) == "≥$1.50"
    assert fmt.usd_at_least(0.0, partial=True) == "—"
    assert fmt.usd_at_least(0.0, partial=False) == "$0.00"
    assert fmt.bar(0.0, 4) == "░░░░"
    assert fmt.bar(0.5, 4) == "██░░"
    assert fmt.bar(0.85, 8) == "██████▊░"
    assert fmt.bar(1.7, 4) == "████", "over budget fills the bar, the share says by how much"


async def test_alerts_pane_lists_the_newest_with_time_severity_and_message() -> None:
    async with fake_console(FakeLink([budget_snapshot()]), size=(160, 48)) as (app, pilot):
        pane = app.query_one(AlertsPane)
        await wait_for(pilot, lambda: "08:52:50" in _text(pane), "the alerts")
        assert pane.border_title == "alerts · 3 today"
        words = _words(pane)
        assert words.startswith("08:52:50 ✖ critical Tenant globex is at its daily budget")
        assert "08:51:00 ▲ warning Deployment local-llama has no price" in words
        assert "08:23:20 ● info Tenant initech has spent $30.0000" in words
        assert words.index("critical") < words.index("warning") < words.index("info")
        for level in ("info", "warning", "critical"):
            wanted = pane.get_component_rich_style(f"state--alert-{level}", partial=True)
            shown = _style_on_screen(pane, fmt.severity(level))
            assert shown.color == wanted.color and shown.bold == wanted.bold, level
        info = pane.get_component_rich_style("state--alert-info", partial=True)
        critical = pane.get_component_rich_style("state--alert-critical", partial=True)
        assert info.color != critical.color


async def test_alerts_pane_says_when_there_are_none_and_dates_older_ones() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link, size=(160, 48)) as (app, pilot):
        pane = app.query_one(AlertsPane)
        await wait_for(pilot, lambda: _text(pane) == "no alerts", "the empty pane")
        assert not app.query_one("#badge-alerts").display

        yesterday = AlertView(T0 - 86_400, "fallback_ratio", "warning", "40% served by fallback")
        link.push(make_snapshot(seq=2, alerts=(ALERTS[2], yesterday)))
        await wait_for(pilot, lambda: "Oct 08" in _text(pane), "the older alert's date")
        badge = app.query_one("#badge-alerts", Label)
        assert _text(badge) == "● 1 alert", "only today's count"
        assert badge.has_class("-info") and not badge.has_class("-warning")


async def test_a_dialog_holds_rendering_until_it_closes() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        link.push(degraded_snapshot())
        await pilot.pause(0.1)
        assert app.snapshot is not None and app.snapshot.seq == 1
        await pilot.press("escape")
        await wait_for(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.fallback.ratio == 0.384,
            "the held snapshot to render",
        )
        assert link.submitted == []


async def test_drain_previews_then_submits_with_the_actor() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link, actor="alice") as (app, pilot):
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        assert link.previewed == [Drain("sim-fast")]
        details = [_text(w) for w in app.screen.query(".dialog-detail")]
        assert details == [
            "· tier low: fast-mini → local-llama",
            "· tier medium: fast-mini fallback removed",
        ]
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: link.submitted, "the submit")
        assert link.submitted == [(Drain("sim-fast"), "alice")]


async def test_drain_on_a_drained_row_undrains_it() -> None:
    link = FakeLink([drained_snapshot()])
    async with fake_console(link) as (app, pilot):
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        assert str(app.screen.query_one("#confirm", Button).label) == "Undrain"


async def test_safe_mode_and_drill_commands() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link, demo=True) as (app, pilot):
        await pilot.press("down", "down", "3")
        await wait_for(pilot, lambda: link.submitted, "the drill")
        assert link.submitted[-1][0] == Drill("sim-balanced", "latency")

        await run_command(pilot, "drill sim-local hang")
        await wait_for(pilot, lambda: len(link.submitted) == 2, "the second drill")
        assert link.submitted[-1][0] == Drill("sim-local", "hang")

        await run_command(pilot, "safe on")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        assert link.previewed[-1] == SetSafeMode(True)


async def test_filter_narrows_the_tail_and_escape_clears_it() -> None:
    async with fake_console(FakeLink([make_snapshot()])) as (app, pilot):
        tail = app.query_one(TailPane)
        assert len(tail.table.keys) == 6
        await pilot.press("slash", *"OVERLOADED")
        await wait_for(pilot, lambda: len(tail.table.keys) == 1, "the filter")
        assert tail.table.cell_text(tail.table.keys[0], "status") == "503 overloaded"
        await pilot.press("enter")
        assert tail.filter_text == "OVERLOADED"
        assert "1 of 6" in str(tail.border_title)

        await pilot.press("escape")
        await wait_for(pilot, lambda: len(tail.table.keys) == 6, "the filter to clear")
        assert tail.table.keys == sorted(tail.table.keys), "oldest first, newest last"


async def test_refresh_rate_cycles() -> None:
    async with fake_console(FakeLink([make_snapshot()]), refresh_interval=0.5) as (app, pilot):
        seen = []
        for _ in range(4):
            await pilot.press("r")
            seen.append(app.refresh_interval)
        assert seen == [1.0, 2.0, 0.25, 0.5]


async def test_help_lists_the_registry_and_why_keys_are_unavailable() -> None:
    async with fake_console(FakeLink([make_snapshot()]), read_only=True) as (app, pilot):
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        entries = dict((spec.id, why) for spec, why in app.help_entries())
        assert entries["drain"] == "read-only"
        assert entries["drill_errors"] == "demo mode only"
        assert entries["pause"] is None
        assert set(entries) == {spec.id for spec in bindings.REGISTRY}
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), "help to close")


async def test_bindings_come_from_the_registry() -> None:
    keys = {b.key for b in RouteDeckApp.BINDINGS if isinstance(b, Binding)}
    assert keys == {spec.key for spec in bindings.REGISTRY if spec.key}
    swallowed = {"ctrl+s", "ctrl+j", "ctrl+o"}
    assert not keys & swallowed
    assert not any(k.startswith(("alt+", "meta+", "super+")) for k in keys)
    for spec in bindings.REGISTRY:
        assert spec.verb is None or bindings.for_verb(spec.verb) is spec


async def test_command_usage_errors_do_not_reach_the_engine() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        for line in ("drain", "safe maybe", "rate fast", "drill sim-fast errors"):
            app.run_command(line)
        await pilot.pause()
        assert link.previewed == [] and link.submitted == []
        messages = " | ".join(n.message for n in app._notifications)
        assert "usage: :drain TARGET" in messages
        assert "usage: :safe on|off" in messages
        assert ":drill is refused: demo mode only" in messages


async def test_provider_rows_show_breakers_compact_when_narrow() -> None:
    async with fake_console(FakeLink([degraded_snapshot()]), size=(80, 24)) as (app, _):
        table = app.query_one(ProviderTable)
        assert not table.shows("breaker")
        assert table.cell_text(deployment_key("fast-mini"), "state") == "⊘ open 12s"
        assert table.cell_text(deployment_key("balanced-sonnet"), "state") == "◐ half-open"
        assert table.cell_text(deployment_key("local-llama"), "state") == "▲ degraded"
        assert table.cell_text(provider_key("sim-fast"), "state") == "✖ down"


async def test_provider_rows_show_breakers_in_their_own_column_when_wide() -> None:
    async with fake_console(FakeLink([degraded_snapshot()]), size=(160, 48)) as (app, pilot):
        table = app.query_one(ProviderTable)
        await wait_for(pilot, lambda: table.shows("breaker"), "the breaker column")
        assert table.cell_text(deployment_key("fast-mini"), "state") == "✖ down"
        assert table.cell_text(deployment_key("fast-mini"), "breaker") == "⊘ open 12s left"
        assert table.cell_text(provider_key("sim-fast"), "breaker") == "⊘ 1 open"
        assert table.cell_text(deployment_key("balanced-sonnet"), "breaker") == "◐ half-open"
        assert table.cell_text(provider_key("sim-balanced"), "breaker") == "◐ 1 half-open"
        assert table.cell_text(deployment_key("strong-large"), "breaker") == "● closed"
        assert table.cell_text(provider_key("sim-strong"), "breaker") == ""

        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: not table.shows("breaker"), "the column to give way")
        assert table.cell_text(deployment_key("fast-mini"), "state") == "⊘ open 12s"


async def test_tier_pane_lines_up_each_chain_with_shares_and_skips_at_80_columns() -> None:
    expected = [
        "low       ⊘ fast-mini 35% open 12s → ▲ local-llama 65% → ◐ balanced-sonnet 0%",
        "medium    ◐ balanced-sonnet 82% → ⊘ fast-mini 18% open 12s",
        "high      ● strong-large 100% → ◐ balanced-sonnet 0%",
        "recovery  ▲ local-llama 100% → ⊘ fast-mini 0% open 12s",
    ]
    async with fake_console(FakeLink([degraded_snapshot()]), size=(80, 24)) as (app, pilot):
        pane = app.query_one(TierPane)

        def lines() -> list[str]:
            return [line.rstrip() for line in _text(pane).splitlines()]

        # The whole reasons do not fit in 80 columns: one line per tier with short notes.
        await wait_for(pilot, lambda: lines() == expected, "one line per tier")
        assert pane.size.height == 4


async def test_tier_pane_says_why_a_deployment_is_skipped_when_wide() -> None:
    async with fake_console(FakeLink([degraded_snapshot()]), size=(160, 48)) as (app, pilot):
        pane = app.query_one(TierPane)
        await wait_for(pilot, lambda: "low 1. " in _words(pane), "a block per tier")
        words = _words(pane)
        assert (
            "low 1. ⊘ fast-mini 35% breaker open: 5 failures in a row, last 5xx · 12s left" in words
        )
        assert "2. ▲ local-llama 65% 3. ◐ balanced-sonnet 0%" in words
        assert words.count("5 failures in a row") == 1, "the reason is given once"
        assert "medium 1. ◐ balanced-sonnet 82% 2. ⊘ fast-mini 18% open 12s" in words


async def test_tier_pane_says_a_drained_deployment_is_skipped() -> None:
    async with fake_console(FakeLink([drained_snapshot()]), size=(160, 48)) as (app, pilot):
        pane = app.query_one(TierPane)
        await wait_for(pilot, lambda: "low 1. " in _words(pane), "a block per tier")
        assert "1. ⏸ fast-mini 0% — drained by an operator 2. ● local-llama 100%" in _words(pane)
        assert "⏸ fast-mini 0% drained" in _words(pane), "later tiers give the short note"


async def test_tier_pane_gives_the_whole_reason_on_one_line_when_it_fits() -> None:
    async with fake_console(FakeLink([drained_snapshot()]), size=(110, 30)) as (app, pilot):
        pane = app.query_one(TierPane)
        first = "low       ⏸ fast-mini 0% (drained by an operator) → ● local-llama 100% → "
        await wait_for(pilot, lambda: _text(pane).startswith(first), "the whole reason")
        assert _text(pane).splitlines()[1].rstrip().endswith("⏸ fast-mini 0% drained")


async def test_tail_shows_tier_reason_and_path_and_keeps_the_path_when_narrow() -> None:
    async with fake_console(FakeLink([make_snapshot()]), size=(160, 48)) as (app, pilot):
        table = app.query_one(TailPane).table
        everything = ["time", "tier", "why", "status", "latency", "tokens", "path"]
        await wait_for(pilot, lambda: table.shown_columns == everything, "every column")
        rows = [(table.cell_text(key, "why"), table.cell_text(key, "path")) for key in table.keys]
        fell_back = PATH_SEPARATOR.join(("fast-mini", "local-llama"))
        assert rows == [
            ("task", "fast-mini"),
            ("default", "balanced-sonnet"),
            ("task", fell_back),
            ("rule:long", "strong-large"),
            ("alias", fell_back),
            ("default", "balanced-sonnet"),
        ]

        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: "tokens" not in table.shown_columns, "tokens to give way")
        assert "why" in table.shown_columns and "path" in table.shown_columns

        await pilot.resize_terminal(80, 24)
        await wait_for(
            pilot,
            lambda: table.shown_columns == ["time", "tier", "status", "latency", "path"],
            "the path to win the narrow table",
        )
        # Room for a fallback between the demo's two longest names.
        assert table.columns["path"].width >= len("balanced-sonnet local-llama")

        await pilot.resize_terminal(160, 48)
        await wait_for(pilot, lambda: table.shown_columns == everything, "the columns to return")
        newest = table.keys[-1]
        assert table.cell_text(newest, "why") == "default"
        assert table.cell_text(newest, "tokens") == "990→310"


async def test_filter_matches_a_tier_reason_the_narrow_tail_hides() -> None:
    async with fake_console(FakeLink([make_snapshot()]), size=(80, 24)) as (app, pilot):
        tail = app.query_one(TailPane)
        assert not tail.table.shows("why")
        await run_command(pilot, "filter rule:long")
        await wait_for(pilot, lambda: len(tail.table.keys) == 1, "the filter")
        assert tail.table.cell_text(tail.table.keys[0], "path") == "strong-large"


async def test_provider_table_updates_only_changed_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clear(self: DataTable[Any], columns: bool = False) -> Any:
        raise AssertionError("the provider table must never be cleared on refresh")

    monkeypatch.setattr(DataTable, "clear", no_clear)
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        table = app.query_one(ProviderTable)
        keys = table.keys
        await pilot.press("down", "down")
        selected = table.selected_key
        kept = table.get_cell(provider_key("sim-strong"), "state")
        changed = table.get_cell(provider_key("sim-fast"), "state")

        link.push(with_seq(degraded_snapshot(), 2))
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.seq == 2, "seq 2")
        assert table.keys == keys
        assert table.selected_key == selected, "the cursor stays on its row"
        assert table.get_cell(provider_key("sim-strong"), "state") is kept
        assert table.get_cell(provider_key("sim-fast"), "state") is not changed
        assert table.cell_text(provider_key("sim-fast"), "state") == "✖ down"


class _TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LiveTable([("a", "a", 4), ("b", "b", 4)])


async def test_live_table_sync_keeps_order_and_untouched_cells() -> None:
    app = _TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(LiveTable)
        table.sync([("1", ("x", "y")), ("2", ("p", ("q", "down")))])
        first = table.get_cell("1", "a")
        table.sync([("1", ("x", "z")), ("2", ("p", ("q", "down"))), ("3", ("m", "n"))])
        await pilot.pause()
        assert table.keys == ["1", "2", "3"]
        assert table.get_cell("1", "a") is first
        assert table.cell_text("1", "b") == "z"

        # A row dropped from the middle and one re-inserted out of order.
        table.sync([("1", ("x", "z")), ("3", ("m", "n")), ("2", ("p", "q"))])
        assert table.keys == ["1", "3", "2"]
        assert table.get_cell("1", "a") is first
        table.sync([])
        assert table.keys == []


class _FittingApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LiveTable(
            [
                Column("a", "a", 4),
                Column("b", "b", 4, drop=2),
                Column("c", "c", 4, drop=1),
                Column("rest", "rest", 6, fill=True),
            ]
        )


async def test_live_table_drops_columns_by_rank_and_fills_the_rest() -> None:
    app = _FittingApp()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(LiveTable)
        table.sync([("1", ("a1", "b1", ("c1", "down"), "rest1"))])
        await wait_for(pilot, lambda: table.shown_columns == ["a", "b", "c", "rest"], "a fit")
        # 40 cells: three 4-wide columns and padding take 18, one is kept for the scrollbar.
        assert table.columns["rest"].width == 40 - 18 - 2 - 1

        await pilot.resize_terminal(22, 10)
        await wait_for(pilot, lambda: table.shown_columns == ["a", "c", "rest"], "b to go first")
        await pilot.resize_terminal(14, 10)
        await wait_for(pilot, lambda: table.shown_columns == ["a", "rest"], "c to go next")
        assert table.columns["rest"].width == 6, "a fill column never shrinks below its width"

        table.sync([("1", ("a1", "b2", ("c2", "down"), "rest1")), ("2", ("a2", "", "", ""))])
        await pilot.resize_terminal(40, 10)
        await wait_for(pilot, lambda: table.shown_columns == ["a", "b", "c", "rest"], "all back")
        assert table.cell_text("1", "b") == "b2", "a hidden cell is kept up to date"
        assert table.cell_text("1", "c") == "c2"
        assert table.keys == ["1", "2"]
