"""Hourly aggregates of the request log, and the retention that keeps the state file bounded.

The request log (``requests``, ``attempts``) has a row per request and per upstream attempt;
at production rates it grows without end. Every complete hour is therefore *rolled up* into
``request_hours`` and ``attempt_hours``: one row per hour and combination of the dimensions a
report groups by, with counts, tokens, dollars and latency histograms. Raw rows older than the
retention age are then deleted; reports read the aggregates for rolled-up hours and the raw
rows after them, so they answer the same before and after pruning.

- `roll_up(store, until=...)` aggregates every hour before ``until`` not rolled up yet, one
  hour per transaction together with the ``rollup_until`` marker (in ``kv``), so an hour is
  never counted twice or half; re-running an hour replaces its rows (idempotent).
- `prune(store, ...)` deletes raw rows older than the retention age — never rows that are not
  rolled up yet — and aggregates older than theirs, in chunks so that the writer stays
  responsive.
- `request_totals` / `attempt_totals` read a window: aggregates for the rolled-up hours (whole
  hours: a window starting mid-hour includes that hour), raw rows after the marker.

Latency is kept as a histogram over `LATENCY_BOUNDS_MS` (each bound 20% above the last, from
1 ms to about 10 minutes), so a p95 read from aggregates is within one bucket — 20% — of the
exact figure; `quantile` interpolates inside the bucket.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from state.store import Store

HOUR = 3600.0
KV_ROLLUP_UNTIL = "rollup_until"
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(1.2**k, 3) for k in range(74))
"""Upper bounds of the latency buckets in milliseconds; the last bucket is open."""
_CHUNK = 5000


def bucket_of(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram, interpolated inside its bucket."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(histogram):
        count = histogram[index]
        if seen + count >= rank:
            low = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            high = LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
            return low + (high - low) * ((rank - seen) / count)
        seen += count
    return LATENCY_BOUNDS_MS[-1]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What a report groups requests by. Absent values are "" (release 0)."""

    tenant: str
    task: str
    tier: str
    tier_reason: str
    deployment: str
    provider: str
    arm: str
    release: int
    outcome: str
    cache: str
    stream: bool
    fallback: bool


@dataclass(slots=True)
class RequestTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    """Known cost only; ``unpriced`` counts the requests whose cost is unknown."""
    unpriced: int = 0
    saved_usd: float = 0.0
    trimmed_tokens: int = 0
    latency_ms_sum: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)
    ttft: dict[int, int] = field(default_factory=dict)

    def merge(self, other: RequestTotals) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.unpriced += other.unpriced
        self.saved_usd += other.saved_usd
        self.trimmed_tokens += other.trimmed_tokens
        self.latency_ms_sum += other.latency_ms_sum
        _merge(self.latency, other.latency)
        _merge(self.ttft, other.ttft)


@dataclass(frozen=True, slots=True)
class AttemptKey:
    deployment: str
    provider: str
    model: str
    outcome: str
    followed: bool
    """Another attempt of the same request came after this one (a retry or a fallback)."""


@dataclass(slots=True)
class AttemptTotals:
    attempts: int = 0
    latency_ms_sum: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)

    def merge(self, other: AttemptTotals) -> None:
        self.attempts += other.attempts
        self.latency_ms_sum += other.latency_ms_sum
        _merge(self.latency, other.latency)


