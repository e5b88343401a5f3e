"""`CommandLine`: the ``:`` prompt at the bottom of the screen.

It only collects a line; the app parses and runs it against the key registry, so the
commands offered here and the keys in the footer cannot drift apart.
"""

from __future__ import annotations

from textual.message import Message
from textual.widgets import Input


class CommandLine(Input):
    class Run(Message):
        """The operator pressed enter on a command line (without the leading colon)."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    def __init__(self, placeholder: str) -> None:
        super().__init__(placeholder=placeholder, id="command-line")

    def open(self) -> None:
        """Show the prompt, empty, with focus."""
        self.value = ""
        self.display = True
        self.focus()

    def close(self) -> None:
        self.value = ""
        self.display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = event.value.strip().removeprefix(":").strip()
        self.close()
        if line:
            self.post_message(self.Run(line))
