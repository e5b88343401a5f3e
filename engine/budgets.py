"""Per-tenant dollar budgets that hold under concurrency.

Before a request is sent, the worst case it could cost (its input estimate plus its max output
at the chosen deployment's price) is *reserved* against the tenant's daily and monthly budgets;
a fallback to another deployment resizes the reservation (and may be refused); when the
request ends its actual cost is *settled* and the reservation released. Checks and reservations
happen without an await between them, so on the single event loop fifty concurrent requests
at the edge of a budget cannot overshoot it: each sees the others' reservations.

Settled spend is written to the ``spend`` table (per tenant per UTC day) durably before the
answer is acknowledged, and read back at start, so budgets survive a restart. A request whose
price is unknown reserves nothing and is recorded as unpriced (never as $0).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.config import TenantConfig
from state.store import Store


def day_of(now: float) -> str:
    """The UTC day of a Unix time, ``YYYY-MM-DD`` (called several times per request)."""
    return _day_of_index(int(now // 86400))


@functools.lru_cache(maxsize=8)
def _day_of_index(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m-%d")


def _next_day(now: float) -> float:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()


def _next_month(now: float) -> float:
    d = dt.datetime.fromtimestamp(now, dt.UTC).date()
    first = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return dt.datetime.combine(first, dt.time(), dt.UTC).timestamp()


class BudgetExceeded(Exception):
    def __init__(
        self,
        tenant: str,
        which: str,
        limit: float,
        committed: float,
        needed: float,
        resets_at: float,
        now: float,
    ) -> None:
        self.tenant = tenant
        self.which = which
        """``daily`` or ``monthly``."""
        self.retry_after = max(1.0, resets_at - now)
        self.message = (
            f"Tenant {tenant!r} is at its {which} budget: ${committed:.4f} spent or reserved of "
            f"${limit:.2f}, and this request could cost up to ${needed:.4f}. The budget resets "
            f"in {math.ceil(self.retry_after / 60)} min (UTC); ask for a higher budget, or send "
            "a shorter request with a lower max_tokens."
        )
        super().__init__(self.message)


@dataclass(slots=True)
class _Account:
    day: str
    month: str
    spent_day: float = 0.0
    spent_month: float = 0.0
    reserved: float = 0.0
    unrecorded: float = 0.0
    """Settled here but not yet committed to the ledger (between `_settle` and `record`)."""


class Reservation:
    """A request's hold on its tenant's budgets; `resize` per attempt, then `settle` once."""

    def __init__(self, budgets: Budgets, tenant: str) -> None:
        self._budgets = budgets
        self.tenant = tenant
        self.amount = 0.0
        self.settled = False

    def resize(self, amount: float | None) -> None:
        """Hold ``amount`` instead of the current hold; raises `BudgetExceeded` (keeping the
        current hold) when that does not fit. None (unpriced) holds nothing."""
        self._budgets._resize(self, amount or 0.0)

    def settle(self, cost: float | None) -> None:
        """Release the hold and add the actual cost (None: unpriced, adds nothing)."""
        if not self.settled:
            self.settled = True
            self._budgets._settle(self, cost or 0.0)


class Budgets:
    def __init__(
        self, tenants: Mapping[str, TenantConfig], store: Store, *, clock: Callable[[], float]
    ) -> None:
        self._tenants = tenants
        self._store = store
        self._clock = clock
        self._accounts: dict[str, _Account] = {}

    async def load(self) -> None:
        """Read this month's settled spend for every tenant from the ledger.

        Called at start, and again every sync interval (`refresh`) so that spend settled by
        other processes sharing the state file counts here too."""
        now = self._clock()
        today = day_of(now)
        month = today[:7]
        rows = await self._store.query(
            "SELECT tenant, day, cost_usd FROM spend WHERE day >= ?", (month + "-01",)
        )
        totals: dict[str, list[float]] = {}
        for row in rows:
            sums = totals.setdefault(row["tenant"], [0.0, 0.0])
            sums[1] += row["cost_usd"]
            if row["day"] == today:
                sums[0] += row["cost_usd"]
        for tenant in set(totals) | set(self._accounts):
            account = self._account(tenant, now)
            day, month_total = totals.get(tenant, (0.0, 0.0))
            account.spent_day = day + account.unrecorded
            account.spent_month = month_total + account.unrecorded

    refresh = load

    def _account(self, tenant: str, now: float) -> _Account:
        today = day_of(now)
        account = self._accounts.get(tenant)
        if account is None:
            account = self._accounts[tenant] = _Account(today, today[:7])
        if account.day != today:
            account.day, account.spent_day = today, 0.0
            if account.month != today[:7]:
                account.month, account.spent_month = today[:7], 0.0
        return account

    def open(self, tenant: str) -> Reservation:
        return Reservation(self, tenant)

    def _resize(self, reservation: Reservation, amount: float) -> None:
        config = self._tenants.get(reservation.tenant)
        now = self._clock()
        account = self._account(reservation.tenant, now)
        delta = amount - reservation.amount
        if config is not None and delta > 0:
            others = account.reserved - reservation.amount
            for which, limit, spent, resets in (
                ("daily", config.daily_budget_usd, account.spent_day, _next_day(now)),
                ("monthly", config.monthly_budget_usd, account.spent_month, _next_month(now)),
            ):
                if limit is not None and spent + others + amount > limit:
                    raise BudgetExceeded(
                        reservation.tenant, which, limit, spent + others, amount, resets, now
                    )
        account.reserved += delta
        reservation.amount = amount

    def _settle(self, reservation: Reservation, cost: float) -> None:
        account = self._account(reservation.tenant, self._clock())
        account.reserved -= reservation.amount
        reservation.amount = 0.0
        account.spent_day += cost
        account.spent_month += cost
        account.unrecorded += cost

    def spent_today(self, tenant: str) -> float:
        return self._account(tenant, self._clock()).spent_day

    def view(self) -> list[tuple[str, float, float | None, float, float | None]]:
        """(tenant, spent today, daily budget, spent this month, monthly budget) per tenant."""
        now = self._clock()
        names = sorted(set(self._accounts) | set(self._tenants))
        out = []
        for name in names:
            account = self._account(name, now)
            config = self._tenants.get(name)
            out.append(
                (
                    name,
                    account.spent_day,
                    config.daily_budget_usd if config else None,
                    account.spent_month,
                    config.monthly_budget_usd if config else None,
                )
            )
        return out

    async def record(
        self,
        tenant: str,
        *,
        cost: float | None,
        input_tokens: int,
        output_tokens: int,
        cache_hit: bool,
        saved: float | None,
        now: float,
    ) -> None:
        """Add one finished request to the durable daily ledger (committed when this returns).

        The commit does not carry the request-log rows queued before it (``after_log=False``):
        the request waits for this write, and the rows follow in their own group."""
        await self._store.write(
            "INSERT INTO spend (tenant, day, cost_usd, requests, input_tokens, output_tokens, "
            "unpriced_requests, cache_hits, saved_usd) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, day) DO UPDATE SET cost_usd = cost_usd + excluded.cost_usd, "
            "requests = requests + 1, input_tokens = input_tokens + excluded.input_tokens, "
            "output_tokens = output_tokens + excluded.output_tokens, "
            "unpriced_requests = unpriced_requests + excluded.unpriced_requests, "
            "cache_hits = cache_hits + excluded.cache_hits, "
            "saved_usd = saved_usd + excluded.saved_usd",
            (
                tenant,
                day_of(now),
                cost or 0.0,
                input_tokens,
                output_tokens,
                1 if cost is None and not cache_hit else 0,
                1 if cache_hit else 0,
                saved or 0.0,
            ),
            after_log=False,
        )
        if cost:
            account = self._account(tenant, now)
            account.unrecorded = max(0.0, account.unrecorded - cost)
