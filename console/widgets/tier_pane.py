"""`TierPane`: each tier's live chain: its deployments in order, the share of the tier's served
requests each one answered, and why any of them is out of rotation.

A deployment the tier skips right now is marked ⊘ (breaker open, or cooling down after a 429)
or ⏸ (drained); one whose breaker lets a probe through is marked ◐. The pane picks the fullest
form that fits its width:

- one line per tier, a deployment out of rotation or probed followed by why, in parentheses;
- one line per tier, a skipped deployment followed by a short note (``open 12s``, ``drained``);
- one line per tier, marks only;
- a block per tier: its name, then one numbered line per deployment with why beside it; why
  a deployment is skipped goes on at most two lines below when it does not fit beside it.

A deployment in several tiers gives its reason once, where it first appears, and the short
note after that. The safe-mode tier is marked while safe mode is on, since it then serves all
traffic.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.state_text import StateText
from engine.snapshot import DeploymentView, Snapshot, TierStepView, TierView

SAFE_MARK = " ◆ SAFE"
SKIPPED_GLYPH = "⊘"
REASON_DASH = " — "
REASON_INDENT = "    "
REASON_LINES = 2
"""Lines a reason may wrap onto below its deployment in the block form."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One deployment of a tier as the pane shows it."""

    deployment: str
    share: float
    glyph: str
    state: str
    """The state class of the glyph and name (``healthy``, ``open``, ``drained``, ...)."""
    note: str | None
    """A few words on why it is out of rotation (``open 12s``); None when in rotation."""
    reason: str | None
    """The whole reason (``breaker open: 5 failures in a row · 12s left``), or why the
    deployment is probed; None when neither."""
    skipped: bool
    """Out of the tier's rotation right now."""


def _step(step: TierStepView, dep: DeploymentView | None, why: str | None) -> _Step:
    """How ``step`` shows: ``why`` is the tier's reason for skipping it, None when in rotation."""
    breaker = dep.breaker if dep is not None else "closed"
    left = dep.breaker_left_s if dep is not None else None
    glyph = fmt.GLYPHS.get(step.state, "?")
    state: str = step.state
    note: str | None = None
    reason: str | None = None
    if why is not None and step.state == "drained":
        glyph, state, note, reason = fmt.GLYPHS["drained"], "drained", "drained", why
    elif why is not None and breaker == "open":
        glyph, state, note, reason = SKIPPED_GLYPH, "open", "open", why
        if left is not None:
            note = f"open {fmt.time_left(left)}"
            reason = f"{why} · {fmt.time_left(left)} left"
    elif why is not None:
        glyph, state, note, reason = SKIPPED_GLYPH, "warn", "skipped", why
    elif breaker == "half_open":
        glyph, state, reason = fmt.BREAKER_GLYPHS["half_open"], "half-open", "half-open, probing"
    return _Step(step.deployment, step.share, glyph, state, note, reason, why is not None)


def _chains(snapshot: Snapshot) -> list[tuple[TierView, list[_Step]]]:
    """Every tier with its steps as the pane shows them."""
    deployments: Mapping[str, DeploymentView] = {d.name: d for d in snapshot.deployments}
    out = []
    for tier in snapshot.tiers:
        skipped = dict(tier.skipped)
        steps = [
            _step(s, deployments.get(s.deployment), skipped.get(s.deployment)) for s in tier.steps
        ]
        out.append((tier, steps))
    return out


class TierPane(StateText):
    snapshot: var[Snapshot | None] = var(None)

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
            self.show(self.styled("no tiers configured", "muted"))
            return
        tiers = _chains(snapshot)
        width = max(len(tier.name) for tier, _ in tiers)
        safe_tier = snapshot.safe_mode_tier if snapshot.safe_mode else None
        available = self.content_size.width
        lines: list[Text] = []
        for form in ("whole", "short", "bare"):
            explained: set[str] = set()
            lines = [
                self._line(tier, steps, width, tier.name == safe_tier, form, explained)
                for tier, steps in tiers
            ]
            if not available or max(line.cell_len for line in lines) <= available:
                break
        else:
            explained = set()
            lines = [
                self._block(tier, steps, tier.name == safe_tier, available, explained)
                for tier, steps in tiers
            ]
        text = Text("\n").join(lines)
        text.no_wrap = True
        text.overflow = "ellipsis"
        self._lines = len(text.split())
        self.show(text)

    # Lines start from a plain Text and append styled pieces: appending to a styled Text would
    # give everything after it that Text's style.

    def _tier_name(self, tier: TierView, width: int, safe: bool) -> Text:
        text = Text()
        text.append_text(self.styled(tier.name.ljust(width), "safe" if safe else "strong"))
        if safe:
            text.append_text(self.styled(SAFE_MARK, "safe"))
        return text

    def _head(self, step: _Step) -> Text:
        text = Text()
        text.append_text(self.styled(f"{step.glyph} {step.deployment}", step.state))
        text.append(f" {fmt.percent(step.share)}")
        return text

    def _why(self, step: _Step, explained: set[str]) -> str | None:
        """The whole reason the first time a deployment is explained, else None."""
        if step.reason is None or step.deployment in explained:
            return None
        explained.add(step.deployment)
        return step.reason

    def _line(
        self,
        tier: TierView,
        steps: list[_Step],
        width: int,
        safe: bool,
        form: str,
        explained: set[str],
    ) -> Text:
        """One line for ``tier``; ``form`` is ``whole`` (reasons), ``short`` (notes) or ``bare``."""
        text = self._tier_name(tier, width, safe)
        for index, step in enumerate(steps):
            text.append(" → " if index else "  ")
            text.append_text(self._head(step))
            why = self._why(step, explained) if form == "whole" else None
            if why is not None:
                text.append_text(self.styled(f" ({why})", "muted"))
            elif step.note is not None and form != "bare":
                text.append_text(self.styled(f" {step.note}", "muted"))
        return text

    def _block(
        self, tier: TierView, steps: list[_Step], safe: bool, available: int, explained: set[str]
    ) -> Text:
        text = self._tier_name(tier, 0, safe)
        for index, step in enumerate(steps):
            line = Text(f" {index + 1}. ")
            line.append_text(self._head(step))
            why = self._why(step, explained)
            text.append("\n")
            if why is None:
                if step.note is not None:
                    line.append_text(self.styled(f" {step.note}", "muted"))
                text.append_text(line)
                continue
            fits = not available or line.cell_len + len(REASON_DASH) + len(why) <= available
            if fits:
                line.append_text(self.styled(f"{REASON_DASH}{why}", "muted"))
            text.append_text(line)
            if fits or not step.skipped:
                # A probed deployment keeps its mark; only a skip is worth lines of its own.
                continue
            room = max(10, available - len(REASON_INDENT))
            for part in textwrap.wrap(why, room, max_lines=REASON_LINES, placeholder=" …"):
                text.append_text(self.styled(f"\n{REASON_INDENT}{part}", "muted"))
        return text
