"""`AuditTable`: the operator event log, oldest at the top and the newest at the bottom."""

from __future__ import annotations

from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.live_table import Cell, LiveTable, Row
from engine.snapshot import AuditView, Snapshot

GOOD_RESULTS = frozenset({"applied", "ok"})
BAD_RESULTS = frozenset({"refused", "failed", "error"})

COLUMNS = (
    ("time", "time", 8),
    ("actor", "who", 8),
    ("action", "action", 18),
    ("result", "result", 6),
    ("summary", "summary", None),
)


def _row(entry: AuditView) -> Row:
    action = f"{entry.action} {entry.target}" if entry.target else entry.action
    result: Cell = entry.result
    if entry.result in GOOD_RESULTS:
        result = (entry.result, "healthy")
    elif entry.result in BAD_RESULTS:
        result = (entry.result, "bad")
    return (
        str(entry.id),
        (fmt.clock_time(entry.at), entry.actor, action, result, entry.summary),
    )


class AuditTable(LiveTable):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(COLUMNS, id="audit")
        self.border_title = "events"

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is None or not self.is_mounted:
            return
        changed = self.sync([_row(entry) for entry in reversed(snapshot.audit)])
        if not self.has_focus and (changed or self.scroll_y != self.max_scroll_y):
            self.scroll_end(animate=False, immediate=False)
