"""`TokenPane`: input and output tokens per minute and today, by tier and by tenant.

Tokens only: the snapshot carries no dollar figures yet, and the pane shows nothing it was not
given.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from console.widgets import formatting as fmt
from console.widgets.live_table import LiveTable, Row
from console.widgets.state_text import StateText
from engine.snapshot import Snapshot

COLUMNS = (
    ("scope", "by", 6),
    ("name", "name", 10),
    ("input", "in today", 8),
    ("output", "out", 6),
)


def rows(snapshot: Snapshot) -> list[Row]:
    out: list[Row] = []
    for tier, inputs, outputs in snapshot.tokens.by_tier:
        out.append((f"tier:{tier}", ("tier", tier, fmt.count(inputs), fmt.count(outputs))))
    for tenant, inputs, outputs in snapshot.tokens.by_tenant:
        out.append((f"tenant:{tenant}", ("tenant", tenant, fmt.count(inputs), fmt.count(outputs))))
    return out


class TokenPane(Vertical):
    snapshot: reactive[Snapshot | None] = reactive(None)

    def __init__(self) -> None:
        super().__init__(id="tokens")
        self.border_title = "tokens"

    def compose(self) -> ComposeResult:
        yield StateText(id="token-summary")
        table = LiveTable(COLUMNS, id="token-table")
        table.can_focus = False
        table.show_cursor = False
        yield table

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is None or not self.is_mounted:
            return
        tokens = snapshot.tokens
        summary = Text()
        summary.append(
            f"per min  in {fmt.count(tokens.input_per_min)} · out {fmt.count(tokens.output_per_min)}  "
        )
        summary.append(fmt.spark(tokens.spark, 8))
        summary.append(
            f"\ntoday    in {fmt.count(tokens.input_today)} · out {fmt.count(tokens.output_today)}"
        )
        summary.no_wrap = True
        summary.overflow = "ellipsis"
        self.query_one("#token-summary", StateText).update(summary)
        self.query_one("#token-table", LiveTable).sync(rows(snapshot))
