"""The daily report (``routedeck report --daily``): one UTC day, from the state file alone.

`daily_report` reads the state file alone and needs no running engine:

- the spend ledger (``spend``): what each tenant was charged, tokens, cache hits and dollars
  saved. It is what budgets are checked against and is committed before each answer, so the
  money figures per tenant come from here.
- the request log: requests, successes, costs per tier and per deployment, cost per
  successful task, unpriced requests and the fallback ratio — from the hourly aggregates for
  hours already rolled up and the raw ``requests`` rows after them (`state.rollups`), so a day
  reads the same after retention pruned its raw rows. Raw rows are written in batches, so a
  crash can lose its last few milliseconds of rows.
- ``alerts``: the alerts raised that day.

Definitions a reader may rely on:

- A request is *successful* when its outcome is ``ok`` (cache hits included: a task done for $0).
- *Cost per successful task* is the cost of every request of the day (failed ones and the failed
  attempts before a fallback included) divided by the successful requests. None without any.
- A request is *unpriced* when a deployment with no price served it: its cost is unknown, is not
  in any dollar figure, and is never shown as $0. A dollar figure with unpriced requests behind
  it is a lower bound; `render_text` says so.
- The *fallback ratio* is requests served by a fallback over requests served by a deployment
  (cache hits and failures are neither). None without any.
- Budgets are those of the config passed in, which may differ from the day's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.alerts import Alert, alerts_of_day, format_usd
from engine.config import Config
from state.rollups import RequestKey, RequestTotals, request_totals
from state.store import Store

__all__ = [
    "DailyReport",
    "DayTotals",
    "SpendRow",
    "TenantDay",
    "daily_report",
    "render_text",
    "to_dict",
]

NO_TIER = "(no tier)"
"""Tier label of requests rejected before routing (no key, quota, budget, bad input)."""
CACHE = "(cache)"
"""Deployment label of requests answered from the cache."""
NOT_SERVED = "(not served)"
"""Deployment label of requests no deployment answered (failed or rejected)."""


@dataclass(frozen=True, slots=True)
class TenantDay:
    tenant: str
    spent_usd: float
    """Settled spend today (ledger); excludes unpriced requests."""
    daily_budget_usd: float | None
    share: float | None
    """``spent_usd`` over the daily budget; None without a (non-zero) budget."""
    requests: int
    """Requests in the request log, rejected ones included."""
    successful: int
    input_tokens: int
    output_tokens: int
    cache_hits: int
    saved_usd: float
    """What the cache hits cost when they were first answered."""
    unpriced_requests: int
    cost_per_success_usd: float | None


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Requests and cost of one tier or one deployment."""

    name: str
    requests: int
    successful: int
    cost_usd: float
    """Known cost only; see ``unpriced_requests``."""
    share: float | None
    """Of the day's known cost; None when that is zero or this row's cost is all unpriced."""
    unpriced_requests: int


@dataclass(frozen=True, slots=True)
class DayTotals:
    spent_usd: float
    """Ledger total over tenants."""
    cost_usd: float
    """Request-log total; equals ``spent_usd`` unless request-log rows were lost."""
    requests: int
    successful: int
    failed: int
    input_tokens: int
    output_tokens: int
    cache_hits: int
    saved_usd: float
    unpriced_requests: int
    cost_per_success_usd: float | None
    served: int
    """Requests a deployment answered (not cache hits, not failures)."""
    fallbacks: int
    fallback_ratio: float | None


@dataclass(frozen=True, slots=True)
class DailyReport:
    day: str
    """UTC day, ``YYYY-MM-DD``."""
    totals: DayTotals
    tenants: tuple[TenantDay, ...]
    """By spend, highest first; tenants of the config with a daily budget are always listed."""
    tiers: tuple[SpendRow, ...]
    """By cost, highest first."""
    deployments: tuple[SpendRow, ...]
    """By cost, highest first; `CACHE` and `NOT_SERVED` rows when there were such requests."""
    alerts: tuple[Alert, ...]
    """Raised that day, oldest first."""


@dataclass(frozen=True, slots=True)
class _Group:
    requests: int
    successful: int
    cost: float
    unpriced: int
    served: int
    fallbacks: int


