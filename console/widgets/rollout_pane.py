"""`RolloutPane`: where the release rollout stands, and what the rollout keys will do.

While the engine reports no rollout the pane says so and names the release serving traffic; it
never shows a placeholder stage. During a rollout it shows, most important first, so a short
pane that keeps only its first lines still says where the rollout is and what ``a`` will do:

- the stage ladder: every stage, the passed ones ticked, the current one marked
  (``internal ✓ › canary 1% ● › 5% › 20% › full``);
- the candidate release against its baseline, who started it and the note;
- RUNNING, or HALTED with why (loud), the time in the stage and the candidate's share of
  traffic: the stage's target against what it observed;
- the four signals of each arm side by side (p95 latency; error, 429 and timeout rates;
  fallback ratio; dollars per successful task) with each gate's verdict as glyph, word and
  colour (● passing, ✖ failing, ○ waiting) and the engine's one-line why;
- what the keys do now: ``a: advance to 5%`` (dimmed, "override needed", while a gate does not
  pass), ``b: roll back``, and when the rollout will advance on its own;
- then, when there is room, the candidate's changes and what a failing gate does.
"""  # noqa: RUF002 (the ladder's separator is the one-cell angle quote the panes use)

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.state_text import StateText
from engine.snapshot import ArmSignals, GateView, RolloutView, Snapshot

VERDICTS: dict[str, tuple[str, str]] = {
    "passing": ("●", "healthy"),
    "failing": ("✖", "down"),
    "waiting": ("○", "warn"),
}
"""A gate's verdict: its glyph and the state class that colours it."""

GAP = "  "
STEP = " \u203a "
"""Between stages on the ladder: the one-cell angle quote the request paths use."""


def verdict(word: str) -> str:
    """Glyph and word, e.g. ``"✖ failing"``; the word keeps it readable without colour."""
    glyph, _ = VERDICTS.get(word, ("?", "warn"))
    return f"{glyph} {word}"


def stage_name(name: str, percent: float) -> str:
    """A stage on the ladder: ``canary 1%``; a stage named after its share, the internal stage
    (0%) and the full one (100%) need no number."""
    shown = f"{percent:g}%"
    if percent <= 0 or percent >= 100 or shown in name:
        return name
    return f"{name} {shown}"


def _errors(arm: ArmSignals) -> str:
    rates = (arm.error_rate, arm.rate_429, arm.timeout_rate)
    return " ".join(fmt.percent(r, digits=1) for r in rates)


SIGNALS: tuple[tuple[str, str, Callable[[ArmSignals], str]], ...] = (
    ("latency", "p95", lambda arm: fmt.millis(arm.p95_ms)),
    ("errors", "err/429/t/o", _errors),
    ("fallback", "fallback", lambda arm: fmt.percent(arm.fallback_ratio, digits=1)),
    ("cost", "$/success", lambda arm: fmt.usd(arm.cost_per_success_usd)),
)
"""Each gate's signal: its name in `GateView.signal`, its row label and each arm's figure."""