def _merge(into: dict[int, int], other: Mapping[int, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


# -- aggregation of raw rows ---------------------------------------------------------------

_REQUEST_COLUMNS = (
    "tenant, task, tier, tier_reason, deployment, provider, arm, release, outcome, cache, "
    "stream, fallback, input_tokens, output_tokens, cost_usd, saved_usd, trimmed_tokens, "
    "latency_ms, ttft_ms"
)
_ATTEMPT_QUERY = (
    "SELECT a.deployment, a.provider, a.model, a.outcome, a.latency_ms, "
    "a.attempt < (SELECT MAX(b.attempt) FROM attempts b WHERE b.request_id = a.request_id) "
    "AS followed FROM attempts a WHERE a.started_at >= ? AND a.started_at < ?"
)


def _add_request(out: dict[RequestKey, RequestTotals], row: Any) -> None:
    key = RequestKey(
        tenant=row["tenant"],
        task=row["task"] or "",
        tier=row["tier"] or "",
        tier_reason=row["tier_reason"] or "",
        deployment=row["deployment"] or "",
        provider=row["provider"] or "",
        arm=row["arm"],
        release=row["release"] or 0,
        outcome=row["outcome"],
        cache=row["cache"],
        stream=bool(row["stream"]),
        fallback=bool(row["fallback"]),
    )
    totals = out.get(key)
    if totals is None:
        totals = out[key] = RequestTotals()
    totals.requests += 1
    totals.input_tokens += row["input_tokens"] or 0
    totals.output_tokens += row["output_tokens"] or 0
    cost = row["cost_usd"]
    if cost is not None:
        totals.cost_usd += cost
    elif row["deployment"] is not None and row["cache"] != "hit":
        totals.unpriced += 1  # a deployment served it and its price is unknown
    totals.saved_usd += row["saved_usd"] or 0.0
    totals.trimmed_tokens += row["trimmed_tokens"] or 0
    latency = row["latency_ms"]
    totals.latency_ms_sum += latency
    b = bucket_of(latency)
    totals.latency[b] = totals.latency.get(b, 0) + 1
    if row["ttft_ms"] is not None:
        b = bucket_of(row["ttft_ms"])
        totals.ttft[b] = totals.ttft.get(b, 0) + 1


def _add_attempt(out: dict[AttemptKey, AttemptTotals], row: Any) -> None:
    key = AttemptKey(
        row["deployment"], row["provider"], row["model"], row["outcome"], bool(row["followed"])
    )
    totals = out.get(key)
    if totals is None:
        totals = out[key] = AttemptTotals()
    totals.attempts += 1
    totals.latency_ms_sum += row["latency_ms"]
    b = bucket_of(row["latency_ms"])
    totals.latency[b] = totals.latency.get(b, 0) + 1


async def _raw_requests(store: Store, start: float, end: float) -> dict[RequestKey, RequestTotals]:
    out: dict[RequestKey, RequestTotals] = {}
    lo = start
    while lo < end:  # an hour at a time, so that a long window does not hold the connection
        hi = min(end, lo - lo % HOUR + HOUR)
        rows = await store.query(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE started_at >= ? AND started_at < ?",
            (lo, hi),
        )
        for row in rows:
            _add_request(out, row)
        lo = hi
    return out


async def _raw_attempts(store: Store, start: float, end: float) -> dict[AttemptKey, AttemptTotals]:
    out: dict[AttemptKey, AttemptTotals] = {}
    lo = start
    while lo < end:
        hi = min(end, lo - lo % HOUR + HOUR)
        for row in await store.query(_ATTEMPT_QUERY, (lo, hi)):
            _add_attempt(out, row)
        lo = hi
    return out


# -- rolling up ------------------------------------------------------------------------------


async def rolled_up_until(store: Store) -> float:
    """Every hour before this time is in the aggregates (0: nothing rolled up yet)."""
    value = await store.kv_get(KV_ROLLUP_UNTIL)
    return float(value) if value is not None else 0.0


async def roll_up(store: Store, *, until: float) -> int:
    """Aggregate every complete hour before ``until`` not rolled up yet; returns how many
    hours held requests. ``until`` is rounded down to an hour."""
    until -= until % HOUR
    since = await rolled_up_until(store)
    if since >= until:
        return 0
    rows = await store.query(
        "SELECT DISTINCT CAST(started_at / 3600 AS INTEGER) FROM requests "
        "WHERE started_at >= ? AND started_at < ? UNION "
        "SELECT DISTINCT CAST(started_at / 3600 AS INTEGER) FROM attempts "
        "WHERE started_at >= ? AND started_at < ?",
        (since, until, since, until),
    )
    hours = sorted(int(r[0]) * HOUR for r in rows)
    for hour in hours:
        requests = await _raw_requests(store, hour, hour + HOUR)
        attempts = await _raw_attempts(store, hour, hour + HOUR)
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM request_hours WHERE hour = ?", (hour,)),
            ("DELETE FROM attempt_hours WHERE hour = ?", (hour,)),
        ]
        statements += [_request_row(hour, k, t) for k, t in requests.items()]
        statements += [_attempt_row(hour, k, t) for k, t in attempts.items()]
        statements.append(_marker(hour + HOUR))
        await store.write_many(statements)
    await store.write_many([_marker(until)])
    return len(hours)


def _marker(until: float) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
        "SET value = MAX(CAST(kv.value AS REAL), excluded.value), updated_at = excluded.updated_at",
        (KV_ROLLUP_UNTIL, json.dumps(until), until),
    )


def _request_row(hour: float, k: RequestKey, t: RequestTotals) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO request_hours (hour, tenant, task, tier, tier_reason, deployment, provider, "
        "arm, release, outcome, cache, stream, fallback, requests, input_tokens, output_tokens, "
        "cost_usd, unpriced, saved_usd, trimmed_tokens, latency_ms_sum, latency_hist, ttft_hist) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hour,
            k.tenant,
            k.task,
            k.tier,
            k.tier_reason,
            k.deployment,
            k.provider,
            k.arm,
            k.release,
            k.outcome,
            k.cache,
            int(k.stream),
            int(k.fallback),
            t.requests,
            t.input_tokens,
            t.output_tokens,
            t.cost_usd,
            t.unpriced,
            t.saved_usd,
            t.trimmed_tokens,
            t.latency_ms_sum,
            _hist(t.latency),
            _hist(t.ttft),
        ),
    )


def _attempt_row(hour: float, k: AttemptKey, t: AttemptTotals) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO attempt_hours (hour, deployment, provider, model, outcome, followed, "
        "attempts, latency_ms_sum, latency_hist) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hour,
            k.deployment,
            k.provider,
            k.model,
            k.outcome,
            int(k.followed),
            t.attempts,
            t.latency_ms_sum,
            _hist(t.latency),
        ),
    )


