"""`StatusHeader`: where the engine is, what it is doing, which modes are on, how old the data is.

One line: listen address, engine state, requests/s, and the release on the left
(``release r3 · no rollout``, or during a rollout the baseline, the candidate and its stage:
``release r3 → r4 · canary (1%)``, with a HALTED badge while the rollout is halted); today's
alerts as a count with the worst severity's glyph (``▲ 2 alerts``, coloured by that severity),
mode badges (SAFE MODE, READ-ONLY, PAUSED, ATTACHED) and the data age on the right. The alert
count and the rollout stage show in every layout, so a screen too small for the alerts and
rollout panes still says that something was raised and where the rollout stands: the summary
is the longest of its forms that fits (`summary_forms`), dropping the engine state, then the
requests/s, then the word "release" (or, with no rollout, "no rollout").

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
from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.containers import Horizontal
from textual.reactive import var
from textual.widgets import Label

from console.widgets import formatting as fmt
from console.widgets.alerts_pane import todays, worst
from console.widgets.formatting import age, rate
from engine.snapshot import RolloutView, Snapshot

ERROR_CHARS = 60
"""The longest link error the header shows; the rest is cut with an ellipsis."""


def shorten_error(error: str, label: str, limit: int = ERROR_CHARS) -> str:
    """``error`` on one line, without the engine's address (the header shows it already)."""
    text = " ".join(error.split())
    _, found, rest = text.partition(f"{label}: ")
    if found and rest:
        text = rest
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def stage_label(rollout: RolloutView) -> str:
    """The rollout's stage with its share of traffic: ``canary (1%)``, ``5%``, ``internal``.

    The share is the stage's configured one, also while halted (the HALTED badge says that no
    traffic is on the candidate); a stage named after its share does not repeat it, and the
    internal stage (0%: internal tenants only) has none to show.
    """
    percent = stage_percent(rollout)
    shown = f"{percent:g}%"
    if percent <= 0 or shown in rollout.stage:
        return rollout.stage
    return f"{rollout.stage} ({shown})"


def stage_percent(rollout: RolloutView) -> float:
    """The configured share of traffic of the rollout's current stage, 0..100."""
    if 0 <= rollout.stage_index < len(rollout.stages):
        return rollout.stages[rollout.stage_index].percent
    return rollout.target_percent


def release_label(snapshot: Snapshot) -> str:
    """``release r3 · no rollout`` or ``release r3 → r4 · canary (1%)``."""
    rollout = snapshot.rollout
    if rollout is None:
        return f"release {snapshot.release} · no rollout"
    return f"release {snapshot.release} → {rollout.release} · {stage_label(rollout)}"


def summary_forms(snapshot: Snapshot) -> tuple[str, ...]:
    """The header's summary, longest first, each shorter one dropping the least needed part."""
    release = release_label(snapshot)
    rps = f"{rate(snapshot.rps)} req/s"
    state = snapshot.engine_state
    # The engine state is news only when it is not running; it stays in every form then.
    lead = "" if state == "running" else f"{state} · "
    # At its shortest: the releases and the stage during a rollout, else the release alone.
    shortest = (
        f"{snapshot.release} → {snapshot.rollout.release} · {stage_label(snapshot.rollout)}"
        if snapshot.rollout is not None
        else f"release {snapshot.release}"
    )
    forms = (
        f"{state} · {rps} · {release}",
        f"{lead}{rps} · {release}",
        f"{lead}{release}",
        f"{lead}{shortest}",
    )
    return tuple(dict.fromkeys(forms))


class Summary(Label):
    """A label that shows the longest of its forms that fits its width (the last one, cut
    with an ellipsis, when none does). It chooses when it renders, so a new width (the
    terminal, a badge or the age beside it) needs no help from the header."""

    def __init__(self) -> None:
        super().__init__("", id="summary", markup=False)
        self._forms: tuple[str, ...] = ("",)

    def show(self, forms: tuple[str, ...]) -> None:
        if forms != self._forms:
            self._forms = forms
            self.refresh()

    def render(self) -> RenderResult:
        width = self.content_size.width
        fits = (form for form in self._forms if not width or cell_len(form) <= width)
        return Text(next(fits, self._forms[-1]))


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
        yield Summary()
        yield Label("HALTED", id="badge-halted", classes="badge -halted")
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
        rollout = snapshot.rollout if snapshot is not None else None
        self.query_one("#badge-halted").display = rollout is not None and rollout.state == "halted"
        self._render_alerts(snapshot)
        summary = self.query_one(Summary)
        if snapshot is None:
            summary.show(("",))
            return
        summary.show(summary_forms(snapshot))
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