class RolloutPane(StateText):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self, *, read_only: bool = False) -> None:
        """``read_only``: the console cannot advance or roll back, so the key hints say so."""
        super().__init__(id="rollout")
        self.border_title = "rollout"
        self._read_only = read_only

    def watch_snapshot(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        rollout = snapshot.rollout
        if rollout is None:
            text = _line(self.styled("no rollout in progress", "muted"))
            text.append(f"\nserving release {snapshot.release}")
            self.show(text)
            return
        lines = [
            self._ladder(rollout),
            self._releases(rollout, snapshot.release),
            self._state(rollout, snapshot.taken_at),
            *self._signals(rollout),
            self._keys(rollout, snapshot.taken_at),
            *(Text(f"change: {line}") for line in rollout.diff),
        ]
        on_fail = "rolls the rollout back" if rollout.on_fail == "rollback" else "halts the rollout"
        lines.append(self.styled(f"a failing gate {on_fail}", "muted"))
        self.show(Text("\n").join(lines))

    def _ladder(self, rollout: RolloutView) -> Text:
        text = Text()
        halted = rollout.state == "halted"
        for index, stage in enumerate(rollout.stages):
            if index:
                text.append_text(self.styled(STEP, "muted"))
            name = stage_name(stage.name, stage.percent)
            if index < rollout.stage_index:
                text.append_text(self.styled(f"{name} ✓", "healthy"))
            elif index == rollout.stage_index:
                mark = "⏸" if halted else "●"
                text.append_text(self.styled(f"{name} {mark}", "down" if halted else "strong"))
            else:
                text.append_text(self.styled(name, "muted"))
        if not rollout.stages:
            text.append_text(self.styled(f"{rollout.stage} ●", "strong"))
        return text

    def _releases(self, rollout: RolloutView, serving: str) -> Text:
        text = _line(self.styled(rollout.release, "strong"))
        text.append(f" vs baseline {rollout.baseline or serving}")
        if rollout.actor:
            text.append(f" · by {rollout.actor}")
        if rollout.note:
            text.append(" · ")
            text.append_text(self.styled(" ".join(rollout.note.split()), "muted"))
        return text

    def _state(self, rollout: RolloutView, now: float) -> Text:
        if rollout.state == "halted":
            why = f": {rollout.state_reason}" if rollout.state_reason else ""
            text = _line(self.styled(f"✖ HALTED{why}", "loud"))
        else:
            text = _line(self.styled("● RUNNING", "healthy"))
        text.append(f" · {fmt.age(now - rollout.stage_started_at)} in stage")
        observed = fmt.percent(rollout.observed_share, digits=1)
        text.append(
            f" · {rollout.release}'s share: target {rollout.target_percent:g}%, seen {observed}"
        )
        return text

    def _signals(self, rollout: RolloutView) -> list[Text]:
        gates = {gate.signal: gate for gate in rollout.gates}
        candidate, baseline = rollout.candidate, rollout.baseline_signals
        rows: list[tuple[str, str, str, GateView | None]] = []
        head = (
            "signal",
            f"{rollout.release} · {_requests(candidate)}",
            f"{rollout.baseline or 'baseline'} · {_requests(baseline)}",
        )
        for signal, label, figure in SIGNALS:
            rows.append(
                (
                    label,
                    figure(candidate) if candidate is not None else fmt.UNKNOWN,
                    figure(baseline) if baseline is not None else fmt.UNKNOWN,
                    gates.pop(signal, None),
                )
            )
        # A gate on a signal this console does not know still shows, with the engine's figures.
        for extra in gates.values():
            rows.append((extra.signal, _number(extra.candidate), _number(extra.baseline), extra))
        cells = [head, *((label, cand, base) for label, cand, base, _ in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(3)]
        lines = [self.styled(_columns(head, widths) + "gate", "muted")]
        for label, cand, base, gate in rows:
            text = Text(_columns((label, cand, base), widths))
            if gate is not None:
                _, state = VERDICTS.get(gate.verdict, ("?", "warn"))
                text.append_text(self.styled(verdict(gate.verdict).ljust(9), state))
                text.append(f"{GAP}{gate.why}")
            lines.append(text)
        return lines

    def _keys(self, rollout: RolloutView, now: float) -> Text:
        action = rollout.next_action or "advance"
        if not rollout.can_advance:
            action += " (override needed)"
        if self._read_only:
            text = _line(self.styled(f"next: {action} · read-only", "muted"))
        else:
            text = _line(self.styled(f"a: {action}", None if rollout.can_advance else "muted"))
            text.append(" · b: roll back")
        if rollout.auto_advance_at is not None:
            text.append(f" · advances on its own in {fmt.time_left(rollout.auto_advance_at - now)}")
        return text


def _line(*parts: Text) -> Text:
    """A line that starts with ``parts``; what is appended after them is unstyled (a styled
    `Text` would lend its style to everything appended to it)."""
    line = Text()
    for part in parts:
        line.append_text(part)
    return line


def _columns(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "".join(cell.ljust(width) + GAP for cell, width in zip(cells, widths, strict=True))


def _requests(arm: ArmSignals | None) -> str:
    return f"{fmt.count(arm.requests)} req" if arm is not None else fmt.UNKNOWN


def _number(value: float | None) -> str:
    return fmt.UNKNOWN if value is None else f"{value:g}"
