"""`StateText`: a Static whose text is coloured by state through CSS component classes.

Subclasses build `rich.text.Text` with `styled` and the state's name (``healthy``,
``degraded``, ``down``, ``drained``, ``idle``, ``muted``, ``warn``, ``bad``, ``strong``,
``safe``, a circuit breaker's ``open`` and ``half-open``, ``loud`` for a warning that must not be
missed, and an alert's ``alert-info``, ``alert-warning`` and ``alert-critical``); the colour comes from
``app.tcss`` (``StateText > .state--healthy`` with ``$success`` and so on), so Python never
names a colour.

Panes put their text on screen with `show`, which does nothing when the text is what is already
shown, and lays the screen out again only when the number of lines changes: a pane's width
comes from the grid, never from its text, so a new text of as many lines is only a repaint.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widgets import Static

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
    "safe",
    "open",
    "half-open",
    "loud",
    "alert-info",
    "alert-warning",
    "alert-critical",
)


def _same_as(text: Text) -> tuple[object, ...]:
    """What decides how ``text`` looks: its characters, spans, base style and wrapping."""
    return (text.plain, tuple(text.spans), text.style, text.no_wrap, text.overflow, text.justify)


class StateText(Static):
    COMPONENT_CLASSES: ClassVar[set[str]] = {f"state--{state}" for state in STATES}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: tuple[object, ...] | None = None
        self._shown_lines = 0

    def on_mount(self) -> None:
        self.watch(self.app, "theme", self._theme_changed, init=False)

    def _theme_changed(self) -> None:
        # Styles are resolved when text is built; rebuild once the new theme is applied.
        self.call_after_refresh(self.redraw)

    def redraw(self) -> None:
        """Rebuild the text from the widget's current data; subclasses implement it."""

    def show(self, text: Text) -> None:
        """Put ``text`` on screen unless it is there already (see the module docstring)."""
        shown = _same_as(text)
        if shown == self._shown:
            return
        lines = text.plain.count("\n") + 1
        layout = self._shown is None or lines != self._shown_lines
        self._shown, self._shown_lines = shown, lines
        self.update(text, layout=layout)

    def styled(self, text: str, state: str | None = None) -> Text:
        """``text`` in the colour of ``state`` (plain when None); never parsed as markup."""
        if state is None:
            return Text(text)
        return Text(text, style=self.get_component_rich_style(f"state--{state}", partial=True))
