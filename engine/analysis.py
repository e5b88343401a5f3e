"""`routedeck report` over a window: the questions an operator asks of the stored logs.

`window_report` reads the hourly aggregates and the raw request log after them (see
`state.rollups`), so it answers the same before and after retention prunes the raw rows, and
needs no running engine. It answers:

1. **What should not be hitting the strongest tier**: every tier's requests and cost share by
   task type and by tier reason; on the most expensive tier (by its first deployment's price),
   task types whose requests are small — average input and output under
   ``[report] low_complexity_max_input_tokens`` / ``low_complexity_max_output_tokens`` — are
   flagged with what they would have cost on the cheapest tier and the difference (avoidable).
2. **What triggers fallbacks**: the effective policy (triggers, attempts, retry budget,
   breaker, cost ceiling) and the fallbacks observed: failed attempts that another attempt
   followed, by cause and by deployment.
3. **Cost per successful task** by task type, tier, tenant and arm: every request's cost (failed
   ones and the failed attempts before a fallback included) over the successful requests.
4. **Rollouts in the window**: for each candidate release that served traffic, its fallback
   ratio and cost per successful task against the baseline it was compared with, over the
   time the candidate was live (whole hours once rolled up).
5. **Headline figures**: p95 latency, fallback ratio, average tokens per request, cost per
   successful task, and errors by provider and model.

Definitions: a request is *successful* when its outcome is ``ok`` (cache hits included). The
*fallback ratio* is requests a fallback served over requests a deployment served. Unpriced
requests (served by a deployment without a known price) are counted, never priced at $0; a
dollar figure with unpriced requests behind it is a lower bound. p95 figures come from latency
histograms (buckets 20% apart), so they are within a bucket of the exact value.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.alerts import format_usd
from engine.config import Config
from engine.pricing import Price, PriceBook
from state.rollups import (
    AttemptKey,
    AttemptTotals,
    RequestKey,
    RequestTotals,
    attempt_totals,
    quantile,
    request_totals,
    rolled_up_until,
)
from state.store import Store

NONE = "(none)"
CLIENT_OUTCOMES = frozenset(
    {"bad_request", "context_length", "client_closed", "auth", "quota", "budget", "input_cap"}
)


@dataclass(frozen=True, slots=True)
class CostRow:
    name: str
    requests: int
    successes: int
    cost_usd: float
    unpriced: int
    share_of_cost: float | None
    cost_per_success_usd: float | None
    avg_input_tokens: float | None
    avg_output_tokens: float | None


@dataclass(frozen=True, slots=True)
class TierUse:
    tier: str
    first_deployment: str
    price_per_mtok: tuple[float, float] | None
    """(input, output) dollars per million tokens of the tier's first deployment."""
    totals: CostRow
    by_task: tuple[CostRow, ...]
    by_reason: tuple[CostRow, ...]


@dataclass(frozen=True, slots=True)
class Misrouted:
    """Low-complexity work on the strongest tier, and what it would cost where it belongs."""

    task: str
    tier: str
    belongs_to: str
    requests: int
    avg_input_tokens: float
    avg_output_tokens: float
    cost_usd: float
    would_cost_usd: float
    avoidable_usd: float


@dataclass(frozen=True, slots=True)
class FallbackCause:
    cause: str
    deployment: str
    count: int


@dataclass(frozen=True, slots=True)
class Fallbacks:
    policy: tuple[str, ...]
    """The effective policy, one line each."""
    served: int
    fallbacks: int
    ratio: float | None
    by_cause: tuple[tuple[str, int], ...]
    """Failed attempts another attempt followed, by cause."""
    by_deployment: tuple[FallbackCause, ...]


