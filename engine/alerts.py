"""Daily alerting: budget thresholds, spend rate, unpriced traffic and fallback-ratio spikes.

`Alerts` turns what the engine measures (`AlertInputs`, once per evaluation) into `Alert` values
and sends each to three sinks: the console's alert pane (`Alerts.recent`), the log
(``routedeck.alerts``) and an optional webhook (`Alerts.deliver`).

What a caller may rely on:

- **Each alert key is raised at most once per UTC day**, across restarts: every new alert is
  committed to the ``alerts`` table (unique on day and key) before `evaluate` returns it, and
  `load` reads back the keys already raised today.
- **Kinds and keys:**

  - ``budget:<tenant>:<threshold>`` (e.g. ``budget:acme:0.8``): the tenant's settled spend today
    reached that share of its daily budget. Severity ``info`` below 80 %, ``warning`` from 80 %,
    ``critical`` from 100 %. When spend jumps past several thresholds between two evaluations,
    only the highest one is raised; the lower ones are not raised that day.
  - ``spend_rate:<tenant>``: the tenant's spend in the current UTC hour (from the request log)
    is over ``spend_rate_factor`` times its average for the same hour over the trailing
    ``trailing_days`` days, and that average is above zero. Spend rate is per tenant, so the
    alert names who is spending. The current hour is compared while it is still running, against
    whole past hours, so the alert fires only once the hour's spend is already over the line.
    Only trailing days the request log fully covers are averaged (a store that is two days old
    is compared with those two days). Once per tenant per day.
  - ``unpriced:<deployment>``: requests were served by a deployment with no price; their cost
    is unknown and not counted against budgets.
  - ``fallback_ratio``: the share of served requests answered by a fallback is over
    ``fallback_ratio`` with at least ``min_requests`` requests measured.
  - ``rollout:<release>:<halted|rolled_back>:<stage>:<time>``: a failing gate stopped a
    rollout on its own (`raise_alert`, called by the rollout; severity ``critical``).

- **The webhook receives each alert once.** `deliver` POSTs every undelivered alert of today and
  yesterday (so one raised just before midnight UTC is not lost), one POST per alert, oldest
  first, and marks it delivered once the webhook answered 2xx. The body is `Alert.as_dict` plus
  ``"source": "routedeck"`` and an ``"id"`` that is also sent as the ``Idempotency-Key`` header:
  should routedeck stop between a webhook's 2xx and recording it, the alert is sent again after
  the restart with the same id, so a receiver can drop the repeat.
- Failed POSTs (connection errors, timeouts, 408, 429, 5xx) are retried up to
  ``webhook_retries`` times with exponential backoff from `RETRY_BACKOFF_S`; any other status
  is not retried. After a failed alert the round stops and the webhook is left alone for a
  cool-down (`COOLDOWN_S`, doubling per consecutive failure up to `MAX_COOLDOWN_S`), so a dead
  webhook costs one failed POST sequence per cool-down, not one per alert per evaluation.
- Neither `evaluate` nor `deliver` raises for a store or webhook failure: they log it and carry
  on. An alert whose row could not be committed is still returned, logged and shown, but it is
  not sent to the webhook and may be raised again after a restart.
- The webhook URL may carry a token, so logs show only its scheme and host.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx

from engine.budgets import day_of
from engine.config import AlertsConfig
from state.rollups import first_request_at, hourly_cost_by_tenant
from state.store import Store

__all__ = [
    "COOLDOWN_S",
    "MAX_COOLDOWN_S",
    "RETRY_BACKOFF_S",
    "Alert",
    "AlertInputs",
    "AlertKind",
    "Alerts",
    "FallbackSignal",
    "Severity",
    "alerts_of_day",
    "format_usd",
]

log = logging.getLogger("routedeck.alerts")

AlertKind = Literal["budget", "spend_rate", "unpriced", "fallback_ratio", "rollout"]
Severity = Literal["info", "warning", "critical"]

RETRY_BACKOFF_S = 0.5
"""Wait before the first retry of a webhook POST; doubled before each further retry."""
COOLDOWN_S = 30.0
"""After a delivery round fails, `Alerts.deliver` does nothing for this long (then doubling)."""
MAX_COOLDOWN_S = 900.0

_LOG_LEVELS: dict[str, int] = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "critical": logging.CRITICAL,
}
_RETRY_STATUSES = frozenset({408, 429})
_HOUR = 3600.0
_DAY = 86400.0
_CHUNK_S = 600.0
"""Spend queries over long windows are split into chunks of this many seconds of request log,
so that no single read holds the store (and the durable ledger writes behind it) for long."""
_RECENT = 200
_MAX_ROWID = 2**63 - 1

BudgetRow = tuple[str, float, float | None, float, float | None]
"""``Budgets.view()`` row: tenant, spent today, daily budget, spent this month, monthly budget."""


def format_usd(amount: float) -> str:
    """Dollars for people: four decimals under $100 (LLM calls cost fractions of a cent)."""
    return f"${amount:,.2f}" if abs(amount) >= 100 else f"${amount:.4f}"


@dataclass(frozen=True, slots=True)
class Alert:
    key: str
    """Unique per UTC day, e.g. ``budget:acme:0.8``, ``spend_rate:acme``, ``unpriced:local-llm``,
    ``fallback_ratio``."""
    kind: AlertKind
    severity: Severity
    message: str
    """One line, with the figures, for whoever is on call."""
    detail: dict[str, Any]
    """The figures behind the message (JSON-serialisable), for the webhook and reports."""
    at: float
    """When it was raised (Unix seconds)."""
    day: str
    """The UTC day it was raised on (``YYYY-MM-DD``)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return {
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "detail": self.detail,
            "at": self.at,
            "day": self.day,
        }