def _groups(
    totals: Mapping[RequestKey, RequestTotals], name: Callable[[RequestKey], str]
) -> dict[str, _Group]:
    sums: dict[str, list[float]] = {}
    for key, t in totals.items():
        g = sums.setdefault(name(key), [0, 0, 0.0, 0, 0, 0])
        g[0] += t.requests
        g[1] += t.requests if key.outcome == "ok" else 0
        g[2] += t.cost_usd
        g[3] += t.unpriced
        g[4] += t.requests if key.deployment else 0
        g[5] += t.requests if key.deployment and key.fallback else 0
    return {
        n: _Group(int(g[0]), int(g[1]), float(g[2]), int(g[3]), int(g[4]), int(g[5]))
        for n, g in sums.items()
    }


def _deployment(key: RequestKey) -> str:
    if key.deployment:
        return key.deployment
    return CACHE if key.cache == "hit" else NOT_SERVED


def _day_start(day: str) -> float:
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"day must be a date like 2025-01-31, got {day!r}") from None
    return dt.datetime.combine(date, dt.time(), dt.UTC).timestamp()


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _rows(groups: dict[str, _Group], total_cost: float) -> tuple[SpendRow, ...]:
    rows = [
        SpendRow(
            name=name,
            requests=g.requests,
            successful=g.successful,
            cost_usd=g.cost,
            share=None if g.unpriced and not g.cost else _ratio(g.cost, total_cost),
            unpriced_requests=g.unpriced,
        )
        for name, g in groups.items()
    ]
    return tuple(sorted(rows, key=lambda r: (-r.cost_usd, -r.requests, r.name)))


async def daily_report(store: Store, *, day: str, config: Config) -> DailyReport:
    """The report of UTC ``day`` (``YYYY-MM-DD``) from ``store``; reads only, never writes.

    Raises ``ValueError`` for a malformed day, and the store's error if it cannot be read.
    """
    start = _day_start(day)
    ledger_rows = await store.query(
        "SELECT tenant, cost_usd, input_tokens, output_tokens, cache_hits, saved_usd "
        "FROM spend WHERE day = ?",
        (day,),
    )
    ledger = {row["tenant"]: row for row in ledger_rows}
    # Hourly aggregates for rolled-up hours, raw rows after: the day survives retention.
    log_totals = await request_totals(store, start, start + 86400.0)
    by_tenant = _groups(log_totals, lambda k: k.tenant)
    by_tier = _groups(log_totals, lambda k: k.tier or NO_TIER)
    by_deployment = _groups(log_totals, _deployment)

    budgeted = {
        name for name, tenant in config.tenants.items() if tenant.daily_budget_usd is not None
    }
    none = _Group(0, 0, 0.0, 0, 0, 0)
    tenants: list[TenantDay] = []
    for name in sorted(set(ledger) | set(by_tenant) | budgeted):
        row = ledger.get(name)
        log = by_tenant.get(name, none)
        tenant_config = config.tenants.get(name)
        budget = tenant_config.daily_budget_usd if tenant_config is not None else None
        spent = float(row["cost_usd"]) if row is not None else 0.0
        tenants.append(
            TenantDay(
                tenant=name,
                spent_usd=spent,
                daily_budget_usd=budget,
                share=_ratio(spent, budget) if budget else None,
                requests=log.requests,
                successful=log.successful,
                input_tokens=int(row["input_tokens"]) if row is not None else 0,
                output_tokens=int(row["output_tokens"]) if row is not None else 0,
                cache_hits=int(row["cache_hits"]) if row is not None else 0,
                saved_usd=float(row["saved_usd"]) if row is not None else 0.0,
                unpriced_requests=log.unpriced,
                cost_per_success_usd=_ratio(log.cost, log.successful),
            )
        )
    tenants.sort(key=lambda t: (-t.spent_usd, t.tenant))

    logs = by_tenant.values()
    cost = sum(g.cost for g in logs)
    requests = sum(g.requests for g in logs)
    successful = sum(g.successful for g in logs)
    served = sum(g.served for g in logs)
    fallbacks = sum(g.fallbacks for g in logs)
    totals = DayTotals(
        spent_usd=sum(t.spent_usd for t in tenants),
        cost_usd=cost,
        requests=requests,
        successful=successful,
        failed=requests - successful,
        input_tokens=sum(t.input_tokens for t in tenants),
        output_tokens=sum(t.output_tokens for t in tenants),
        cache_hits=sum(t.cache_hits for t in tenants),
        saved_usd=sum(t.saved_usd for t in tenants),
        unpriced_requests=sum(g.unpriced for g in logs),
        cost_per_success_usd=_ratio(cost, successful),
        served=served,
        fallbacks=fallbacks,
        fallback_ratio=_ratio(fallbacks, served),
    )
    return DailyReport(
        day=day,
        totals=totals,
        tenants=tuple(tenants),
        tiers=_rows(by_tier, cost),
        deployments=_rows(by_deployment, cost),
        alerts=tuple(await alerts_of_day(store, day)),
    )


