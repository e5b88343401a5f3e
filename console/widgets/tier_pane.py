"""`TierPane`: each tier's ordered deployments with their state and live share.

A tier takes one line when the pane is wide enough for every chain, otherwise one line for
its name and one per deployment. The safe-mode tier is marked while safe mode is on, since it
then serves all traffic.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.reactive import reactive

from console.widgets import formatting as fmt
from console.widgets.state_text import StateText
from engine.snapshot import Snapshot, TierView

SAFE_MARK = " ◆ SAFE"


class TierPane(StateText):
    snapshot: reactive[Snapshot | None] = reactive(None)

    def __init__(self) -> None:
        super().__init__(id="tiers")
        self.border_title = "tiers"
        self._lines = 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # Lines never wrap (the format is chosen to fit, the rest is cropped), so the height is
        # the line count whatever width a grid measures with: a column-spanning grid cell is
        # measured at the width of a single column.
        return self._lines

    def watch_snapshot(self) -> None:
        self.redraw()

    def on_resize(self, event: events.Resize) -> None:
        # Re-laying out from inside a resize is not picked up; redraw after it settles.
        self.call_after_refresh(self.redraw)

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        if not snapshot.tiers:
            self._lines = 1
            self.update(self.styled("no tiers configured", "muted"))
            return
        width = max(len(t.name) for t in snapshot.tiers)
        safe_tier = snapshot.safe_mode_tier if snapshot.safe_mode else None
        lines = [self._line(tier, width, tier.name == safe_tier) for tier in snapshot.tiers]
        available = self.content_size.width
        if available and max(line.cell_len for line in lines) > available:
            lines = [self._block(tier, tier.name == safe_tier) for tier in snapshot.tiers]
        text = Text("\n").join(lines)
        text.no_wrap = True
        text.overflow = "ellipsis"
        self._lines = len(text.split())
        self.update(text)

    def _tier_name(self, tier: TierView, width: int, safe: bool) -> Text:
        text = self.styled(tier.name.ljust(width), "safe" if safe else "strong")
        if safe:
            text.append_text(self.styled(SAFE_MARK, "safe"))
        return text

    def _step(self, tier: TierView, index: int) -> Text:
        step = tier.steps[index]
        text = self.styled(f"{fmt.GLYPHS.get(step.state, '?')} {step.deployment}", step.state)
        text.append(f" {fmt.percent(step.share)}")
        return text

    def _line(self, tier: TierView, width: int, safe: bool) -> Text:
        text = self._tier_name(tier, width, safe)
        for index in range(len(tier.steps)):
            text.append(" → " if index else "  ")
            text.append_text(self._step(tier, index))
        return text

    def _block(self, tier: TierView, safe: bool) -> Text:
        text = self._tier_name(tier, 0, safe)
        for index in range(len(tier.steps)):
            text.append(f"\n {index + 1}. ")
            text.append_text(self._step(tier, index))
        return text
