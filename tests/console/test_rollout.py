"""Canary rollouts in the console, on a fake link that answers like the engine: the rollout pane
and the header, the advance key and its override path, rollback, the tier editor (staged and
emergency), and read-only mode refusing all of it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from rich.style import Style
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from console.app import RouteDeckApp
from console.screens.confirm import ConfirmScreen
from console.screens.edit_tier import EditTierScreen
from console.widgets.rollout_pane import STEP, RolloutPane
from console.widgets.status_header import StatusHeader, summary_forms
from engine.commands import Advance, EditTier, Rollback
from tests.console.conftest import run_command, wait_for
from tests.console.fakes import (
    LOW_AFTER,
    LOW_BEFORE,
    FakeLink,
    halted_snapshot,
    make_snapshot,
    rollout_snapshot,
)

WIDE = (120, 40)
"""Wide and tall: the rollout pane is on screen."""


@asynccontextmanager
async def fake_console(
    link: FakeLink, size: tuple[int, int] = WIDE, **options: Any
) -> AsyncIterator[tuple[RouteDeckApp, Pilot[None]]]:
    options.setdefault("refresh_interval", 0.01)
    app = RouteDeckApp(link, **options)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None, "the first snapshot")
        yield app, pilot


def _text(widget: Any) -> str:
    return str(widget.render())


def _pane(app: RouteDeckApp) -> str:
    return _text(app.query_one(RolloutPane))


def _messages(app: RouteDeckApp) -> str:
    return " | ".join(n.message for n in app._notifications)


def _confirm(app: RouteDeckApp) -> ConfirmScreen | None:
    return app.screen if isinstance(app.screen, ConfirmScreen) else None


def _editor(app: RouteDeckApp) -> EditTierScreen | None:
    return app.screen if isinstance(app.screen, EditTierScreen) else None


def _style_of(widget: Any, needle: str) -> Style:
    """The style ``needle``'s first character is drawn with on screen."""
    for y in range(widget.size.height):
        segments = list(widget.render_line(y))
        line = "".join(segment.text for segment in segments)
        start = line.find(needle)
        if start < 0:
            continue
        offset = 0
        for segment in segments:
            if offset <= start < offset + len(segment.text):
                return segment.style or Style()
            offset += len(segment.text)
    raise AssertionError(f"{needle!r} is not on screen")


async def _open_confirm(app: RouteDeckApp, pilot: Pilot[None], key: str) -> ConfirmScreen:
    await pilot.press(key)
    await wait_for(pilot, lambda: _confirm(app) is not None, f"the confirmation of {key}")
    dialog = _confirm(app)
    assert dialog is not None
    return dialog


async def test_pane_shows_a_running_rollout_with_a_failing_gate() -> None:
    async with fake_console(FakeLink([rollout_snapshot()])) as (app, _):
        lines = [line.rstrip() for line in _pane(app).splitlines()]
        assert lines[0] == STEP.join(("internal ✓", "canary 1% ●", "5%", "20%", "full"))
        assert lines[1] == "r4 vs baseline r3 · by alice · low: try balanced-sonnet first"
        assert lines[2] == "● RUNNING · 4m in stage · r4's share: target 1%, seen 1.2%"
        rows = {line.split()[0]: line for line in lines[3:8]}
        assert rows["signal"].split() == [
            "signal",
            "r4",
            "·",
            "184",
            "req",
            "r3",
            "·",
            "18k",
            "req",
            "gate",
        ]
        assert "412ms" in rows["p95"] and "380ms" in rows["p95"] and "● passing" in rows["p95"]
        errors = rows["err/429/t/o"]
        assert "4.1% 0.0% 0.5%" in errors and "1.0% 0.0% 0.2%" in errors
        assert "✖ failing" in errors and errors.endswith("error rate 4.1% > 3.0%")
        assert "○ waiting" in rows["$/success"]
        assert rows["$/success"].endswith("needs 50 priced successes, has 31")
        assert lines[8] == "a: advance to 5% (override needed) · b: roll back"

        pane = app.query_one(RolloutPane)
        failing = _style_of(pane, "✖ failing")
        passing = _style_of(pane, "● passing")
        assert failing.color != passing.color, "each verdict in its own colour, beside its word"
        assert _style_of(pane, "a: advance").color != _style_of(pane, "b: roll back").color, (
            "a is dimmed while an override is needed; b is not"
        )


