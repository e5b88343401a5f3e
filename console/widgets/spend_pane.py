"""`SpendPane`: what today's traffic cost, in tokens and dollars.

The summary puts first what matters most, so a short pane that shows only its first lines
still shows today's dollars and, when there is any, the unpriced warning:

- dollars today (from the engine's durable ledger) and the cost per successful task; when the
  pane is too short for the cache line, the cache hit ratio joins this line;
- unpriced traffic, loudly: each deployment without a price and how many requests it served.
  Their cost is unknown, so every total that leaves it out reads as a lower bound (``≥$1.23``),
  and a total of nothing but unknown cost reads ``—``, never ``$0``;
- tokens per minute and today;
- the deterministic cache: hit ratio, dollars saved, entries.

Below the summary (when the layout gives it room) a table lists each tenant with its dollars
today and this month and a bar of its daily budget, each tier with tokens and dollars, and each
deployment with dollars, or ``▲ unpriced`` with its requests. A budget bar's colour is a state
class chosen by the share spent (`budget_state`); a tenant without a budget has no bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.live_table import Cell, Column, LiveTable, Row
from console.widgets.state_text import StateText
from engine.snapshot import Snapshot, SpendView, TenantSpendView

WATCH_SHARE = 0.5
HIGH_SHARE = 0.8
"""Shares of a budget where its bar turns from normal to watch, and from watch to high; at 1.0
and over it is over budget. The same steps as the engine's default budget alerts."""

BUDGET_BAR_CELLS = 8

COLUMNS = (
    Column("scope", "by", 10, drop=2),
    Column("name", "name", 15),
    Column("input", "in today", 8, drop=4),
    Column("output", "out", 6, drop=4),
    Column("usd", "$ today", 10),
    Column("month", "month", 16, drop=3),
    Column("budget", "daily budget", 20, fill=True),
)

LABEL = 9
"""Width of the summary's line labels (``per min``, ``today``, ...)."""


def budget_state(share: float) -> str:
    """The state class of a budget bar ``share`` spent: ``budget-ok`` (under half),
    ``budget-watch``, ``budget-high`` (from 80%), ``budget-over`` (from 100%)."""
    if share >= 1.0:
        return "budget-over"
    if share >= HIGH_SHARE:
        return "budget-high"
    if share >= WATCH_SHARE:
        return "budget-watch"
    return "budget-ok"


def budget_cell(spent: float, budget: float | None) -> Cell:
    """A tenant's daily budget as a bar with the share and the budget; blank without one."""
    if budget is None:
        return ""
    if budget <= 0:
        return ("no spend allowed", budget_state(1.0) if spent > 0 else "muted")
    share = spent / budget
    text = f"{fmt.bar(share, BUDGET_BAR_CELLS)} {fmt.percent(share)} of {fmt.budget(budget)}"
    return (text, budget_state(share))


def month_cell(spent: float, budget: float | None) -> Cell:
    if budget is None:
        return fmt.usd(spent)
    text = f"{fmt.usd(spent)} of {fmt.budget(budget)}"
    if budget <= 0:
        return (text, budget_state(1.0) if spent > 0 else "muted")
    return (text, budget_state(spent / budget))


def rows(snapshot: Snapshot, *, compact: bool = False) -> list[Row]:
    """Tenants, then tiers, then deployments (unpriced ones first); tokens where the snapshot
    counts them.

    ``compact`` is for a table without the ``by`` column: each group gets a heading row instead.
    """
    spend = snapshot.spend
    tokens = snapshot.tokens
    groups: list[tuple[str, list[Row]]] = []

    tenant_tokens = {name: (i, o) for name, i, o in tokens.by_tenant}
    tenants: dict[str, TenantSpendView | None] = {}
    for ledger in spend.by_tenant if spend else ():
        tenants[ledger.tenant] = ledger
    for name in tenant_tokens:
        tenants.setdefault(name, None)
    group: list[Row] = []
    for name, view in tenants.items():
        inputs, outputs = _tokens(tenant_tokens.get(name))
        if view is None:
            today: Cell = fmt.UNKNOWN
            month: Cell = fmt.UNKNOWN
            budget: Cell = ""
        else:
            today = fmt.usd(view.spent_today_usd)
            month = month_cell(view.spent_month_usd, view.monthly_budget_usd)
            budget = budget_cell(view.spent_today_usd, view.daily_budget_usd)
        group.append((f"tenant:{name}", ("tenant", name, inputs, outputs, today, month, budget)))
    groups.append(("tenants", group))

    tier_tokens = {name: (i, o) for name, i, o in tokens.by_tier}
    tier_usd = dict(spend.by_tier) if spend else {}
    group = []
    for name in _union(tier_tokens, tier_usd):
        inputs, outputs = _tokens(tier_tokens.get(name))
        dollars = fmt.usd(tier_usd[name]) if name in tier_usd else fmt.UNKNOWN
        group.append((f"tier:{name}", ("tier", name, inputs, outputs, dollars, "", "")))
    groups.append(("tiers", group))

    group = []
    if spend is not None:
        dep_usd = dict(spend.by_deployment)
        unpriced = dict(spend.unpriced)
        # Unpriced deployments first: they are what this table must not let anyone miss.
        for name in [*sorted(unpriced), *sorted(set(dep_usd) - set(unpriced))]:
            requests = unpriced.get(name, 0)
            if requests and not dep_usd.get(name):
                dollars_cell: Cell = ("▲ unpriced", "bad")
            elif requests:
                dollars_cell = (f"≥{fmt.usd(dep_usd[name])}", "bad")
            else:
                dollars_cell = fmt.usd(dep_usd[name])
            note: Cell = (f"{requests} req, cost unknown", "bad") if requests else ""
            group.append(
                (f"deployment:{name}", ("deployment", name, "", "", dollars_cell, "", note))
            )
    groups.append(("deployments", group))

    out: list[Row] = []
    for heading, members in groups:
        if compact and members:
            out.append((f"heading:{heading}", ("", (heading, "muted"), "", "", "", "", "")))
        out.extend(members)
    return out


