"""`RolloutPane`: where the release rollout stands.

While the engine reports no rollout the pane says so; it never shows a placeholder stage.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var

from console.widgets.state_text import StateText
from engine.snapshot import Snapshot


class RolloutPane(StateText):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(id="rollout")
        self.border_title = "rollout"

    def watch_snapshot(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        text = Text()
        rollout = snapshot.rollout
        if rollout is None:
            text.append_text(self.styled("no rollout in progress", "muted"))
            text.append(f"\nserving release {snapshot.release}")
        else:
            text.append("release ")
            text.append_text(self.styled(rollout.release, "strong"))
            text.append("\nstage ")
            text.append_text(self.styled(rollout.stage, "warn"))
        self.show(text)
