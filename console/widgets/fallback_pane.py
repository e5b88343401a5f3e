"""`FallbackPane`: how much served traffic a fallback answered, overall and by cause."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.state_text import StateText
from engine.snapshot import Snapshot

# Where the ratio's colour changes. A few percent of fallbacks is normal background noise;
# a quarter of traffic falling back means a first choice is effectively out.
WARN_RATIO = 0.05
BAD_RATIO = 0.25


def ratio_state(ratio: float | None) -> str:
    if ratio is None:
        return "idle"
    if ratio < WARN_RATIO:
        return "healthy"
    if ratio < BAD_RATIO:
        return "degraded"
    return "down"


class FallbackPane(StateText):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(id="fallback")
        self.border_title = "fallback"

    def watch_snapshot(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        view = snapshot.fallback
        text = Text()
        if view.ratio is None:
            text.append_text(
                self.styled(f"no requests served in the last {snapshot.window_s}s", "muted")
            )
        else:
            state = ratio_state(view.ratio)
            text.append_text(self.styled(fmt.percent(view.ratio, digits=1), state))
            text.append(f"  {view.fallbacks} of {view.requests} in {snapshot.window_s}s  ")
            text.append(fmt.spark(view.spark, 8))
        text.append("\n")
        if view.by_cause:
            causes = " · ".join(f"{cause} {n}" for cause, n in view.by_cause)
            text.append(f"causes: {causes}")
        elif view.ratio is not None:
            text.append_text(self.styled("causes: none", "muted"))
        text.no_wrap = True
        text.overflow = "ellipsis"
        self.show(text)