def _tokens(pair: tuple[int, int] | None) -> tuple[str, str]:
    if pair is None:
        return "", ""
    return fmt.count(pair[0]), fmt.count(pair[1])


def _union(*keyed: Iterable[str]) -> list[str]:
    """Names in first-seen order across ``keyed``."""
    seen: dict[str, None] = {}
    for names in keyed:
        for name in names:
            seen.setdefault(name, None)
    return list(seen)


def unpriced_lines(unpriced: Sequence[tuple[str, int]]) -> list[str]:
    """The unpriced warning, fullest first: ``▲ unpriced: c-big (12 req) — cost unknown, not
    $0``, then shorter."""
    which = ", ".join(f"{name} ({n} req)" for name, n in unpriced)
    return [
        f"▲ unpriced: {which} — cost unknown, not $0",
        f"▲ unpriced: {which} — cost unknown",
        f"▲ unpriced: {which}",
    ]


class SpendSummary(StateText):
    """The summary lines; picks the fullest wording of each that fits the width."""

    snapshot: var[Snapshot | None] = var(None)

    def watch_snapshot(self) -> None:
        self.redraw()

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.redraw)

    def redraw(self) -> None:
        snapshot = self.snapshot
        if snapshot is None or not self.is_mounted:
            return
        width = self.content_size.width
        spend = snapshot.spend
        tokens = snapshot.tokens
        lines: list[Text] = []
        # The cache line comes last; when the pane is too short to show it, the hit ratio
        # joins the first line instead.
        needed = 5 if spend is not None and spend.unpriced else 4
        cache_shown = not self.size.height or self.size.height >= needed
        if spend is None:
            lines.append(self.styled("no dollar figures from this engine", "muted"))
        else:
            lines.append(self._fit(width, self._money(spend, with_cache=not cache_shown)))
            if spend.unpriced:
                forms = [self.styled(line, "loud") for line in unpriced_lines(spend.unpriced)]
                lines.append(self._fit(width, forms))
        per_min = Text(
            f"{'per min':<{LABEL}}in {fmt.count(tokens.input_per_min)} · "
            f"out {fmt.count(tokens.output_per_min)}  "
        )
        per_min.append(fmt.spark(tokens.spark, 8))
        lines.append(per_min)
        lines.append(
            Text(
                f"{'today':<{LABEL}}in {fmt.count(tokens.input_today)} · "
                f"out {fmt.count(tokens.output_today)}"
            )
        )
        if spend is not None:
            lines.append(self._fit(width, self._cache(spend)))
        text = Text("\n").join(lines)
        text.no_wrap = True
        text.overflow = "ellipsis"
        self.show(text)

    def _fit(self, width: int, forms: Sequence[Text]) -> Text:
        """The first of ``forms`` that fits ``width`` cells, else the last (cut to fit)."""
        for form in forms:
            if not width or form.cell_len <= width:
                return form
        return forms[-1]

    def _money(self, spend: SpendView, *, with_cache: bool) -> list[Text]:
        partial = bool(spend.unpriced)
        today = fmt.usd_at_least(spend.today_usd, partial=partial)
        per = fmt.usd_at_least(spend.cost_per_success_usd, partial=partial)
        cache = f" · cache {fmt.percent(spend.cache_hit_ratio)}" if with_cache else ""
        forms = [
            f"{'spent':<{LABEL}}{today} today · {per} per successful task{cache}",
            f"{'spent':<{LABEL}}{today} today · {per} per task{cache}",
            f"{today} today · {per} per task{cache}",
            f"{today} today · {per}/task{cache}",
            f"{today} today · {per}/task",
        ]
        return [self._dollars(form, today) for form in forms]

    def _dollars(self, line: str, today: str) -> Text:
        """``line`` with today's dollars in bold."""
        text = Text()
        before, found, after = line.partition(today)
        text.append(before)
        if found:
            text.append_text(self.styled(found, "strong"))
        text.append(after)
        return text

    def _cache(self, spend: SpendView) -> list[Text]:
        ratio = fmt.percent(spend.cache_hit_ratio, digits=1)
        saved = fmt.usd(spend.cache_saved_usd)
        entries = f"{spend.cache_entries:,} entr{'y' if spend.cache_entries == 1 else 'ies'}"
        return [
            Text(f"{'cache':<{LABEL}}{ratio} hit · saved {saved} · {entries}"),
            Text(f"{'cache':<{LABEL}}{ratio} hit · saved {saved}"),
        ]


class SpendTable(LiveTable):
    """The table under the summary; a group heading row replaces the ``by`` column when the
    table is too narrow for it."""

    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(COLUMNS, id="spend-table")
        self.can_focus = False
        self.show_cursor = False

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and self.is_mounted:
            self.sync(rows(snapshot, compact=not self.shows("scope")))

    def layout_changed(self) -> None:
        self.watch_snapshot(self.snapshot)


class SpendPane(Vertical):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(id="spend")
        self.border_title = "spend"

    def compose(self) -> ComposeResult:
        yield SpendSummary(id="spend-summary").data_bind(SpendPane.snapshot)
        yield SpendTable().data_bind(SpendPane.snapshot)
