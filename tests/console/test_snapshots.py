"""SVG snapshots of the console's key states (pytest-textual-snapshot).

Every screen is rendered from hand-built snapshots with fixed numbers and timestamps, a frozen
clock, UTC wall-clock times and no cursor blink, so the SVGs are identical on every run.
Regenerate after an intended change with ``pytest tests/console --snapshot-update`` and look at
the report before committing the new files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from textual.pilot import Pilot
from textual.widgets import Input

from console.app import RouteDeckApp
from engine.snapshot import Snapshot
from tests.console.fakes import (
    FakeLink,
    budget_snapshot,
    degraded_snapshot,
    drained_snapshot,
    halted_snapshot,
    make_snapshot,
    rollout_snapshot,
    stranding_effect,
)

FROZEN = 5_000.0


class SnapCompare(Protocol):
    def __call__(
        self,
        app: RouteDeckApp,
        press: Sequence[str] = (),
        terminal_size: tuple[int, int] = (80, 24),
        run_before: Callable[[Pilot[Any]], Awaitable[None] | None] | None = None,
    ) -> bool: ...


class Clock:
    """A clock that only moves when a test moves it."""

    def __init__(self, now: float = FROZEN) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _app(link: FakeLink, clock: Callable[[], float] | None = None, **options: Any) -> RouteDeckApp:
    return RouteDeckApp(link, clock=clock or Clock(), **options)


def _settle(*keys: str, after: Callable[[RouteDeckApp], None] | None = None) -> Any:
    """A ``run_before`` that waits for the first snapshot, presses ``keys``, and stills carets."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, RouteDeckApp)
        for _ in range(200):
            if app.snapshot is not None:
                break
            await pilot.pause(0.01)
        assert app.snapshot is not None, "the fake link delivered no snapshot"
        await pilot.press(*keys)
        for _ in range(3):
            await pilot.pause()
        if after is not None:
            after(app)
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    return run_before


def _one(snapshot: Snapshot, **options: Any) -> FakeLink:
    return FakeLink([snapshot], **options)


def test_healthy_80x24(snap_compare: SnapCompare) -> None:
    """All providers healthy at the smallest supported size: rollout and events give way."""
    assert snap_compare(_app(_one(make_snapshot())), run_before=_settle(), terminal_size=(80, 24))


def test_healthy_160x48(snap_compare: SnapCompare) -> None:
    """All providers healthy on a large terminal: every pane, tiers beside the providers."""
    assert snap_compare(_app(_one(make_snapshot())), run_before=_settle(), terminal_size=(160, 48))


def test_spend_and_alerts_160x48(snap_compare: SnapCompare) -> None:
    """A day under budget pressure on a large terminal: the spend pane with dollars as a lower
    bound, the loud unpriced line, cache figures, budget bars at 85% (warning), 125% (error) and
    60%, a tenant without a budget; the alerts pane with one alert of each severity."""
    assert snap_compare(
        _app(_one(budget_snapshot())), run_before=_settle(), terminal_size=(160, 48)
    )


def test_spend_and_alerts_80x24(snap_compare: SnapCompare) -> None:
    """The same at the smallest size: the spend summary line and the unpriced warning beside
    the fallback; the alerts pane gives way to the header's "✖ 3 alerts"."""
    assert snap_compare(_app(_one(budget_snapshot())), run_before=_settle(), terminal_size=(80, 24))


def test_spend_and_alerts_100x40(snap_compare: SnapCompare) -> None:
    """Narrow and tall: fallback over the alerts, beside the whole spend pane, whose table
    heads each group in place of the by column."""
    assert snap_compare(
        _app(_one(budget_snapshot())), run_before=_settle(), terminal_size=(100, 40)
    )


def test_degraded(snap_compare: SnapCompare) -> None:
    """sim-fast down (✖, error colour) with its breaker open, sim-local degraded (▲),
    balanced-sonnet half-open (◐); fallback ratio high."""
    assert snap_compare(
        _app(_one(degraded_snapshot()), demo=True), run_before=_settle(), terminal_size=(120, 40)
    )


def test_degraded_80x24(snap_compare: SnapCompare) -> None:
    """Breakers at the smallest size: fast-mini's state cell says ⊘ open 12s, balanced-sonnet's
    ◐ half-open; each tier on one line with short skip notes; the tail keeps the path."""
    assert snap_compare(
        _app(_one(degraded_snapshot()), demo=True), run_before=_settle(), terminal_size=(80, 24)
    )


def test_degraded_160x48(snap_compare: SnapCompare) -> None:
    """Breakers on a large terminal: a breaker column with the time left, the tiers with why
    fast-mini is skipped, and the tail with the tier reason, tokens and path."""
    assert snap_compare(
        _app(_one(degraded_snapshot()), demo=True), run_before=_settle(), terminal_size=(160, 48)
    )