@dataclass(frozen=True, slots=True)
class RolloutDelta:
    candidate: str
    baseline: str
    candidate_requests: int
    baseline_requests: int
    candidate_fallback_ratio: float | None
    baseline_fallback_ratio: float | None
    fallback_delta: float | None
    """Candidate minus baseline, in share points (0.02 = 2 points)."""
    candidate_cost_per_success_usd: float | None
    baseline_cost_per_success_usd: float | None
    cost_delta_usd: float | None
    cost_ratio: float | None


@dataclass(frozen=True, slots=True)
class ProviderErrors:
    provider: str
    deployment: str
    model: str
    attempts: int
    errors: int
    error_rate: float | None
    by_cause: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Headline:
    requests: int
    successes: int
    failed: int
    cache_hits: int
    p95_ms: float | None
    fallback_ratio: float | None
    avg_tokens_per_request: float | None
    """Input plus output tokens over requests that had an answer or an attempt with usage."""
    cost_usd: float
    unpriced: int
    cost_per_success_usd: float | None
    errors: tuple[ProviderErrors, ...]


@dataclass(frozen=True, slots=True)
class WindowReport:
    start: float
    end: float
    rolled_up_until: float
    """Hours before this come from hourly aggregates (whole hours)."""
    headline: Headline
    strongest_tier: str | None
    tiers: tuple[TierUse, ...]
    misrouted: tuple[Misrouted, ...]
    fallbacks: Fallbacks
    cost_by_task: tuple[CostRow, ...]
    cost_by_tier: tuple[CostRow, ...]
    cost_by_tenant: tuple[CostRow, ...]
    cost_by_arm: tuple[CostRow, ...]
    rollouts: tuple[RolloutDelta, ...]


# -- building ----------------------------------------------------------------------------------


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _sum(items: Iterable[tuple[RequestKey, RequestTotals]]) -> tuple[RequestTotals, int]:
    """Merged totals and the successes among them."""
    total = RequestTotals()
    successes = 0
    for key, t in items:
        total.merge(t)
        if key.outcome == "ok":
            successes += t.requests
    return total, successes


def _cost_row(
    name: str, items: Sequence[tuple[RequestKey, RequestTotals]], whole: float
) -> CostRow:
    t, successes = _sum(items)
    with_tokens = sum(v.requests for k, v in items if k.deployment or k.cache == "hit")
    return CostRow(
        name=name,
        requests=t.requests,
        successes=successes,
        cost_usd=t.cost_usd,
        unpriced=t.unpriced,
        share_of_cost=_ratio(t.cost_usd, whole),
        cost_per_success_usd=_ratio(t.cost_usd, successes),
        avg_input_tokens=_ratio(t.input_tokens, with_tokens),
        avg_output_tokens=_ratio(t.output_tokens, with_tokens),
    )


def _group(
    items: Sequence[tuple[RequestKey, RequestTotals]],
    by: Callable[[RequestKey], str],
    whole: float,
) -> tuple[CostRow, ...]:
    groups: dict[str, list[tuple[RequestKey, RequestTotals]]] = {}
    for key, t in items:
        groups.setdefault(by(key), []).append((key, t))
    rows = [_cost_row(name, members, whole) for name, members in groups.items()]
    return tuple(sorted(rows, key=lambda r: (-r.cost_usd, -r.requests, r.name)))


def _tier_price(config: Config, prices: PriceBook, tier: str) -> tuple[str, Price | None]:
    first = config.tiers[tier].names[0]
    return first, prices.price(first)


def _weight(price: Price | None) -> float:
    return -1.0 if price is None else price.input_per_mtok + price.output_per_mtok


