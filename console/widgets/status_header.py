"""`StatusHeader`: where the engine is, what it is doing, which modes are on, how old the data is.

One line: listen address, engine state, release and rollout stage, requests/s on the left;
today's alerts as a count with the worst severity's glyph (``▲ 2 alerts``, coloured by that
severity), mode badges (SAFE MODE, READ-ONLY, PAUSED, ATTACHED) and the data age on the right.
The alert count shows in every layout, so a screen too short for the alerts pane still says
that something was raised.

When the engine stops delivering snapshots the header takes the ``-stale`` class and says so,
followed by why when the link knows (an attached engine that cannot be reached), shortened to
fit, in place of the summary.

The header is re-rendered by the app's once-a-second age tick as well as by every snapshot, so
it only touches a label whose text changed, and asks for a layout only when a label sized to
its text (``#where``, the alert badge, the age) changes width.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import var
from textual.widgets import Label

from console.widgets import formatting as fmt
from console.widgets.alerts_pane import todays, worst
from console.widgets.formatting import age, rate
from engine.snapshot import Snapshot

ERROR_CHARS = 60
"""The longest link error the header shows; the rest is cut with an ellipsis."""


def shorten_error(error: str, label: str, limit: int = ERROR_CHARS) -> str:
    """``error`` on one line, without the engine's address (the header shows it already)."""
    text = " ".join(error.split())
    _, found, rest = text.partition(f"{label}: ")
    if found and rest:
        text = rest
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current the console's picture is, as of the app's last tick."""

    shown_age: float | None
    """Seconds since the snapshot on screen arrived; None before the first one."""
    silent_for: float
    """Seconds since the link last delivered a snapshot (or since start, before the first)."""
    stale: bool
    """True when ``silent_for`` exceeds a few refresh intervals."""
    link_error: str | None = None
    """Why the link stopped receiving snapshots, when it says; None while it works."""


class StatusHeader(Horizontal):
    snapshot: var[Snapshot | None] = var(None)
    freshness: var[Freshness | None] = var(None)
    paused: var[bool] = var(False)

    def __init__(self, *, label: str, read_only: bool, attached: bool) -> None:
        super().__init__(id="header")
        self._label = label
        self._read_only = read_only
        self._attached = attached
        self._texts: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Label("routedeck", id="brand")
        yield Label(self._label, id="where", markup=False)
        yield Label("", id="summary", markup=False)
        yield Label("", id="badge-alerts", classes="badge", markup=False)
        yield Label("SAFE MODE", id="badge-safe", classes="badge -safe")
        yield Label("READ-ONLY", id="badge-read-only", classes="badge -read-only")
        yield Label("PAUSED", id="badge-paused", classes="badge -paused")
        yield Label("ATTACHED", id="badge-attached", classes="badge -attached")
        yield Label("waiting for the engine", id="age", markup=False)
        yield Label("", id="link-error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#badge-read-only").display = self._read_only
        self.query_one("#badge-attached").display = self._attached
        self._render_snapshot(self.snapshot)
        self._render_age()
        self.query_one("#badge-paused").display = self.paused

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if self.is_mounted:
            self._render_snapshot(snapshot)

    def watch_freshness(self) -> None:
        if self.is_mounted:
            self._render_age()

    def watch_paused(self, paused: bool) -> None:
        if self.is_mounted:
            self.query_one("#badge-paused").display = paused
            self._render_age()

    def _put(self, label_id: str, text: str, *, sized: bool = False) -> None:
        """Show ``text`` in the label ``#label_id`` unless it shows it already; ``sized`` for a
        label as wide as its text, whose new width needs a layout."""
        before = self._texts.get(label_id)
        if text == before:
            return
        self._texts[label_id] = text
        layout = sized and (before is None or cell_len(before) != cell_len(text))
        self.query_one(f"#{label_id}", Label).update(text, layout=layout)

    def _render_snapshot(self, snapshot: Snapshot | None) -> None:
        self.query_one("#badge-safe").display = bool(snapshot and snapshot.safe_mode)
        self._render_alerts(snapshot)
        if snapshot is None:
            self._put("summary", "")
            return
        if snapshot.rollout is None:
            release = f"release {snapshot.release} · no rollout"
        else:
            release = f"release {snapshot.rollout.release} · {snapshot.rollout.stage}"
        self._put("summary", f"{snapshot.engine_state} · {rate(snapshot.rps)} req/s · {release}")
        if snapshot.listen and not self._attached:
            self._put("where", snapshot.listen, sized=True)

    def _render_alerts(self, snapshot: Snapshot | None) -> None:
        badge = self.query_one("#badge-alerts", Label)
        alerts = todays(snapshot) if snapshot is not None else []
        level = worst(alerts)
        badge.display = level is not None
        for severity in fmt.SEVERITIES:
            badge.set_class(severity == level, f"-{severity}")
        if level is not None:
            noun = "alert" if len(alerts) == 1 else "alerts"
            self._put(
                "badge-alerts", f"{fmt.SEVERITY_GLYPHS[level]} {len(alerts)} {noun}", sized=True
            )

    def _render_age(self) -> None:
        label = self.query_one("#age", Label)
        fresh = self.freshness
        stale = bool(fresh and fresh.stale)
        self.set_class(stale, "-stale")
        label.set_class(stale, "-stale")
        why = fresh.link_error if fresh is not None and stale else None
        self.query_one("#link-error").display = bool(why)
        self._put("link-error", shorten_error(why, self._label) if why else "")
        # The error takes the summary's place: its numbers are as old as the data.
        self.query_one("#summary").display = not why
        if fresh is None or (fresh.shown_age is None and not stale):
            text = "waiting for the engine"
        elif stale:
            text = f"STALE · no data for {age(fresh.silent_for)}"
        elif self.paused:
            text = f"showing data {age(fresh.shown_age)} old"
        else:
            text = f"data {age(fresh.shown_age)} old"
        self._put("age", text, sized=True)
