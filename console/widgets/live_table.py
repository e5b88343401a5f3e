"""`LiveTable`: a DataTable that follows a changing list of rows by key.

Panes describe the rows they want (a stable key and the cells, in order) and call `sync`; the
table then removes rows that went away, appends new ones and rewrites only the cells whose
value changed, inside one ``batch_update``. It never clears itself, so the cursor, the scroll
position and unchanged cells survive every refresh.

A cell is plain text, or ``(text, state)`` to colour it by state: ``state`` selects the
component class ``live-table--<state>``, styled in ``app.tcss`` with theme variables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.widgets import DataTable

Cell = str | tuple[str, str]
Row = tuple[str, Sequence[Cell]]

STATES = ("healthy", "degraded", "down", "drained", "idle", "muted", "warn", "bad", "strong")


class LiveTable(DataTable[Text]):
    COMPONENT_CLASSES: ClassVar[set[str]] = DataTable.COMPONENT_CLASSES | {
        f"live-table--{state}" for state in STATES
    }

    def __init__(
        self,
        columns: Sequence[tuple[str, str, int | None]],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """``columns`` are ``(key, label, width)``; a width of None sizes to content."""
        # The cell's own colour wins over the cursor's, so the selected row keeps its state colour.
        super().__init__(
            id=id,
            classes=classes,
            cursor_type="row",
            zebra_stripes=False,
            cursor_foreground_priority="renderable",
        )
        self._columns_spec = tuple(columns)
        self._cells: dict[str, tuple[Cell, ...]] = {}
        for key, label, width in self._columns_spec:
            self.add_column(label, width=width, key=key)

    def on_mount(self) -> None:
        self.watch(self.app, "theme", self._theme_changed, init=False)

    def _theme_changed(self) -> None:
        # The new theme's variables are resolved on the next refresh, not yet.
        self.call_after_refresh(self._restyle)

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

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show exactly ``rows``, in order, touching only what changed."""
        wanted = [key for key, _ in rows]
        wanted_set = set(wanted)
        with self.app.batch_update():
            current = self.keys
            for key in current:
                if key not in wanted_set:
                    self._remove(key)
            current = [key for key in current if key in wanted_set]
            # Rows can only be appended, so keep the longest prefix that is already in the
            # right order and re-append whatever follows it.
            keep = 0
            while keep < len(current) and current[keep] == wanted[keep]:
                keep += 1
            for key in current[keep:]:
                self._remove(key)
            for index, (key, cells) in enumerate(rows):
                values = tuple(cells)
                if index < keep:
                    self._update(key, values)
                else:
                    self._cells[key] = values
                    self.add_row(*(self._renderable(c) for c in values), key=key)

    def _remove(self, key: str) -> None:
        self.remove_row(key)
        del self._cells[key]

    def _update(self, key: str, values: tuple[Cell, ...]) -> None:
        old = self._cells[key]
        if old == values:
            return
        for (column, _, _), before, after in zip(self._columns_spec, old, values, strict=True):
            if before != after:
                self.update_cell(key, column, self._renderable(after))
        self._cells[key] = values

    def _renderable(self, cell: Cell) -> Text:
        if isinstance(cell, str):
            return Text(cell, no_wrap=True, overflow="ellipsis")
        text, state = cell
        style = self.get_component_rich_style(f"live-table--{state}", partial=True)
        return Text(text, style=style, no_wrap=True, overflow="ellipsis")

    def _restyle(self) -> None:
        # Coloured cells carry a resolved style; redraw them when the theme changes.
        for key, values in self._cells.items():
            for (column, _, _), cell in zip(self._columns_spec, values, strict=True):
                if not isinstance(cell, str):
                    self.update_cell(key, column, self._renderable(cell))