class FallbackSignal(Protocol):
    """The fallback figures of the metrics window (`engine.snapshot.FallbackView` is one)."""

    @property
    def ratio(self) -> float | None: ...

    @property
    def requests(self) -> int: ...

    @property
    def by_cause(self) -> tuple[tuple[str, int], ...]: ...


@dataclass(frozen=True)
class AlertInputs:
    """What the engine measured, passed to each `Alerts.evaluate`."""

    budgets: Sequence[BudgetRow]
    """``Budgets.view()``."""
    unpriced: Mapping[str, int]
    """Unpriced deployment -> requests it served (only deployments with traffic matter)."""
    fallback: FallbackSignal | None
    """The metrics window's fallback figures; None when not measured."""
    now: float
    """Unix seconds; decides the UTC day and hour."""
    unpriced_reasons: Mapping[str, str] = field(default_factory=dict)
    """Optional: why each deployment is unpriced (``PriceBook.unpriced_reason``), for the message."""


class Alerts:
    """Raises, records and delivers alerts. One per engine; methods run on its event loop.

    ``client`` is used for webhook POSTs; without one, `Alerts` opens its own when it first needs
    it and closes it in `aclose`. ``clock`` decides "today" for `load` and `deliver`, stamps
    deliveries and times the cool-down; ``sleep`` waits between retries of a POST.

    ``async with Alerts(...) as alerts`` calls `load` on entry and `aclose` on exit.
    """

    def __init__(
        self,
        config: AlertsConfig,
        store: Store,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = config
        self._store = store
        self._client = client
        self._owns_client = False
        self._clock = clock
        self._sleep = sleep
        self._day = ""
        self._raised: set[str] = set()
        self._recent: deque[Alert] = deque(maxlen=_RECENT)
        self._spend = _HourlySpend(store, config.trailing_days)
        self._evaluating = asyncio.Lock()
        self._delivering = asyncio.Lock()
        self._failures = 0
        self._quiet_until = 0.0

    async def __aenter__(self) -> Alerts:
        await self.load()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if `Alerts` opened it; safe to call more than once."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            self._owns_client = False
            await client.aclose()

    async def load(self) -> None:
        """Read the keys already raised today (so they are not raised again) and the latest
        alerts of any day (for `recent`). Raises the store's error if it cannot be read."""
        today = day_of(self._clock())
        rows = await self._store.query(
            "SELECT at, day, key, kind, severity, message, detail FROM alerts "
            "ORDER BY id DESC LIMIT ?",
            (_RECENT,),
        )
        raised = await self._store.query("SELECT key FROM alerts WHERE day = ?", (today,))
        async with self._evaluating:
            self._day = today
            self._raised = {row["key"] for row in raised}
            self._recent = deque((_alert_from_row(row) for row in rows), maxlen=_RECENT)

    def recent(self, limit: int = 50) -> list[Alert]:
        """The latest alerts raised (or loaded at start), newest first."""
        return list(islice(self._recent, max(limit, 0)))

    # -- evaluation ------------------------------------------------------------------------

    async def evaluate(self, inputs: AlertInputs) -> list[Alert]:
        """Check every condition and return the alerts not raised before today (budget, spend
        rate, unpriced, then fallback ratio).

        Each returned alert has been committed, logged and added to `recent`. Never raises
        for a store failure (see the module docstring).
        """
        async with self._evaluating:
            now = inputs.now
            day = day_of(now)
            if day != self._day:
                self._day, self._raised = day, set()
            candidates = self._budget_alerts(inputs.budgets, now, day)
            try:
                candidates += await self._spend_rate_alerts(now, day)
            except Exception:
                log.exception("cannot check the spend rate: reading the request log failed")
            candidates += self._unpriced_alerts(inputs, now, day)
            candidates += self._fallback_alerts(inputs.fallback, now, day)
            new = [a for a in candidates if a.key not in self._raised]
            if not new:
                return []
            self._raised.update(a.key for a in new)
            await self._persist(new)
            for alert in new:
                log.log(
                    _LOG_LEVELS[alert.severity],
                    "alert %s [%s]: %s",
                    alert.key,
                    alert.severity,
                    alert.message,
                )
                self._recent.appendleft(alert)
            return new

    async def raise_alert(
        self,
        key: str,
        kind: AlertKind,
        severity: Severity,
        message: str,
        detail: dict[str, Any],
    ) -> Alert | None:
        """Raise one alert now (a gate halting a rollout), through the same once-per-day key,
        store, log and webhook path as evaluated alerts; None when the key was raised today."""
        async with self._evaluating:
            now = self._clock()
            day = day_of(now)
            if day != self._day:
                self._day, self._raised = day, set()
            if key in self._raised:
                return None
            alert = Alert(key, kind, severity, message, detail, now, day)
            self._raised.add(key)
            await self._persist([alert])
            log.log(_LOG_LEVELS[severity], "alert %s [%s]: %s", key, severity, message)
            self._recent.appendleft(alert)
            return alert

    async def _persist(self, alerts: list[Alert]) -> None:
        try:
            await self._store.write_many(
                [
                    (
                        "INSERT OR IGNORE INTO alerts "
                        "(at, day, key, kind, severity, message, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            a.at,
                            a.day,
                            a.key,
                            a.kind,
                            a.severity,
                            a.message,
                            json.dumps(a.detail, allow_nan=False, separators=(",", ":")),
                        ),
                    )
                    for a in alerts
                ]
            )
        except Exception:
            log.exception(
                "cannot record %d alert(s) in the state file; they will not reach the webhook: %s",
                len(alerts),
                ", ".join(a.key for a in alerts),
            )

    def _budget_alerts(self, budgets: Sequence[BudgetRow], now: float, day: str) -> list[Alert]:
        out: list[Alert] = []
        thresholds = sorted(set(self._config.budget_thresholds))
        for tenant, spent, budget, _month_spent, _month_budget in budgets:
            if budget is None or budget <= 0:
                continue
            share = spent / budget
            crossed = [t for t in thresholds if share >= t]
            if not crossed:
                continue
            top = crossed[-1]
            key = f"budget:{tenant}:{float(top)!r}"
            if key in self._raised:
                continue
            severity: Severity = "critical" if top >= 1.0 else "warning" if top >= 0.8 else "info"
            if top >= 1.0:
                message = (
                    f"Tenant {tenant} is at its daily budget: {format_usd(spent)} of "
                    f"${budget:,.2f} ({share:.0%}); its requests get 429s until 00:00 UTC "
                    "unless the budget is raised."
                )
            else:
                message = (
                    f"Tenant {tenant} has spent {format_usd(spent)} of its {format_usd(budget)} daily "
                    f"budget ({share:.0%}), past the {top:.0%} alert threshold."
                )
            out.append(
                Alert(
                    key=key,
                    kind="budget",
                    severity=severity,
                    message=message,
                    detail={
                        "tenant": tenant,
                        "spent_usd": spent,
                        "daily_budget_usd": budget,
                        "share": share,
                        "threshold": top,
                    },
                    at=now,
                    day=day,
                )
            )
        return out

    async def _spend_rate_alerts(self, now: float, day: str) -> list[Alert]:
        factor = self._config.spend_rate_factor
        hour_start, spend = await self._spend.current(now)
        if not any(f"spend_rate:{tenant}" not in self._raised for tenant in spend):
            return []
        days, baseline = await self._spend.baseline(hour_start)
        hour = dt.datetime.fromtimestamp(hour_start, dt.UTC).strftime("%H:%M")
        out: list[Alert] = []
        for tenant, spent in sorted(spend.items()):
            average = baseline.get(tenant, 0.0)
            # Under the floor the swing is noise: a cent against a tenth of a cent is 10x.
            if average <= 0 or spent <= factor * average or spent < self._config.spend_rate_min_usd:
                continue
            out.append(
                Alert(
                    key=f"spend_rate:{tenant}",
                    kind="spend_rate",
                    severity="warning",
                    message=(
                        f"Tenant {tenant} has spent {format_usd(spent)} since {hour} UTC, "
                        f"{spent / average:.1f}x its average of {format_usd(average)} for that "
                        f"hour over the last {days} day{'s' if days != 1 else ''} "
                        f"(alert over {factor:g}x)."
                    ),
                    detail={
                        "tenant": tenant,
                        "hour_start": hour_start,
                        "spent_usd": spent,
                        "baseline_usd": average,
                        "baseline_days": days,
                        "factor": spent / average,
                        "threshold_factor": factor,
                    },
                    at=now,
                    day=day,
                )
            )
        return out

    def _unpriced_alerts(self, inputs: AlertInputs, now: float, day: str) -> list[Alert]:
        out: list[Alert] = []
        for deployment, requests in sorted(inputs.unpriced.items()):
            if requests <= 0:
                continue
            reason = inputs.unpriced_reasons.get(deployment)
            fix = f" Why: {reason}." if reason else " Set a price on the deployment in the config."
            out.append(
                Alert(
                    key=f"unpriced:{deployment}",
                    kind="unpriced",
                    severity="warning",
                    message=(
                        f"Deployment {deployment} has no price and served {requests} "
                        f"request{'s' if requests != 1 else ''}: their cost is unknown and not "
                        f"counted against budgets.{fix}"
                    ),
                    detail={"deployment": deployment, "requests": requests, "reason": reason},
                    at=now,
                    day=day,
                )
            )
        return out

    def _fallback_alerts(
        self, fallback: FallbackSignal | None, now: float, day: str
    ) -> list[Alert]:
        config = self._config
        if (
            fallback is None
            or fallback.ratio is None
            or fallback.requests < config.min_requests
            or fallback.ratio <= config.fallback_ratio
        ):
            return []
        fallbacks = round(fallback.ratio * fallback.requests)
        causes = ", ".join(f"{cause} {n}" for cause, n in sorted(fallback.by_cause, key=_by_count))
        return [
            Alert(
                key="fallback_ratio",
                kind="fallback_ratio",
                severity="warning",
                message=(
                    f"{fallback.ratio:.0%} of requests were served by a fallback ({fallbacks} of "
                    f"{fallback.requests} in the metrics window; alert over "
                    f"{config.fallback_ratio:.0%})."
                    + (f" Failures that caused them: {causes}." if causes else "")
                ),
                detail={
                    "ratio": fallback.ratio,
                    "requests": fallback.requests,
                    "threshold": config.fallback_ratio,
                    "by_cause": dict(fallback.by_cause),
                },
                at=now,
                day=day,
            )
        ]

    # -- delivery --------------------------------------------------------------------------

    async def deliver(self) -> int:
        """POST undelivered alerts to the webhook; return how many were delivered.

        Does nothing without ``webhook_url`` or during a cool-down after a failure. Never
        raises (failures are logged); concurrent calls run one after the other.
        """
        url = self._config.webhook_url
        if url is None:
            return 0
        async with self._delivering:
            now = self._clock()
            if now < self._quiet_until:
                return 0
            yesterday = day_of(now - _DAY)
            try:
                rows = await self._store.query(
                    "SELECT id, at, day, key, kind, severity, message, detail FROM alerts "
                    "WHERE delivered_at IS NULL AND day >= ? ORDER BY id",
                    (yesterday,),
                )
            except Exception:
                log.exception("cannot read undelivered alerts from the state file")
                return 0
            delivered = 0
            for row in rows:
                alert = _alert_from_row(row)
                if not await self._post(url, alert):
                    self._failures += 1
                    pause = min(COOLDOWN_S * 2 ** (self._failures - 1), MAX_COOLDOWN_S)
                    self._quiet_until = self._clock() + pause
                    log.error(
                        "webhook %s: alert %s not delivered; trying again in %.0f s",
                        _where(url),
                        alert.key,
                        pause,
                    )
                    break
                self._failures = 0
                try:
                    await self._store.write(
                        "UPDATE alerts SET delivered_at = ? WHERE id = ?",
                        (self._clock(), row["id"]),
                    )
                except Exception:
                    log.exception(
                        "alert %s was delivered but cannot be marked so; it may be sent again",
                        alert.key,
                    )
                    break
                delivered += 1
            return delivered

    async def _post(self, url: str, alert: Alert) -> bool:
        alert_id = f"{alert.day}/{alert.key}"
        body = json.dumps(
            {"source": "routedeck", "id": alert_id, **alert.as_dict()},
            allow_nan=False,
            separators=(",", ":"),
        ).encode()
        headers = {
            "content-type": "application/json",
            "user-agent": "routedeck",
            "idempotency-key": alert_id,
        }
        client = self._http()
        attempts = self._config.webhook_retries + 1
        for attempt in range(attempts):
            if attempt:
                await self._sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            try:
                response = await client.post(
                    url, content=body, headers=headers, timeout=self._config.webhook_timeout_s
                )
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return True
                problem = f"HTTP {status}"
                if status < 500 and status not in _RETRY_STATUSES:
                    log.warning(
                        "webhook %s refused alert %s with %s; not retrying",
                        _where(url),
                        alert.key,
                        problem,
                    )
                    return False
            log.warning(
                "webhook %s: attempt %d of %d for alert %s failed: %s",
                _where(url),
                attempt + 1,
                attempts,
                alert.key,
                problem,
            )
        return False

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
            self._owns_client = True
        return self._client

    # -- the loop --------------------------------------------------------------------------

    async def run(
        self,
        inputs: Callable[[], AlertInputs],
        *,
        interval_s: float = 15.0,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Evaluate and deliver every ``interval_s`` seconds until cancelled; never raises.

        Rounds where ``active()`` is false are skipped: of several processes sharing a state
        file, only the one holding the automation lease raises and delivers alerts."""
        while True:
            if active():
                try:
                    await self.evaluate(inputs())
                except Exception:
                    log.exception("alert evaluation failed")
                await self.deliver()
            await asyncio.sleep(interval_s)


class _HourlySpend:
    """Per-tenant spend in the current UTC hour and on the same hour of trailing days.

    The current hour is summed incrementally: each call reads only request-log rows committed
    since the previous call (by rowid), so the cost per evaluation does not grow with traffic
    over the hour. The baseline is read once per hour, in chunks.
    """

    def __init__(self, store: Store, trailing_days: int) -> None:
        self._store = store
        self._trailing_days = trailing_days
        self._hour = -1.0
        self._rowid = 0
        self._spend: dict[str, float] = {}
        self._baseline_hour = -1.0
        self._baseline: tuple[int, dict[str, float]] = (0, {})

    async def current(self, now: float) -> tuple[float, dict[str, float]]:
        """The current hour's start and each tenant's spend in it so far."""
        hour = now - now % _HOUR
        rows = await self._store.query("SELECT MAX(rowid) FROM requests")
        top = int(rows[0][0] or 0)
        if hour != self._hour:
            spend = await self._sum(hour, hour + _HOUR, top)
            self._hour, self._spend = hour, spend
        elif top > self._rowid:
            rows = await self._store.query(
                # The unary + keeps SQLite on the rowid range instead of the started_at index.
                "SELECT tenant, TOTAL(cost_usd) FROM requests WHERE rowid > ? AND rowid <= ? "
                "AND +started_at >= ? AND +started_at < ? GROUP BY tenant",
                (self._rowid, top, hour, hour + _HOUR),
            )
            for tenant, cost in rows:
                self._spend[tenant] = self._spend.get(tenant, 0.0) + cost
        self._rowid = top
        return hour, dict(self._spend)

    async def baseline(self, hour: float) -> tuple[int, dict[str, float]]:
        """How many trailing days the request log covers for this hour, and each tenant's
        average spend in it over those days."""
        if hour == self._baseline_hour:
            return self._baseline
        # Past hours come from the hourly aggregates once rolled up, so the baseline outlives
        # the raw log's retention.
        first = await first_request_at(self._store)
        totals: dict[str, float] = {}
        days = 0
        for back in range(1, self._trailing_days + 1):
            start = hour - back * _DAY
            if first is None or first > start:
                break  # the log did not exist for the whole of that hour, nor before it
            days += 1
            spend = await hourly_cost_by_tenant(self._store, start, start + _HOUR)
            for tenant, cost in spend.items():
                totals[tenant] = totals.get(tenant, 0.0) + cost
        averages = {tenant: total / days for tenant, total in totals.items()} if days else {}
        self._baseline_hour, self._baseline = hour, (days, averages)
        return self._baseline

    async def _sum(self, start: float, end: float, top: int | None) -> dict[str, float]:
        totals: dict[str, float] = {}
        lo = start
        while lo < end:
            hi = min(lo + _CHUNK_S, end)
            rows = await self._store.query(
                "SELECT tenant, TOTAL(cost_usd) FROM requests "
                "WHERE started_at >= ? AND started_at < ? AND rowid <= ? GROUP BY tenant",
                (lo, hi, _MAX_ROWID if top is None else top),
            )
            for tenant, cost in rows:
                totals[tenant] = totals.get(tenant, 0.0) + cost
            lo = hi
        return totals


async def alerts_of_day(store: Store, day: str) -> list[Alert]:
    """The alerts raised on UTC ``day`` (``YYYY-MM-DD``), oldest first."""
    rows = await store.query(
        "SELECT at, day, key, kind, severity, message, detail FROM alerts "
        "WHERE day = ? ORDER BY id",
        (day,),
    )
    return [_alert_from_row(row) for row in rows]


def _alert_from_row(row: Any) -> Alert:
    return Alert(
        key=row["key"],
        kind=row["kind"],
        severity=row["severity"],
        message=row["message"],
        detail=json.loads(row["detail"]),
        at=row["at"],
        day=row["day"],
    )


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def _where(url: str) -> str:
    """Scheme and host of a URL: enough to tell webhooks apart, without path or token."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
