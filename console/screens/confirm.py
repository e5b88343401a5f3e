"""`ConfirmScreen`: asks before anything changes, and says what will change.

It shows a title, the effect's one-line summary and its details. Focus starts on Cancel, so a
reflexive enter does nothing. Two things can hold Confirm disabled:

- a word to type (``confirm_text``): the target of a drain that would leave a tier without a
  healthy deployment (``stranded_tiers`` names them), or the word for a change that skips the
  usual safety, like ``emergency`` (apply a release to all traffic now) or ``override``
  (advance a rollout whose gates do not pass); ``warning`` says why it must be typed;
- a reason (``needs_reason``), written to the audit log with the command.

Focus then starts in the first field to fill, where a reflexive enter cannot confirm either.
Dismisses with the reason (empty when none was asked) on Confirm, and None on Cancel or escape.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[str | None]):
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
        warning: str | None = None,
        needs_reason: bool = False,
    ) -> None:
        super().__init__()
        self._title = title
        self._summary = summary
        self._details = tuple(details)
        self._confirm_label = confirm_label
        self._stranded = tuple(stranded_tiers)
        self._confirm_text = confirm_text or None
        self._warning = warning
        self._needs_reason = needs_reason

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self._title, id="dialog-title", markup=False)
            yield Static(self._summary, id="dialog-summary", markup=False)
            for line in self._details:
                yield Static(f"· {line}", classes="dialog-detail", markup=False)
            if self._confirm_text is not None:
                yield Static(
                    self._why_typed(self._confirm_text),
                    id="dialog-warning",
                    classes="-down",
                    markup=False,
                )
            both = self._confirm_text is not None and self._needs_reason
            with Horizontal(id="dialog-fields", classes="-both" if both else ""):
                if self._confirm_text is not None:
                    yield Input(placeholder=self._confirm_text, id="dialog-input")
                if self._needs_reason:
                    yield Input(
                        placeholder="reason (required, for the audit log)",
                        id="dialog-reason",
                    )
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(
                    self._confirm_label,
                    id="confirm",
                    variant="error",
                    disabled=self._confirm_text is not None or self._needs_reason,
                )

    def _why_typed(self, word: str) -> str:
        if self._stranded:
            tiers = ", ".join(self._stranded)
            noun = "tier" if len(self._stranded) == 1 else "tiers"
            return f"✖ leaves {noun} {tiers} with no healthy deployment. Type {word} to confirm."
        return self._warning or f"Type {word} to confirm."

    def on_mount(self) -> None:
        fields = list(self.query(Input))
        if fields:
            fields[0].focus()
        else:
            self.query_one("#cancel", Button).focus()

    def _value(self, field_id: str) -> str:
        found = self.query(f"#{field_id}").results(Input)
        field = next(found, None)
        return field.value.strip() if field is not None else ""

    def _typed_ok(self) -> bool:
        return self._confirm_text is None or self._value("dialog-input") == self._confirm_text

    def _reason_ok(self) -> bool:
        return not self._needs_reason or bool(self._value("dialog-reason"))

    def _ready(self) -> bool:
        return self._typed_ok() and self._reason_ok()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = not self._ready()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._ready():
            self._confirm()
        elif event.input.id == "dialog-input" and self._typed_ok():
            # The word is right; the reason is what is still missing.
            self.query_one("#dialog-reason", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm":
            self._confirm()
        else:
            self.dismiss(None)

    def _confirm(self) -> None:
        self.dismiss(self._value("dialog-reason"))

    def action_cancel(self) -> None:
        self.dismiss(None)
