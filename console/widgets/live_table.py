"""`LiveTable`: a DataTable that follows a changing list of rows by key.

Panes describe the rows they want (a stable key and the cells, in order) and call `sync`; the
table then removes rows that went away, appends new ones and rewrites only the cells whose
value changed, inside one ``batch_update``. It never clears itself, so the cursor, the scroll
position and unchanged cells survive every refresh.

A cell is plain text, or ``(text, state)`` to colour it by state: ``state`` selects the
component class ``live-table--<state>``, styled in ``app.tcss`` with theme variables.

Columns fit the table's width: a `Column` with a ``drop`` rank is left out when the table is
too narrow for every column (the highest rank goes first), and one ``fill`` column takes the
width the others leave. Rows always carry a cell for every column; hidden ones are kept and
shown again when the table widens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.coordinate import Coordinate
from textual.widgets import DataTable

Cell = str | tuple[str, str]
Row = tuple[str, Sequence[Cell]]

STATES = (
    "healthy",
    "degraded",
    "down",
    "drained",
    "idle",
    "muted",
    "warn",
    "bad",
    "strong",
    "open",
    "half-open",
    "budget-ok",
    "budget-watch",
    "budget-high",
    "budget-over",
)

PADDING = 2
"""Cells a DataTable adds around every column (one on each side)."""
SCROLLBAR = 1
"""Kept free for the vertical scrollbar when a fill column sizes itself."""


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int | None
    """Cells wide; None sizes the column to its content; for a fill column, its least width."""
    drop: int = 0
    """0 keeps the column at any width; otherwise, when the table is too narrow, columns are
    dropped highest rank first."""
    fill: bool = False
    """Take the width the other shown columns leave (at most one column, the last)."""


ColumnSpec = Column | tuple[str, str, int | None]
Layout = tuple[tuple[str, int | None], ...]
"""The shown columns as (key, width), in order."""


class LiveTable(DataTable[Text]):
    COMPONENT_CLASSES: ClassVar[set[str]] = DataTable.COMPONENT_CLASSES | {
        f"live-table--{state}" for state in STATES
    }

    def __init__(
        self,
        columns: Sequence[ColumnSpec],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """``columns`` are `Column` values or ``(key, label, width)`` tuples."""
        # The cell's own colour wins over the cursor's, so the selected row keeps its state colour.
        super().__init__(
            id=id,
            classes=classes,
            cursor_type="row",
            zebra_stripes=False,
            cursor_foreground_priority="renderable",
        )
        self._columns_spec = tuple(c if isinstance(c, Column) else Column(*c) for c in columns)
        self._index = {c.key: i for i, c in enumerate(self._columns_spec)}
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._layout: Layout = ()
        self._syncing = False
        self._apply_layout(self._layout_for(None))

    def on_mount(self) -> None:
        self.watch(self.app, "theme", self._theme_changed, init=False)

    def on_resize(self, event: events.Resize) -> None:
        # Changing columns while the resize is being handled is not laid out; do it after.
        self.call_after_refresh(self._fit)

    def _theme_changed(self) -> None:
        # The new theme's variables are resolved on the next refresh, not yet.
        self.call_after_refresh(self._restyle)

    # -- columns ----------------------------------------------------------------------------

    def _layout_for(self, width: int | None) -> Layout:
        """The columns to show in ``width`` cells (None: not laid out yet, so the fewest)."""
        shown = [c for c in self._columns_spec if not c.drop]
        if width is not None:
            shown = list(self._columns_spec)
            while _needs(shown) > width and any(c.drop for c in shown):
                worst = max(shown, key=lambda c: c.drop)
                shown.remove(worst)
        layout: list[tuple[str, int | None]] = []
        for column in shown:
            size = column.width
            if column.fill and width is not None:
                spare = width - SCROLLBAR - _needs(shown)
                size = (column.width or 0) + max(0, spare)
            layout.append((column.key, size))
        return tuple(layout)

    def _fit(self) -> None:
        if not self.is_mounted or not self.size.width:
            return
        layout = self._layout_for(self.size.width)
        if layout != self._layout:
            with self.app.batch_update():
                self._apply_layout(layout)
            self.layout_changed()

    def _apply_layout(self, layout: Layout) -> None:
        # Columns can only be appended, so keep the longest prefix that is already right.
        keep = 0
        while keep < min(len(layout), len(self._layout)) and layout[keep] == self._layout[keep]:
            keep += 1
        for key, _ in self._layout[keep:]:
            self.remove_column(key)
        self._layout = layout
        for key, width in layout[keep:]:
            label = self._columns_spec[self._index[key]].label
            self.add_column(Text(label), width=width, key=key)
            for row, values in self._cells.items():
                cell = self._renderable(values[self._index[key]])
                self.update_cell(row, key, cell, update_width=width is None)

    def layout_changed(self) -> None:
        """Called after columns were shown or hidden; subclasses may re-render their rows."""

    def shows(self, column: str) -> bool:
        """True when ``column`` is on screen at the table's current width."""
        return any(key == column for key, _ in self._layout)

    @property
    def shown_columns(self) -> list[str]:
        return [key for key, _ in self._layout]

    # -- rows -------------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor, or None when the table is empty."""
        if not self.row_count:
            return None
        row = self.cursor_row
        if not 0 <= row < self.row_count:
            return None
        return str(self.ordered_rows[row].key.value)

    def select_key(self, key: str) -> None:
        """Move the cursor to the row with ``key`` if it exists."""
        if key in self._cells:
            self.move_cursor(row=self.get_row_index(key))

    def cell_text(self, key: str, column: str) -> str:
        """The plain text shown in one cell (for tests and callers that read the table)."""
        return self.get_cell(key, column).plain

    def sync(self, rows: Sequence[Row]) -> bool:
        """Make the table show exactly ``rows``, in order, touching only what changed.

        Returns True when anything changed; rows that are already shown as given cost no
        redraw at all.
        """
        wanted = [key for key, _ in rows]
        wanted_set = set(wanted)
        changed = False
        with self.app.batch_update(), self._sync():
            # `_cells` is in display order (rows are only appended), and cheaper than `keys`.
            current = list(self._cells)
            for key in current:
                if key not in wanted_set:
                    self._remove(key)
                    changed = True
            current = [key for key in current if key in wanted_set]
            # Rows can only be appended, so keep the longest prefix that is already in the
            # right order and re-append whatever follows it.
            keep = 0
            while keep < len(current) and current[keep] == wanted[keep]:
                keep += 1
            for key in current[keep:]:
                self._remove(key)
                changed = True
            for index, (key, cells) in enumerate(rows):
                values = tuple(cells)
                if index < keep:
                    changed = self._update(key, values) or changed
                else:
                    self._cells[key] = values
                    self.add_row(*self._shown(values), key=key)
                    changed = True
        return changed

    @contextmanager
    def _sync(self) -> Iterator[None]:
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def watch_hover_coordinate(self, old: Coordinate, value: Coordinate) -> None:
        # Removing a row re-sets the hover coordinate, and refreshing the two hovered cells
        # then sorts every row to find them: for a tail that drops 100 rows a snapshot, most
        # of the sync. A removed row redraws the whole table anyway.
        if not self._syncing:
            super().watch_hover_coordinate(old, value)

    def _shown(self, values: tuple[Cell, ...]) -> list[Text]:
        return [self._renderable(values[self._index[key]]) for key, _ in self._layout]

    def _remove(self, key: str) -> None:
        self.remove_row(key)
        del self._cells[key]

    def _update(self, key: str, values: tuple[Cell, ...]) -> bool:
        """Rewrite the cells of row ``key`` that changed; True when any did."""
        old = self._cells[key]
        if old == values:
            return False
        for column, _ in self._layout:
            index = self._index[column]
            if old[index] != values[index]:
                self.update_cell(key, column, self._renderable(values[index]))
        self._cells[key] = values
        return True

    def _renderable(self, cell: Cell) -> Text:
        if isinstance(cell, str):
            return Text(cell, no_wrap=True, overflow="ellipsis")
        text, state = cell
        style = self.get_component_rich_style(f"live-table--{state}", partial=True)
        return Text(text, style=style, no_wrap=True, overflow="ellipsis")

    def _restyle(self) -> None:
        # Coloured cells carry a resolved style; redraw them when the theme changes.
        for key, values in self._cells.items():
            for column, _ in self._layout:
                cell = values[self._index[column]]
                if not isinstance(cell, str):
                    self.update_cell(key, column, self._renderable(cell))


def _needs(columns: Sequence[Column]) -> int:
    """Cells ``columns`` take at their least widths, padding included."""
    return sum((c.width or 0) + PADDING for c in columns)