def _hist(histogram: Mapping[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(histogram.items())}, separators=(",", ":"))


def _unhist(text: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in json.loads(text).items()}


# -- reading a window --------------------------------------------------------------------------


async def request_totals(store: Store, start: float, end: float) -> dict[RequestKey, RequestTotals]:
    """Requests started in [start, end), by every dimension: aggregates for rolled-up hours
    (whole hours), raw rows after them."""
    marker = await rolled_up_until(store)
    out: dict[RequestKey, RequestTotals] = {}
    if start < marker:
        rows = await store.query(
            "SELECT * FROM request_hours WHERE hour >= ? AND hour < ?",
            (start - start % HOUR, min(end, marker)),
        )
        for row in rows:
            key = RequestKey(
                row["tenant"],
                row["task"],
                row["tier"],
                row["tier_reason"],
                row["deployment"],
                row["provider"],
                row["arm"],
                row["release"],
                row["outcome"],
                row["cache"],
                bool(row["stream"]),
                bool(row["fallback"]),
            )
            totals = RequestTotals(
                requests=row["requests"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cost_usd=row["cost_usd"],
                unpriced=row["unpriced"],
                saved_usd=row["saved_usd"],
                trimmed_tokens=row["trimmed_tokens"],
                latency_ms_sum=row["latency_ms_sum"],
                latency=_unhist(row["latency_hist"]),
                ttft=_unhist(row["ttft_hist"]),
            )
            _merge_into(out, key, totals)
    if end > marker:
        for key, totals in (await _raw_requests(store, max(start, marker), end)).items():
            _merge_into(out, key, totals)
    return out


async def attempt_totals(store: Store, start: float, end: float) -> dict[AttemptKey, AttemptTotals]:
    """Upstream attempts started in [start, end), like `request_totals`."""
    marker = await rolled_up_until(store)
    out: dict[AttemptKey, AttemptTotals] = {}
    if start < marker:
        rows = await store.query(
            "SELECT * FROM attempt_hours WHERE hour >= ? AND hour < ?",
            (start - start % HOUR, min(end, marker)),
        )
        for row in rows:
            key = AttemptKey(
                row["deployment"],
                row["provider"],
                row["model"],
                row["outcome"],
                bool(row["followed"]),
            )
            totals = AttemptTotals(
                row["attempts"], row["latency_ms_sum"], _unhist(row["latency_hist"])
            )
            _merge_into(out, key, totals)
    if end > marker:
        for key, totals in (await _raw_attempts(store, max(start, marker), end)).items():
            _merge_into(out, key, totals)
    return out


def _merge_into(out: dict[Any, Any], key: Any, totals: Any) -> None:
    existing = out.get(key)
    if existing is None:
        out[key] = totals
    else:
        existing.merge(totals)


async def hourly_cost_by_tenant(store: Store, start: float, end: float) -> dict[str, float]:
    """Known dollars per tenant for requests started in [start, end) (hour-aligned when rolled
    up), for spend-rate alerts."""
    totals: dict[str, float] = {}
    for key, t in (await request_totals(store, start, end)).items():
        totals[key.tenant] = totals.get(key.tenant, 0.0) + t.cost_usd
    return totals


async def first_request_at(store: Store) -> float | None:
    """When the oldest request on record (raw or aggregated) started."""
    rows = await store.query(
        "SELECT MIN(t) FROM (SELECT MIN(hour) AS t FROM request_hours "
        "UNION ALL SELECT MIN(started_at) FROM requests)"
    )
    value = rows[0][0]
    return float(value) if value is not None else None


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pruned:
    requests: int
    attempts: int
    request_hours: int
    attempt_hours: int
    audit: int


async def prune(
    store: Store,
    *,
    raw_before: float,
    hours_before: float,
    audit_before: float | None,
) -> Pruned:
    """Delete raw rows started before ``raw_before`` (only hours already rolled up),
    aggregates of hours before ``hours_before`` and audit entries before ``audit_before``."""
    raw_before = min(raw_before, await rolled_up_until(store))
    requests = await _delete(store, "requests", "started_at", raw_before)
    attempts = await _delete(store, "attempts", "started_at", raw_before)
    request_hours = await _delete(store, "request_hours", "hour", hours_before)
    attempt_hours = await _delete(store, "attempt_hours", "hour", hours_before)
    audit = 0
    if audit_before is not None:
        audit = await _delete(store, "audit", "at", audit_before)
    return Pruned(requests, attempts, request_hours, attempt_hours, audit)


async def _delete(store: Store, table: str, column: str, before: float) -> int:
    deleted = 0
    while True:
        rows = await store.query(
            f"SELECT rowid FROM {table} WHERE {column} < ? LIMIT {_CHUNK}", (before,)
        )
        if not rows:
            return deleted
        ids: Iterable[int] = [r[0] for r in rows]
        marks = ",".join("?" * len(rows))
        await store.write(f"DELETE FROM {table} WHERE rowid IN ({marks})", tuple(ids))
        deleted += len(rows)
        if len(rows) < _CHUNK:
            return deleted