async def test_pane_says_halted_loudly_and_what_resumes() -> None:
    async with fake_console(FakeLink([halted_snapshot()])) as (app, _):
        text = _pane(app)
        assert "canary 1% ⏸" in text
        assert "✖ HALTED: gate errors failed: error rate 4.1% > 3.0%" in text
        assert "a: resume canary" in text
        header = app.query_one(StatusHeader)
        assert header.query_one("#badge-halted").display


async def test_pane_counts_down_to_an_automatic_advance() -> None:
    async with fake_console(FakeLink([rollout_snapshot(passing=True)])) as (app, _):
        text = _pane(app)
        assert "a: advance to 5% · b: roll back · advances on its own in 5m" in text
        assert "override" not in text


async def test_pane_and_header_without_a_rollout() -> None:
    async with fake_console(FakeLink([make_snapshot()])) as (app, _):
        assert _pane(app).splitlines() == ["no rollout in progress", "serving release config"]
        summary = _text(app.query_one("#summary"))
        assert summary == "running · 24.0 req/s · release config · no rollout"
        assert not app.query_one("#badge-halted").display


async def test_header_keeps_the_stage_at_80x24_where_the_pane_gives_way() -> None:
    async with fake_console(FakeLink([halted_snapshot()]), size=(80, 24)) as (app, _):
        assert not app.query_one(RolloutPane).display
        assert _text(app.query_one("#summary")) == "release r3 → r4 · canary (1%)"
        assert app.query_one("#badge-halted", Label).display


def test_summary_forms_drop_the_least_needed_first() -> None:
    assert summary_forms(rollout_snapshot()) == (
        "running · 24.0 req/s · release r3 → r4 · canary (1%)",
        "24.0 req/s · release r3 → r4 · canary (1%)",
        "release r3 → r4 · canary (1%)",
        "r3 → r4 · canary (1%)",
    )
    stopping = dataclasses.replace(make_snapshot(), engine_state="stopping")
    assert summary_forms(stopping)[-1] == "stopping · release config"


async def test_advance_with_failing_gates_needs_the_override_word_and_a_reason() -> None:
    link = FakeLink([rollout_snapshot()])
    async with fake_console(link, actor="alice") as (app, pilot):
        dialog = await _open_confirm(app, pilot, "a")
        assert link.previewed == [Advance(), Advance(override=True)]
        assert str(dialog.query_one("#dialog-title").render()).startswith("Override the gates")
        details = " ".join(_text(w) for w in dialog.query(".dialog-detail"))
        assert "gate errors failing" in details, "the dialog says which gate does not pass"
        warning = _text(dialog.query_one("#dialog-warning"))
        assert "Type override to advance although gates do not pass" in warning
        confirm = dialog.query_one("#confirm", Button)
        word = dialog.query_one("#dialog-input", Input)
        reason = dialog.query_one("#dialog-reason", Input)
        assert dialog.focused is word

        await pilot.press(*"override")
        assert confirm.disabled, "the word alone is not enough"
        await pilot.press("enter")
        assert dialog.focused is reason, "enter on the right word moves on to the reason"
        assert link.submitted == []
        await pilot.press(*"canary errors are a known flake")
        assert not confirm.disabled
        word.value = "overrid"
        await pilot.pause()
        assert confirm.disabled, "and the word must stay right"
        word.value = "override"
        await pilot.pause()
        await pilot.click("#confirm")

        await wait_for(pilot, lambda: link.submitted, "the submit")
        assert link.submitted == [(Advance(override=True), "alice")]
        assert link.reasons == ["canary errors are a known flake"]
        await wait_for(pilot, lambda: "5% ●" in _pane(app), "the next stage on screen")
        assert STEP.join(("internal ✓", "canary 1% ✓", "5% ●")) in _pane(app)
        assert "advance to 5% for r4" in _messages(app)


async def test_advance_with_passing_gates_asks_plainly() -> None:
    link = FakeLink([rollout_snapshot(passing=True)])
    async with fake_console(link) as (app, pilot):
        dialog = await _open_confirm(app, pilot, "a")
        assert link.previewed == [Advance()]
        assert not dialog.query(Input), "no word to type, no reason to give"
        assert dialog.focused is dialog.query_one("#cancel")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: link.submitted, "the submit")
        assert link.submitted[0][0] == Advance()
        assert link.reasons == [""]
        await wait_for(pilot, lambda: "5% ●" in _pane(app), "the next stage on screen")


