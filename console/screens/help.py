"""`HelpScreen`: every key and ``:`` command from the registry, with why one is unavailable."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from console.bindings import KeySpec


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close"),
        Binding("q", "close", "close"),
    ]

    def __init__(self, entries: Sequence[tuple[KeySpec, str | None]]) -> None:
        """``entries`` pairs each registry entry with why it is unavailable (None: available)."""
        super().__init__()
        self._entries = tuple(entries)

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, expand=True, padding=(0, 1))
        table.add_column("key", no_wrap=True)
        table.add_column("command", max_width=24, overflow="fold")
        table.add_column("what it does", ratio=1)
        for spec, unavailable in self._entries:
            what = spec.help if unavailable is None else f"{spec.help} ({unavailable})"
            command = f":{spec.command}" if spec.command else ""
            table.add_row(spec.display, command, what, style="dim" if unavailable else None)
        with Vertical(id="help"):
            yield Label("routedeck keys · ctrl+p searches them · esc closes", id="help-title")
            with VerticalScroll():
                yield Static(table, id="help-table")

    def action_close(self) -> None:
        self.dismiss(None)