def test_drained(snap_compare: SnapCompare) -> None:
    """sim-fast drained (⏸, muted), its share moved to local-llama, the drain in the events."""
    assert snap_compare(
        _app(_one(drained_snapshot())), run_before=_settle(), terminal_size=(120, 40)
    )


def test_confirm_drain(snap_compare: SnapCompare) -> None:
    """`d` on sim-fast: the dialog states the effect and its details; Cancel has focus."""
    assert snap_compare(
        _app(_one(make_snapshot())), run_before=_settle("d"), terminal_size=(100, 30)
    )


def test_confirm_drain_that_strands_a_tier(snap_compare: SnapCompare) -> None:
    """A drain that leaves tier recovery with nothing healthy: type the name to confirm."""
    link = _one(make_snapshot(), effect_for=stranding_effect)
    assert snap_compare(_app(link), run_before=_settle("d"), terminal_size=(100, 30))


def test_help(snap_compare: SnapCompare) -> None:
    """`?`: every key and command from the registry, drills marked as demo-only."""
    assert snap_compare(
        _app(_one(make_snapshot())), run_before=_settle("question_mark"), terminal_size=(100, 30)
    )


def test_paused(snap_compare: SnapCompare) -> None:
    """`p`: the PAUSED badge, and the header says how old the frozen picture is."""
    clock = Clock()

    def later(app: RouteDeckApp) -> None:
        clock.now += 1.4
        app.update_age()

    assert snap_compare(
        _app(_one(make_snapshot()), clock),
        run_before=_settle("p", after=later),
        terminal_size=(100, 30),
    )


def test_stale(snap_compare: SnapCompare) -> None:
    """No snapshot for 42 s: the header turns to the error colour and says STALE."""
    clock = Clock()

    def much_later(app: RouteDeckApp) -> None:
        clock.now += 42
        app.update_age()

    assert snap_compare(
        _app(_one(make_snapshot()), clock),
        run_before=_settle(after=much_later),
        terminal_size=(100, 30),
    )


def test_stale_with_link_error(snap_compare: SnapCompare) -> None:
    """An attached engine that stopped answering: STALE, and beside it why, shortened."""
    clock = Clock()
    url = "http://10.0.0.7:8787"
    link = _one(make_snapshot(), label=url, attached=True)

    def unreachable(app: RouteDeckApp) -> None:
        link.last_error = f"cannot reach routedeck at {url}: All connection attempts failed"
        clock.now += 42
        app.update_age()

    assert snap_compare(
        _app(link, clock),
        run_before=_settle(after=unreachable),
        terminal_size=(100, 30),
    )


def test_attached_read_only(snap_compare: SnapCompare) -> None:
    """Attached to a remote engine, read-only: ATTACHED and READ-ONLY badges, no change keys."""
    link = _one(make_snapshot(safe_mode=True), label="http://10.0.0.7:8787", attached=True)
    assert snap_compare(_app(link, read_only=True), run_before=_settle(), terminal_size=(100, 30))


def test_rollout_in_progress(snap_compare: SnapCompare) -> None:
    """r4 in its canary stage on a wide terminal: the rollout takes the spend table's place;
    the ladder, RUNNING, the share, both arms' signals with the errors gate ✖ failing and the
    cost gate ○ waiting with their whys, and `a` dimmed: an override is needed."""
    assert snap_compare(
        _app(_one(rollout_snapshot())), run_before=_settle(), terminal_size=(120, 40)
    )


def test_rollout_halted_160x48(snap_compare: SnapCompare) -> None:
    """The failing gate halted the rollout: HALTED in the header and loudly in the pane, with
    why; the current stage marked ⏸ and `a` offers to resume."""
    assert snap_compare(
        _app(_one(halted_snapshot())), run_before=_settle(), terminal_size=(160, 48)
    )


def test_rollout_80x24(snap_compare: SnapCompare) -> None:
    """At the smallest size the rollout pane gives way; the header keeps the release, the
    candidate and its stage, and the footer offers a and b."""
    assert snap_compare(
        _app(_one(rollout_snapshot())), run_before=_settle(), terminal_size=(80, 24)
    )


def test_confirm_override(snap_compare: SnapCompare) -> None:
    """`a` while a gate fails: the override dialog says which gate, asks to type override and
    for a reason; Confirm stays disabled."""
    assert snap_compare(
        _app(_one(rollout_snapshot())), run_before=_settle("a"), terminal_size=(100, 30)
    )


def test_edit_tier(snap_compare: SnapCompare) -> None:
    """`m`: the editor on tier low, its mapping prefilled from the baseline, the note and the
    emergency box empty."""
    assert snap_compare(
        _app(_one(rollout_snapshot())), run_before=_settle("m"), terminal_size=(100, 30)
    )
