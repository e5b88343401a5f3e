"""`ConfirmScreen`: asks before anything changes, and says what will change.

It shows a title, the effect's one-line summary and its details. Focus starts on Cancel, so a
reflexive enter does nothing. When the action would leave a tier without a healthy deployment,
Confirm stays disabled until the operator types the given text; focus then starts in that
field, where a reflexive enter cannot confirm either. Dismisses with True only on Confirm.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(
        self,
        title: str,
        summary: str,
        details: Sequence[str] = (),
        *,
        confirm_label: str = "Confirm",
        stranded_tiers: Sequence[str] = (),
        confirm_text: str | None = None,
    ) -> None:
        super().__init__()
        self._title = title
        self._summary = summary
        self._details = tuple(details)
        self._confirm_label = confirm_label
        self._stranded = tuple(stranded_tiers)
        self._confirm_text = confirm_text if self._stranded else None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self._title, id="dialog-title", markup=False)
            yield Static(self._summary, id="dialog-summary", markup=False)
            for line in self._details:
                yield Static(f"· {line}", classes="dialog-detail", markup=False)
            if self._confirm_text is not None:
                tiers = ", ".join(self._stranded)
                noun = "tier" if len(self._stranded) == 1 else "tiers"
                yield Static(
                    f"✖ leaves {noun} {tiers} with no healthy deployment. "
                    f"Type {self._confirm_text} to confirm.",
                    id="dialog-warning",
                    classes="-down",
                    markup=False,
                )
                yield Input(placeholder=self._confirm_text, id="dialog-input")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(
                    self._confirm_label,
                    id="confirm",
                    variant="error",
                    disabled=self._confirm_text is not None,
                )

    def on_mount(self) -> None:
        if self._confirm_text is not None:
            self.query_one("#dialog-input", Input).focus()
        else:
            self.query_one("#cancel", Button).focus()

    def _typed_ok(self, value: str) -> bool:
        return self._confirm_text is None or value.strip() == self._confirm_text

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = not self._typed_ok(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._typed_ok(event.value):
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_cancel(self) -> None:
        self.dismiss(False)
