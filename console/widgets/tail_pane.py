"""`TailPane`: the live request tail with a substring filter.

The newest request is at the bottom and the table follows it unless it has focus (so an
operator reading a row is not scrolled away). The filter matches, case-insensitively, any
substring of a row's cells (those a narrow table hides included) plus its tenant, model and
request id.

Each row shows why the request got its tier (``task``, ``rule:long``, ``default``, ...) and its
path: the deployments tried, in order, joined by `PATH_SEPARATOR`; the last one answered when
the request succeeded, and a path of more than one is a fallback. The path takes whatever width
is left; on a narrow table the tokens and then the reason give way to it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.reactive import var
from textual.widgets import Input

from console.widgets import formatting as fmt
from console.widgets.live_table import Cell, Column, LiveTable, Row
from engine.snapshot import RequestView, Snapshot

PATH_SEPARATOR = "\u203a"
"""A single right-pointing angle quote: one cell, so a path of three still fits a narrow tail."""

COLUMNS = (
    Column("time", "time", 8),
    Column("tier", "tier", 8),
    Column("why", "why", 10, drop=1),
    Column("status", "status", 14),
    Column("latency", "latency", 7),
    Column("tokens", "tokens", 11, drop=2),
    Column("path", "path", 24, fill=True),
)


def path_text(request: RequestView) -> str:
    """The deployments tried, in order; the serving deployment alone when there was no attempt."""
    if request.path:
        return PATH_SEPARATOR.join(request.path)
    return request.deployment or fmt.UNKNOWN


def _cells(request: RequestView) -> tuple[Cell, ...]:
    fell_back = len(request.path) > 1
    if request.outcome != "ok":
        state = "bad"
    elif fell_back:
        state = "warn"
    else:
        state = "healthy"
    tokens = f"{fmt.count(request.input_tokens)}→{fmt.count(request.output_tokens)}"
    path = path_text(request)
    return (
        fmt.clock_time(request.at),
        request.tier or fmt.UNKNOWN,
        request.tier_reason or fmt.UNKNOWN,
        (f"{request.status} {request.outcome}", state),
        fmt.millis(request.latency_ms),
        tokens,
        (path, "warn") if fell_back else path,
    )


def _plain(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def rows(snapshot: Snapshot, needle: str = "") -> list[Row]:
    """Tail rows, oldest first, keeping only those that contain ``needle`` (any case)."""
    needle = needle.strip().lower()
    out: list[Row] = []
    for request in reversed(snapshot.recent):
        cells = _cells(request)
        if needle:
            haystack = " ".join(
                [
                    *map(_plain, cells),
                    request.tenant,
                    request.model,
                    request.request_id,
                ]
            ).lower()
            if needle not in haystack:
                continue
        out.append((request.request_id, cells))
    return out


class TailPane(Vertical):
    snapshot: var[Snapshot | None] = var(None)
    filter_text: var[str] = var("")

    def __init__(self) -> None:
        super().__init__(id="tail-pane")
        self._title = "requests"
        self.border_title = self._title

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter the requests (enter keeps, esc clears)", id="tail-filter")
        yield LiveTable(COLUMNS, id="tail")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#tail", LiveTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#tail-filter", Input)

    def on_mount(self) -> None:
        self.filter_input.display = False

    def start_filter(self) -> None:
        """Show the filter line and give it focus."""
        self.filter_input.display = True
        self.filter_input.focus()

    def clear_filter(self) -> None:
        """Drop the filter and hide its line."""
        self.filter_input.value = ""
        self.filter_text = ""
        self.filter_input.display = False

    @property
    def editing(self) -> bool:
        return self.filter_input.has_focus

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter_text = event.value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.filter_input.display = bool(self.filter_text)
        self.table.focus()

    def watch_filter_text(self) -> None:
        self._render_rows()

    def watch_snapshot(self) -> None:
        self._render_rows()

    def _render_rows(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        shown = rows(snapshot, self.filter_text)
        table = self.table
        changed = table.sync(shown)
        if self.filter_text.strip():
            title = f"requests · /{escape(self.filter_text.strip())} · {len(shown)} of {len(snapshot.recent)}"
        else:
            title = "requests"
        if title != self._title:
            # Setting a border title repaints the pane, even when it is the same title.
            self._title = title
            self.border_title = title
        if not table.has_focus and (changed or table.scroll_y != table.max_scroll_y):
            table.scroll_end(animate=False, immediate=False)