async def test_advance_and_rollback_are_dimmed_without_a_rollout() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        assert app.check_action("advance", ()) is None
        assert app.check_action("rollback", ()) is None
        assert app.check_action("edit_tier", ()) is True
        await pilot.press("a", "b")
        await pilot.pause()
        assert link.previewed == [] and _confirm(app) is None

        # The command line still asks the engine, which says why not.
        await run_command(pilot, "advance")
        await wait_for(pilot, lambda: "no rollout in progress" in _messages(app), "the refusal")
        assert _confirm(app) is None
        assert link.submitted == []
        assert any(n.severity == "error" for n in app._notifications)


async def test_rollback_needs_confirmation() -> None:
    link = FakeLink([rollout_snapshot()])
    async with fake_console(link, actor="bob") as (app, pilot):
        await _open_confirm(app, pilot, "b")
        await pilot.press("enter")  # focus starts on Cancel
        await wait_for(pilot, lambda: _confirm(app) is None, "the dialog to close")
        assert link.submitted == []

        dialog = await _open_confirm(app, pilot, "b")
        assert str(dialog.query_one("#dialog-title").render()) == "Roll back r4?"
        assert "all traffic to r3" in _text(dialog.query_one("#dialog-summary"))
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: link.submitted, "the submit")
        assert link.submitted == [(Rollback(), "bob")]
        await wait_for(pilot, lambda: "no rollout in progress" in _pane(app), "the rollback")
        assert "serving release r3" in _pane(app)
        assert "rolls back r4" in _messages(app)
        assert app.check_action("advance", ()) is None


async def test_rollback_command() -> None:
    link = FakeLink([rollout_snapshot()])
    async with fake_console(link) as (app, pilot):
        await run_command(pilot, "rollback")
        await wait_for(pilot, lambda: _confirm(app) is not None, "the confirmation")
        assert link.previewed == [Rollback()]


async def test_edit_key_proposes_the_edited_mapping_as_a_release() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link, actor="carol") as (app, pilot):
        await pilot.press("m")
        await wait_for(pilot, lambda: _editor(app) is not None, "the editor")
        editor = _editor(app)
        assert editor is not None and editor.tier == "low"
        mapping = editor.query_one("#editor-mapping", Input)
        assert mapping.value == LOW_BEFORE
        assert editor.focused is mapping

        mapping.value = LOW_AFTER
        editor.query_one("#editor-note", Input).value = "balanced-sonnet answers low better"
        await pilot.press("enter")
        await wait_for(pilot, lambda: _confirm(app) is not None, "the confirmation")
        dialog = _confirm(app)
        assert dialog is not None
        summary = _text(dialog.query_one("#dialog-summary"))
        assert (
            summary == f"starts release r1 at stage internal: tier low: {LOW_BEFORE} → {LOW_AFTER}"
        )
        assert not dialog.query(Input), "a staged release needs no typed word"
        await pilot.press("tab", "enter")

        await wait_for(pilot, lambda: link.submitted, "the submit")
        expected = EditTier("low", LOW_AFTER, "balanced-sonnet answers low better", False)
        assert link.submitted == [(expected, "carol")]
        await wait_for(pilot, lambda: _editor(app) is None and _confirm(app) is None, "closing")
        await wait_for(pilot, lambda: "internal ●" in _pane(app), "the new rollout")
        assert "r1 vs baseline config" in _pane(app)


async def test_edit_command_opens_the_named_tier_and_keeps_each_tiers_draft() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        await run_command(pilot, "edit high")
        await wait_for(pilot, lambda: _editor(app) is not None, "the editor")
        editor = _editor(app)
        assert editor is not None and editor.tier == "high"
        mapping = editor.query_one("#editor-mapping", Input)
        assert mapping.value == "strong-large > balanced-sonnet"
        mapping.value = "strong-large"

        select: Select[str] = editor.query_one("#editor-tier", Select)
        select.value = "medium"
        await wait_for(pilot, lambda: editor.tier == "medium", "the tier to change")
        assert mapping.value == "balanced-sonnet > fast-mini"
        select.value = "high"
        await wait_for(pilot, lambda: editor.tier == "high", "the tier to change back")
        assert mapping.value == "strong-large", "the edit to high is still there"

        await pilot.press("escape")
        await wait_for(pilot, lambda: _editor(app) is None, "the editor to close")
        assert link.previewed == []

        await run_command(pilot, "edit nosuch")
        await pilot.pause()
        assert _editor(app) is None
        assert "no tier 'nosuch'; tiers: low, medium, high, recovery" in _messages(app)