def to_dict(report: DailyReport) -> dict[str, Any]:
    """The report as plain JSON data (``--json``): dicts, lists, numbers unrounded, None."""
    return _plain(dataclasses.asdict(report))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# -- text ---------------------------------------------------------------------------------


def _money(amount: float, unpriced: int) -> str:
    """Dollars, never $0 for what is unknown: "unpriced", or a lower bound with the count."""
    if unpriced and amount == 0:
        return "unpriced"
    if unpriced:
        return f"{format_usd(amount)} + {unpriced} unpriced"
    return format_usd(amount)


def _per_success(amount: float | None, unpriced: int) -> str:
    if amount is None:
        return "-"
    if unpriced and amount == 0:
        return "unpriced"
    return f">= {format_usd(amount)}" if unpriced else format_usd(amount)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _count(n: int) -> str:
    return f"{n:,}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Aligned columns, two spaces apart; ``align`` has one ``<`` or ``>`` per column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return (
            "  "
            + "  ".join(
                f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)
            ).rstrip()
        )

    return [line(headers), *(line(r) for r in rows)]


def render_text(report: DailyReport) -> str:
    """The report for a terminal: a summary, then tenants, tiers, deployments and alerts."""
    t = report.totals
    out = [f"routedeck daily report for {report.day} (UTC)", ""]
    summary = [
        ("Spend", _money(t.spent_usd, t.unpriced_requests)),
        (
            "Requests",
            f"{_count(t.requests)} ({_count(t.successful)} successful, {_count(t.failed)} failed)",
        ),
        ("Tokens", f"{_count(t.input_tokens)} in, {_count(t.output_tokens)} out"),
        (
            "Cache",
            f"{_plural(t.cache_hits, 'hit')} saved {format_usd(t.saved_usd)}",
        ),
        ("Cost per successful task", _per_success(t.cost_per_success_usd, t.unpriced_requests)),
        (
            "Fallback ratio",
            f"{_pct(t.fallback_ratio)} ({_count(t.fallbacks)} of {_count(t.served)} served)",
        ),
    ]
    if t.unpriced_requests:
        summary.append(
            (
                "Unpriced",
                f"{_plural(t.unpriced_requests, 'request')} of unknown cost, "
                "not in any dollar figure",
            )
        )
    width = max(len(label) for label, _ in summary)
    out += [f"{label:<{width}}  {value}" for label, value in summary]

    out += ["", "Tenants"]
    if report.tenants:
        out += _table(
            (
                "tenant",
                "spent",
                "budget",
                "used",
                "requests",
                "ok",
                "tokens in",
                "tokens out",
                "cache hits",
                "saved",
                "unpriced",
                "cost/success",
            ),
            [
                (
                    r.tenant,
                    _money(r.spent_usd, r.unpriced_requests),
                    "-" if r.daily_budget_usd is None else f"${r.daily_budget_usd:,.2f}",
                    _pct(r.share),
                    _count(r.requests),
                    _count(r.successful),
                    _count(r.input_tokens),
                    _count(r.output_tokens),
                    _count(r.cache_hits),
                    format_usd(r.saved_usd),
                    _count(r.unpriced_requests),
                    _per_success(r.cost_per_success_usd, r.unpriced_requests),
                )
                for r in report.tenants
            ],
            "<>>>>>>>>>>>",
        )
    else:
        out.append("  (none)")

    for title, label, rows in (
        ("Tiers", "tier", report.tiers),
        ("Deployments", "deployment", report.deployments),
    ):
        out += ["", title]
        if not rows:
            out.append("  (none)")
            continue
        out += _table(
            (label, "requests", "ok", "cost", "share"),
            [
                (
                    r.name,
                    _count(r.requests),
                    _count(r.successful),
                    _money(r.cost_usd, r.unpriced_requests),
                    _pct(r.share),
                )
                for r in rows
            ],
            "<>>>>",
        )

    out += ["", f"Alerts ({len(report.alerts)})"]
    if report.alerts:
        out += _table(
            ("time", "severity", "key", "message"),
            [
                (
                    dt.datetime.fromtimestamp(a.at, dt.UTC).strftime("%H:%M:%S"),
                    a.severity,
                    a.key,
                    a.message,
                )
                for a in report.alerts
            ],
            "<<<<",
        )
    else:
        out.append("  (none)")
    return "\n".join(out) + "\n"