async def window_report(
    store: Store, config: Config, *, start: float, end: float, prices: PriceBook | None = None
) -> WindowReport:
    """The report of requests started in [start, end); reads only."""
    prices = prices or PriceBook(config)
    requests = list((await request_totals(store, start, end)).items())
    attempts = list((await attempt_totals(store, start, end)).items())
    total, successes = _sum(requests)
    whole = total.cost_usd

    # 1. Tiers, task types and reasons; the strongest tier's small work.
    tier_prices = {name: _tier_price(config, prices, name) for name in config.tiers}
    seen_tiers = {k.tier for k, _ in requests if k.tier}
    ranked = sorted(tier_prices, key=lambda t: _weight(tier_prices[t][1]))
    priced = [t for t in ranked if tier_prices[t][1] is not None]
    strongest = priced[-1] if priced else None
    cheapest = priced[0] if priced else None
    tiers = []
    for name in sorted(seen_tiers | set(config.tiers)):
        members = [(k, t) for k, t in requests if k.tier == name]
        if not members:
            continue
        first, price = tier_prices.get(name, ("", None))
        tiers.append(
            TierUse(
                tier=name,
                first_deployment=first,
                price_per_mtok=(price.input_per_mtok, price.output_per_mtok) if price else None,
                totals=_cost_row(name, members, whole),
                by_task=_group(members, lambda k: k.task or NONE, whole),
                by_reason=_group(members, lambda k: k.tier_reason or NONE, whole),
            )
        )
    tiers.sort(key=lambda u: -u.totals.cost_usd)
    misrouted = _misrouted(config, requests, strongest, cheapest, tier_prices)

    # 2. Fallbacks.
    served = sum(t.requests for k, t in requests if k.deployment)
    fallbacks = sum(t.requests for k, t in requests if k.deployment and k.fallback)
    causes: dict[str, int] = {}
    by_dep: dict[tuple[str, str], int] = {}
    for key, a in attempts:
        if key.followed and key.outcome != "ok":
            causes[key.outcome] = causes.get(key.outcome, 0) + a.attempts
            by_dep[(key.outcome, key.deployment)] = (
                by_dep.get((key.outcome, key.deployment), 0) + a.attempts
            )
    fallback = Fallbacks(
        policy=_policy_lines(config),
        served=served,
        fallbacks=fallbacks,
        ratio=_ratio(fallbacks, served),
        by_cause=tuple(sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))),
        by_deployment=tuple(
            FallbackCause(c, d, n)
            for (c, d), n in sorted(by_dep.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
    )

    # 4. Rollouts: candidate arms against the baseline they were compared with.
    rollouts = await _rollouts(store, requests, start, end)

    # 5. Headline.
    latency: dict[int, int] = {}
    for rkey, t in requests:
        if rkey.outcome == "ok":
            for b, n in t.latency.items():
                latency[b] = latency.get(b, 0) + n
    with_tokens = sum(t.requests for k, t in requests if k.deployment or k.cache == "hit")
    headline = Headline(
        requests=total.requests,
        successes=successes,
        failed=total.requests - successes,
        cache_hits=sum(t.requests for k, t in requests if k.cache == "hit"),
        p95_ms=quantile(latency, 0.95),
        fallback_ratio=_ratio(fallbacks, served),
        avg_tokens_per_request=_ratio(total.input_tokens + total.output_tokens, with_tokens),
        cost_usd=total.cost_usd,
        unpriced=total.unpriced,
        cost_per_success_usd=_ratio(total.cost_usd, successes),
        errors=_errors(attempts),
    )
    return WindowReport(
        start=start,
        end=end,
        rolled_up_until=await rolled_up_until(store),
        headline=headline,
        strongest_tier=strongest,
        tiers=tuple(tiers),
        misrouted=misrouted,
        fallbacks=fallback,
        cost_by_task=_group(requests, lambda k: k.task or NONE, whole),
        cost_by_tier=_group(requests, lambda k: k.tier or NONE, whole),
        cost_by_tenant=_group(requests, lambda k: k.tenant, whole),
        cost_by_arm=_group(
            requests, lambda k: f"{k.arm} r{k.release}" if k.release else k.arm, whole
        ),
        rollouts=rollouts,
    )


def _misrouted(
    config: Config,
    requests: Sequence[tuple[RequestKey, RequestTotals]],
    strongest: str | None,
    cheapest: str | None,
    tier_prices: Mapping[str, tuple[str, Price | None]],
) -> tuple[Misrouted, ...]:
    if strongest is None or cheapest is None or strongest == cheapest:
        return ()
    limits = config.report
    cheap_price = tier_prices[cheapest][1]
    assert cheap_price is not None
    by_task: dict[str, list[tuple[RequestKey, RequestTotals]]] = {}
    for key, t in requests:
        if key.tier == strongest and key.deployment and key.cache != "hit":
            by_task.setdefault(key.task or NONE, []).append((key, t))
    out = []
    for task, members in by_task.items():
        t, _ = _sum(members)
        if not t.requests:
            continue
        avg_in = t.input_tokens / t.requests
        avg_out = t.output_tokens / t.requests
        if (
            avg_in > limits.low_complexity_max_input_tokens
            or avg_out > limits.low_complexity_max_output_tokens
        ):
            continue
        would = (
            t.input_tokens * cheap_price.input_per_mtok
            + t.output_tokens * cheap_price.output_per_mtok
        ) / 1e6
        out.append(
            Misrouted(
                task=task,
                tier=strongest,
                belongs_to=cheapest,
                requests=t.requests,
                avg_input_tokens=avg_in,
                avg_output_tokens=avg_out,
                cost_usd=t.cost_usd,
                would_cost_usd=would,
                avoidable_usd=max(0.0, t.cost_usd - would),
            )
        )
    return tuple(sorted(out, key=lambda m: -m.avoidable_usd))


def _policy_lines(config: Config) -> tuple[str, ...]:
    p = config.policy
    b = p.breaker
    ceiling = (
        f"a fallback estimated over {p.fallback_cost_ceiling:g}x the first choice's cost is "
        + ("refused" if p.on_cost_ceiling == "refuse" else "sent to the safe-mode tier")
        if p.fallback_cost_ceiling is not None
        else "no cost ceiling on fallbacks"
    )
    return (
        f"fall back on: {', '.join(sorted(p.fallback_on))} (before the first byte only)",
        f"at most {p.max_attempts} attempts per request; "
        f"{p.same_deployment_retries} retries on the same deployment (connect errors and 5xx)",
        f"retry budget: {p.retry_budget:.0%} of the last {p.retry_budget_window_s} s of requests "
        f"+ {p.retry_budget_floor} per window",
        f"breaker: opens after {b.consecutive_failures} failures in a row or {b.error_rate:.0%} "
        f"of >= {b.min_attempts} attempts in {b.window_s} s; open {b.open_s:g} s",
        f"429 cool-down: Retry-After, at most {p.cooldown_max_s:g} s",
        ceiling,
    )


def _errors(attempts: Sequence[tuple[AttemptKey, AttemptTotals]]) -> tuple[ProviderErrors, ...]:
    groups: dict[tuple[str, str, str], dict[str, int]] = {}
    for key, a in attempts:
        causes = groups.setdefault((key.provider, key.deployment, key.model), {})
        causes[key.outcome] = causes.get(key.outcome, 0) + a.attempts
    rows = []
    for (provider, deployment, model), causes in groups.items():
        total = sum(causes.values())
        errors = {c: n for c, n in causes.items() if c != "ok" and c not in CLIENT_OUTCOMES}
        count = sum(errors.values())
        rows.append(
            ProviderErrors(
                provider=provider,
                deployment=deployment,
                model=model,
                attempts=total,
                errors=count,
                error_rate=_ratio(count, total),
                by_cause=tuple(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
            )
        )
    return tuple(sorted(rows, key=lambda r: (-r.errors, r.provider, r.deployment)))


async def _rollouts(
    store: Store, requests: Sequence[tuple[RequestKey, RequestTotals]], start: float, end: float
) -> tuple[RolloutDelta, ...]:
    candidates = sorted({k.release for k, _ in requests if k.arm == "candidate" and k.release})
    out = []
    for release in candidates:
        rows = await store.query(
            "SELECT parent, created_at, COALESCE(promoted_at, ended_at) AS ended FROM releases "
            "WHERE id = ?",
            (release,),
        )
        if not rows or rows[0]["parent"] is None:
            continue
        parent = rows[0]["parent"]
        # Compare over the time the candidate was live: the baseline's traffic before and
        # after it (another mix of work) would not be a fair comparison.
        live = await request_totals(
            store, max(start, rows[0]["created_at"]), min(end, rows[0]["ended"] or end)
        )
        cand = [(k, t) for k, t in live.items() if k.arm == "candidate" and k.release == release]
        base = [(k, t) for k, t in live.items() if k.arm == "baseline" and k.release == parent]
        c, c_ok = _sum(cand)
        b, b_ok = _sum(base)
        c_served = sum(t.requests for k, t in cand if k.deployment)
        b_served = sum(t.requests for k, t in base if k.deployment)
        c_fb = _ratio(sum(t.requests for k, t in cand if k.deployment and k.fallback), c_served)
        b_fb = _ratio(sum(t.requests for k, t in base if k.deployment and k.fallback), b_served)
        c_cost = _ratio(c.cost_usd, c_ok)
        b_cost = _ratio(b.cost_usd, b_ok)
        out.append(
            RolloutDelta(
                candidate=f"r{release}",
                baseline=f"r{parent}",
                candidate_requests=c.requests,
                baseline_requests=b.requests,
                candidate_fallback_ratio=c_fb,
                baseline_fallback_ratio=b_fb,
                fallback_delta=c_fb - b_fb if c_fb is not None and b_fb is not None else None,
                candidate_cost_per_success_usd=c_cost,
                baseline_cost_per_success_usd=b_cost,
                cost_delta_usd=c_cost - b_cost
                if c_cost is not None and b_cost is not None
                else None,
                cost_ratio=_ratio(c_cost, b_cost) if c_cost is not None and b_cost else None,
            )
        )
    return tuple(out)


# -- output ------------------------------------------------------------------------------------


def to_dict(report: WindowReport) -> dict[str, Any]:
    """The report as plain JSON data (``--json``)."""
    data: dict[str, Any] = dataclasses.asdict(report)
    return data


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _usd(v: float | None, unpriced: int = 0) -> str:
    if v is None:
        return "-"
    return format_usd(v) + ("+" if unpriced else "")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _cost_table(rows: Sequence[CostRow], label: str) -> list[str]:
    if not rows:
        return ["  (no requests)"]
    return _table(
        [label, "requests", "ok", "cost", "share", "$/success", "avg in", "avg out"],
        [
            [
                r.name,
                str(r.requests),
                str(r.successes),
                _usd(r.cost_usd, r.unpriced),
                _pct(r.share_of_cost),
                _usd(r.cost_per_success_usd, r.unpriced),
                "-" if r.avg_input_tokens is None else f"{r.avg_input_tokens:.0f}",
                "-" if r.avg_output_tokens is None else f"{r.avg_output_tokens:.0f}",
            ]
            for r in rows
        ],
    )


def render_text(report: WindowReport) -> str:
    h = report.headline
    out = [f"routedeck report: {_when(report.start)} to {_when(report.end)}"]
    if report.rolled_up_until > report.start:
        out.append(
            f"(hours before {_when(min(report.rolled_up_until, report.end))} from hourly "
            "aggregates, whole hours)"
        )
    out += [
        "",
        "Headline",
        f"  requests {h.requests}: {h.successes} ok, {h.failed} failed, {h.cache_hits} from cache",
        f"  p95 latency {'-' if h.p95_ms is None else f'{h.p95_ms:.0f} ms'} (successful requests)",
        f"  fallback ratio {_pct(h.fallback_ratio)}",
        "  tokens per request "
        + ("-" if h.avg_tokens_per_request is None else f"{h.avg_tokens_per_request:.0f}"),
        f"  cost {_usd(h.cost_usd, h.unpriced)}, per successful task "
        f"{_usd(h.cost_per_success_usd, h.unpriced)}",
    ]
    if h.unpriced:
        out.append(f"  {h.unpriced} requests unpriced: dollar figures marked + are lower bounds")
    if h.errors:
        out.append("  errors by provider and model:")
        out += _table(
            ["provider", "deployment", "model", "attempts", "errors", "rate", "causes"],
            [
                [
                    e.provider,
                    e.deployment,
                    e.model,
                    str(e.attempts),
                    str(e.errors),
                    _pct(e.error_rate),
                    ", ".join(f"{c} {n}" for c, n in e.by_cause) or "-",
                ]
                for e in h.errors
            ],
        )

    out += ["", "1. Which request types should not be on the strongest tier"]
    if report.strongest_tier is None:
        out.append("  no priced tier: cannot tell which is strongest")
    else:
        out.append(f"  strongest tier: {report.strongest_tier} (by its first deployment's price)")
    for use in report.tiers:
        price = (
            f"${use.price_per_mtok[0]:g}/${use.price_per_mtok[1]:g} per M tokens"
            if use.price_per_mtok
            else "unpriced"
        )
        out.append(
            f"  tier {use.tier} ({use.first_deployment}, {price}): {use.totals.requests} "
            f"requests, {_usd(use.totals.cost_usd, use.totals.unpriced)} "
            f"({_pct(use.totals.share_of_cost)} of cost)"
        )
        out += ["  " + line for line in _cost_table(use.by_task, "task type")]
        out += ["  " + line for line in _cost_table(use.by_reason, "tier reason")]
    if report.misrouted:
        out.append("  FLAGGED: low-complexity work on the strongest tier")
        for m in report.misrouted:
            out.append(
                f"    {m.task}: {m.requests} requests on {m.tier}, avg {m.avg_input_tokens:.0f} in "
                f"/ {m.avg_output_tokens:.0f} out tokens; cost {format_usd(m.cost_usd)}, on "
                f"{m.belongs_to} {format_usd(m.would_cost_usd)}: "
                f"{format_usd(m.avoidable_usd)} avoidable"
            )
    elif report.strongest_tier is not None:
        out.append("  nothing flagged: the strongest tier serves no small task type")

    f = report.fallbacks
    out += ["", "2. What triggers fallbacks", "  policy:"]
    out += [f"    {line}" for line in f.policy]
    out.append(f"  observed: {f.fallbacks} of {f.served} served requests ({_pct(f.ratio)})")
    for d in f.by_deployment:
        out.append(f"    {d.cause} at {d.deployment}: {d.count}")

    out += ["", "3. Cost per successful task"]
    for title, rows, label in (
        ("by task type", report.cost_by_task, "task type"),
        ("by tier", report.cost_by_tier, "tier"),
        ("by tenant", report.cost_by_tenant, "tenant"),
        ("by arm", report.cost_by_arm, "arm"),
    ):
        out.append(f"  {title}:")
        out += ["  " + line for line in _cost_table(rows, label)]

    out += ["", "4. Rollouts"]
    if not report.rollouts:
        out.append("  no candidate release served traffic in the window")
    for r in report.rollouts:
        ratio = "-" if r.cost_ratio is None else f"{r.cost_ratio:.2f}x"
        delta = "-" if r.fallback_delta is None else f"{r.fallback_delta * 100:+.1f} points"
        out.append(
            f"  {r.candidate} against {r.baseline}: {r.candidate_requests} / "
            f"{r.baseline_requests} requests; fallback {_pct(r.candidate_fallback_ratio)} vs "
            f"{_pct(r.baseline_fallback_ratio)} ({delta}); $/success "
            f"{_usd(r.candidate_cost_per_success_usd)} vs {_usd(r.baseline_cost_per_success_usd)}"
            f" ({ratio})"
        )
    return "\n".join(out)
