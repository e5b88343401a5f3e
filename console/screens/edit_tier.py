"""`EditTierScreen`: change one tier's mapping and propose it as a new release.

The operator picks a tier (the first, or the one asked for), edits its mapping — prefilled with
the baseline's, in the engine's syntax ``a > b=3 + c=1 > d`` — adds a note and, for an
emergency, ticks the box that applies the release to all traffic at once instead of stepping it
through the rollout stages. Edits to each tier are kept while another tier is picked.

The screen only collects the change: it posts `Proposed` with the `EditTier` command, and the
app previews it, confirms it and submits it while the editor stays open underneath. The app
then closes the editor (`dismiss`) once the engine took the change, or hands the engine's
refusal back (`refuse`) to show it here, with everything typed still in place; `resume` makes
the editor usable again after a cancelled confirmation.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from engine.commands import EditTier
from engine.snapshot import TierView

SYNTAX = "steps in fallback order: a > b; a weighted step: b=3 + c=1"
EMERGENCY = "emergency: apply to 100% now (skips stages)"


class EditTierScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    class Proposed(Message):
        """The operator submitted a change; the app previews, confirms and submits it."""

        def __init__(self, editor: EditTierScreen, command: EditTier) -> None:
            super().__init__()
            self.editor = editor
            self.command = command

    def __init__(self, tiers: Sequence[TierView], tier: str | None = None) -> None:
        """``tiers``: the snapshot's, whose ``mapping`` is the baseline's; ``tier``: the one
        to start on (the first when None or unknown)."""
        super().__init__()
        self._baseline = {t.name: t.mapping for t in tiers}
        names = list(self._baseline)
        self._tier = tier if tier in self._baseline else names[0]
        self._drafts = dict(self._baseline)
        self._waiting = False

    @property
    def tier(self) -> str:
        return self._tier

    def compose(self) -> ComposeResult:
        with Vertical(id="editor"):
            yield Label("Edit a tier's mapping: propose a release", id="editor-title")
            with Horizontal(classes="editor-row"):
                yield Label("tier", classes="editor-label")
                yield Select(
                    [(name, name) for name in self._baseline],
                    value=self._tier,
                    allow_blank=False,
                    compact=True,
                    id="editor-tier",
                )
            with Horizontal(classes="editor-row"):
                yield Label("now", classes="editor-label")
                yield Static(
                    self._baseline[self._tier], id="editor-baseline", classes="editor-hint"
                )
            with Horizontal(classes="editor-row"):
                yield Label("mapping", classes="editor-label")
                yield Input(
                    self._drafts[self._tier],
                    placeholder="a > b=3 + c=1 > d",
                    compact=True,
                    # Edits start at the end of the baseline's mapping; a first key must not
                    # replace it all.
                    select_on_focus=False,
                    id="editor-mapping",
                )
            with Horizontal(classes="editor-row"):
                yield Label("", classes="editor-label")
                yield Static(SYNTAX, classes="editor-hint")
            with Horizontal(classes="editor-row"):
                yield Label("note", classes="editor-label")
                yield Input(placeholder="what this changes and why", compact=True, id="editor-note")
            with Horizontal(classes="editor-row"):
                yield Label("", classes="editor-label")
                yield Checkbox(EMERGENCY, compact=True, id="editor-emergency")
            yield Static("", id="editor-error", classes="-down", markup=False)
            with Horizontal(id="editor-buttons"):
                yield Button("Cancel", id="editor-cancel")
                yield Button("Propose", id="editor-propose", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#editor-error").display = False
        self.query_one("#editor-mapping", Input).focus()

    @on(Select.Changed, "#editor-tier")
    def _tier_picked(self, event: Select.Changed) -> None:
        picked = event.value
        if not isinstance(picked, str) or picked == self._tier:
            return
        mapping = self.query_one("#editor-mapping", Input)
        self._drafts[self._tier] = mapping.value
        self._tier = picked
        mapping.value = self._drafts[picked]
        self.query_one("#editor-baseline", Static).update(self._baseline[picked])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._propose()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "editor-propose":
            self._propose()
        else:
            self.dismiss(None)

    def _propose(self) -> None:
        if self._waiting:
            return
        mapping = " ".join(self.query_one("#editor-mapping", Input).value.split())
        if not mapping:
            self.refuse(f"type a mapping for tier {self._tier}: {SYNTAX}")
            return
        command = EditTier(
            self._tier,
            mapping,
            note=self.query_one("#editor-note", Input).value.strip(),
            emergency=self.query_one("#editor-emergency", Checkbox).value,
        )
        self._set_waiting(True)
        self.query_one("#editor-error").display = False
        self.post_message(self.Proposed(self, command))

    def refuse(self, message: str) -> None:
        """Show why the change was refused; everything typed stays."""
        error = self.query_one("#editor-error", Static)
        error.update(f"✖ {message}")
        error.display = True
        self._set_waiting(False)

    def resume(self) -> None:
        """Take edits again (the confirmation was cancelled)."""
        self._set_waiting(False)

    def _set_waiting(self, waiting: bool) -> None:
        self._waiting = waiting
        self.query_one("#editor-propose", Button).disabled = waiting

    def action_cancel(self) -> None:
        self.dismiss(None)
