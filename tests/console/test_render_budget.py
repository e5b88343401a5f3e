"""The console redraws only what changed: nothing between snapshots, nothing for a snapshot that
shows the same, and only the age label for the once-a-second age tick."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import DataTable, Label

from console.app import RouteDeckApp
from console.widgets.provider_table import ProviderTable, provider_key
from tests.console.conftest import wait_for
from tests.console.fakes import T0, FakeLink, Stats, make_snapshot

SIZE = (160, 48)
"""Wide and tall: every pane and both tables are on screen."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Redraws:
    """Every refresh asked of a widget (a layout counted apart) and every table row or cell
    written, while `counting`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.refreshes: Counter[str] = Counter()
        self.layouts: Counter[str] = Counter()
        self.table_writes: Counter[str] = Counter()
        self._on = False
        refresh = Widget.refresh

        def counted_refresh(
            widget: Widget,
            *regions: Any,
            repaint: bool = True,
            layout: bool = False,
            recompose: bool = False,
        ) -> Widget:
            if self._on:
                self.refreshes[_name(widget)] += 1
                if layout or recompose:
                    self.layouts[_name(widget)] += 1
            return refresh(widget, *regions, repaint=repaint, layout=layout, recompose=recompose)

        monkeypatch.setattr(Widget, "refresh", counted_refresh)
        for method in ("add_row", "remove_row", "update_cell"):
            monkeypatch.setattr(DataTable, method, self._counting(getattr(DataTable, method)))

    def _counting(self, method: Any) -> Any:
        def counted(table: DataTable[Any], *args: Any, **kwargs: Any) -> Any:
            if self._on:
                self.table_writes[_name(table)] += 1
            return method(table, *args, **kwargs)

        return counted

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.refreshes.clear()
        self.layouts.clear()
        self.table_writes.clear()
        self._on = True
        try:
            yield
        finally:
            self._on = False


def _name(widget: Widget) -> str:
    return f"{type(widget).__name__}#{widget.id}" if widget.id else type(widget).__name__


@asynccontextmanager
async def settled_console(
    link: FakeLink, clock: Clock
) -> AsyncIterator[tuple[RouteDeckApp, Pilot[None]]]:
    """The console with its first snapshot on screen and every follow-up redraw done."""
    app = RouteDeckApp(link, clock=clock, refresh_interval=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None, "the first snapshot")
        for _ in range(5):
            await pilot.pause()
        yield app, pilot


async def _deliver(pilot: Pilot[None], link: FakeLink, snapshot: Any) -> None:
    """Push ``snapshot`` and wait until the app has taken it and had its turn to redraw."""
    before = link.delivered
    link.push(snapshot)
    await wait_for(pilot, lambda: link.delivered > before, "the snapshot to be taken")
    for _ in range(3):
        await pilot.pause()


async def test_nothing_redraws_between_snapshots_or_for_one_that_shows_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redraws = Redraws(monkeypatch)
    clock = Clock()
    link = FakeLink([make_snapshot()])
    async with settled_console(link, clock) as (app, pilot):
        age = app.query_one("#age", Label)
        assert str(age.render()) == "data 0s old"

        # Age ticks within the same second: the data's age changes, what the header says does not.
        with redraws.counting():
            for _ in range(4):
                clock.now += 0.1
                app.update_age()
                await pilot.pause()
        assert redraws.refreshes == {}, "an age tick that changes no text redraws nothing"
        assert str(age.render()) == "data 0s old"

        # The same snapshot again, then what an idle engine publishes: a new sequence number
        # and time, and the same figures.
        with redraws.counting():
            await _deliver(pilot, link, make_snapshot())
            await _deliver(
                pilot, link, dataclasses.replace(make_snapshot(), seq=2, taken_at=T0 + 1)
            )
        assert app.snapshot is not None and app.snapshot.seq == 2
        assert redraws.refreshes == {}, "a snapshot that shows the same redraws nothing"
        assert redraws.table_writes == {}, "no table row or cell is rewritten"

        # The tick that moves the age to the next second repaints the age label alone.
        with redraws.counting():
            clock.now += 1.0
            app.update_age()
            await pilot.pause()
        assert str(age.render()) == "data 1s old"
        assert set(redraws.refreshes) == {"Label#age"}
        assert redraws.layouts == {}, "a label of the same width needs no layout"

        # A snapshot that changes two figures redraws the panes that show them, and only the
        # cells that changed: the p95 of sim-fast and of its deployment.
        slower: Stats = ("healthy", 0.46, 300.0, 0.0, 0.0, 0.0, 3)
        with redraws.counting():
            await _deliver(
                pilot, link, make_snapshot({"fast-mini": slower}, seq=3, fallback_ratio=0.05)
            )
        assert app.query_one(ProviderTable).cell_text(provider_key("sim-fast"), "p95") == "300ms"
        assert redraws.table_writes == {"ProviderTable#providers": 2}
        assert redraws.refreshes.keys() <= {
            "ProviderTable#providers",
            "FallbackPane#fallback",
            "Label#age",
            "Summary#summary",
        }
        assert redraws.refreshes["FallbackPane#fallback"] == 1
        assert redraws.layouts == {}, "nothing changed size"