async def test_a_refused_mapping_shows_in_the_editor_with_the_text_kept() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link) as (app, pilot):
        await pilot.press("m")
        await wait_for(pilot, lambda: _editor(app) is not None, "the editor")
        editor = _editor(app)
        assert editor is not None
        mapping = editor.query_one("#editor-mapping", Input)
        mapping.value = "fast-mini > gpt-9"
        await pilot.press("enter")
        error = editor.query_one("#editor-error", Static)
        await wait_for(pilot, lambda: error.display, "the refusal in the editor")
        assert "unknown deployment 'gpt-9'" in _text(error)
        assert _editor(app) is editor and _confirm(app) is None
        assert mapping.value == "fast-mini > gpt-9"
        assert link.submitted == []

        # Fixed, it goes through; a cancelled confirmation returns to the editor as it was.
        mapping.value = "fast-mini > local-llama"
        await pilot.click("#editor-propose")
        await wait_for(pilot, lambda: _confirm(app) is not None, "the confirmation")
        await pilot.press("escape")
        await wait_for(pilot, lambda: _editor(app) is editor, "back in the editor")
        assert mapping.value == "fast-mini > local-llama"
        assert not editor.query_one("#editor-propose", Button).disabled
        assert link.submitted == []


async def test_an_emergency_edit_needs_the_typed_word_and_a_reason() -> None:
    link = FakeLink([make_snapshot()])
    async with fake_console(link, actor="dave") as (app, pilot):
        await pilot.press("m")
        await wait_for(pilot, lambda: _editor(app) is not None, "the editor")
        editor = _editor(app)
        assert editor is not None
        editor.query_one("#editor-mapping", Input).value = "local-llama > fast-mini"
        editor.query_one("#editor-emergency", Checkbox).value = True
        await pilot.click("#editor-propose")

        await wait_for(pilot, lambda: _confirm(app) is not None, "the confirmation")
        dialog = _confirm(app)
        assert dialog is not None
        assert "applies release r1 to all traffic now" in _text(dialog.query_one("#dialog-summary"))
        warning = _text(dialog.query_one("#dialog-warning"))
        assert "Type emergency to apply this to all traffic now" in warning
        confirm = dialog.query_one("#confirm", Button)
        reason = dialog.query_one("#dialog-reason", Input)
        reason.value = "fast-mini is down for everyone"
        await pilot.pause()
        assert confirm.disabled, "a reason without the word is not enough"
        await pilot.press(*"emergency")
        assert not confirm.disabled
        reason.value = "  "
        await pilot.pause()
        assert confirm.disabled, "nor is the word without a reason"
        reason.value = "fast-mini is down for everyone"
        await pilot.pause()
        await pilot.press("enter")

        await wait_for(pilot, lambda: link.submitted, "the submit")
        expected = EditTier("low", "local-llama > fast-mini", "", True)
        assert link.submitted == [(expected, "dave")]
        assert link.reasons == ["fast-mini is down for everyone"]
        await wait_for(pilot, lambda: _editor(app) is None, "the editor to close")
        await wait_for(
            pilot, lambda: app.snapshot is not None and app.snapshot.release == "r1", "r1 serving"
        )


async def test_read_only_refuses_the_rollout_keys_and_commands() -> None:
    link = FakeLink([rollout_snapshot()])
    async with fake_console(link, read_only=True) as (app, pilot):
        for action in ("edit_tier", "advance", "rollback"):
            assert app.check_action(action, ()) is False, f"{action} is offered"
        shown = {binding.action for _, binding, _, _ in app.active_bindings.values()}
        assert not shown & {"edit_tier", "advance", "rollback"}
        await pilot.press("m", "a", "b")
        await pilot.pause()
        assert _editor(app) is None and _confirm(app) is None

        for line in ("advance", "rollback", "edit low"):
            await run_command(pilot, line)
        await pilot.pause()
        assert _editor(app) is None and _confirm(app) is None
        messages = _messages(app)
        for verb in ("advance", "rollback", "edit"):
            assert f":{verb} is refused: read-only" in messages
        assert link.previewed == [] and link.submitted == []
        assert "next: advance to 5% (override needed) · read-only" in _pane(app)
        assert "advance" not in app.query_one("#command-line", Input).placeholder


async def test_rollout_keys_reach_the_command_palette_only_when_possible() -> None:
    async with fake_console(FakeLink([make_snapshot()])) as (app, _):
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert (
            "Edit a tier's mapping and propose it as a release (staged rollout or emergency)"
            in titles
        )
        assert not any(title.startswith(("Advance", "Roll the rollout")) for title in titles)
    async with fake_console(FakeLink([rollout_snapshot()])) as (app, _):
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert any(title.startswith("Advance the rollout") for title in titles)
        assert any(title.startswith("Roll the rollout back") for title in titles)
