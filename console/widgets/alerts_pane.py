"""`AlertsPane`: the engine's newest alerts, newest first: budget thresholds, spend rate,
unpriced traffic and fallback-ratio spikes.

Each alert shows when it was raised (the time of day for today's, the date for older ones), its
severity as glyph, word and colour (● info, ▲ warning, ✖ critical) and its message, wrapped
under it on at most `MESSAGE_LINES` lines. What does not fit the pane is cut from the bottom, so
the newest alerts always show. With no alerts the pane says so.
"""

from __future__ import annotations

import textwrap
import time

from rich.text import Text
from textual import events
from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.state_text import StateText
from engine.snapshot import AlertView, Snapshot

MESSAGE_LINES = 3
INDENT = "  "
MIN_BESIDE = 16
"""Cells the message needs beside the severity to start there rather than on the next line."""


def same_day(a: float, b: float) -> bool:
    """True when ``a`` and ``b`` fall on the same UTC day (alerts are raised once per UTC day)."""
    return time.gmtime(a)[:3] == time.gmtime(b)[:3]


def todays(snapshot: Snapshot) -> list[AlertView]:
    """The snapshot's alerts raised today (UTC), newest first."""
    return [a for a in snapshot.alerts if same_day(a.at, snapshot.taken_at)]


def worst(alerts: list[AlertView]) -> str | None:
    """The most severe level among ``alerts``, or None when there are none."""
    levels = [fmt.SEVERITIES.index(a.severity) for a in alerts if a.severity in fmt.SEVERITIES]
    return fmt.SEVERITIES[max(levels)] if levels else None


def when(alert: AlertView, now: float) -> str:
    """``08:53:20`` for an alert of today, ``Oct 08`` for an older one."""
    if same_day(alert.at, now):
        return fmt.clock_time(alert.at)
    return time.strftime("%b %d", time.localtime(alert.at)).ljust(8)


class AlertsPane(StateText):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(id="alerts")
        self._title = "alerts"
        self.border_title = self._title

    def watch_snapshot(self) -> None:
        self.redraw()

    def on_resize(self, event: events.Resize) -> None:
        # Messages wrap to the width; re-wrap once the new size is laid out.
        self.call_after_refresh(self.redraw)

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        today = len(todays(snapshot))
        title = f"alerts · {today} today" if today else "alerts"
        if title != self._title:
            # Setting a border title repaints the pane, even when it is the same title.
            self._title = title
            self.border_title = title
        if not snapshot.alerts:
            self.show(self.styled("no alerts", "muted"))
            return
        width = self.content_size.width
        text = Text()
        for index, alert in enumerate(snapshot.alerts):
            if index:
                text.append("\n")
            text.append_text(self._alert(alert, snapshot.taken_at, width))
        text.no_wrap = True
        text.overflow = "ellipsis"
        self.show(text)

    def _alert(self, alert: AlertView, now: float, width: int) -> Text:
        head = f"{when(alert, now)} "
        level = fmt.severity(alert.severity)
        text = Text(head)
        known = alert.severity in fmt.SEVERITIES
        text.append_text(self.styled(level, f"alert-{alert.severity}" if known else "warn"))
        lead = len(head) + len(level) + 2
        message = " ".join(alert.message.split())
        if not width or lead + len(message) <= width:
            text.append(f"  {message}")
            return text
        # Start the message beside the severity when a few words fit there, else below it.
        first_room = width - lead
        start = " " * lead if first_room >= MIN_BESIDE else None
        lines = textwrap.wrap(
            message,
            width,
            initial_indent=start or INDENT,
            subsequent_indent=INDENT,
            max_lines=MESSAGE_LINES,
            placeholder=" …",
        )
        if start is not None and lines:
            text.append("  " + lines.pop(0)[lead:])
        for line in lines:
            text.append("\n" + line)
        return text
