"""``GET /metrics``: the engine in Prometheus text exposition format 0.0.4.

Two halves:

- `Totals` keeps cumulative counters and histograms since the process started (monotonic, as
  Prometheus expects, unlike the rolling windows `Metrics` keeps for the console). `Metrics`
  feeds it from the same two hooks: ``request_finished`` once per logged request and
  ``attempt_finished`` once per upstream attempt. Recording is plain dict increments keyed by
  tuples of label values and one `bisect` per histogram observation; no text is built until a
  scrape asks for it.
- `render` writes the text: the totals, plus gauges read from the engine's latest `Snapshot`
  at scrape time (budgets, breakers, drains, in-flight attempts, safe mode, rollout, alerts).

Every family has HELP and TYPE lines and is written even before it has a sample, so dashboards
and alert rules never meet an unknown name.

**Label values are bounded**, whatever clients send:

- ``tier``: tiers of the config the engine started with, plus any tier a request on the
  baseline arm was routed to (a release may add one; tier names always come from a release's
  config, never from the client); a candidate-only tier is ``other`` until it is promoted;
  ``none`` when no tier routed the request (a pinned deployment, or no route at all).
- ``task_type``: keys of ``[tasks]`` and the engine's own internal tasks; ``none`` without one;
  anything else (the header is the client's) is ``other``.
- ``tenant``: ``[tenants]`` plus ``local``, else ``other``.
- ``arm``: ``baseline`` or ``candidate``.
- ``provider``, ``deployment``: from the config; a request answered from the cache has
  deployment ``cache``, one no deployment answered has ``none``.
- ``outcome``, ``cause``, ``error_type``: one of `CAUSES`, else ``other``.
- ``status_class``: ``2xx`` .. ``5xx``.
- ``gen_ai_provider_name``: the provider's wire protocol (``openai``, ``anthropic``): the
  OpenTelemetry GenAI "format flavor"; ``provider`` carries routedeck's own provider name.

**Families** (OpenTelemetry GenAI semantic-convention names where one fits, Prometheus style):

=============================================== =========== =======================================
name                                            type        labels
=============================================== =========== =======================================
gen_ai_client_operation_duration_seconds        histogram   one upstream attempt: gen_ai_operation_name,
                                                            gen_ai_provider_name, gen_ai_request_model,
                                                            provider, deployment, error_type (failures)
gen_ai_client_token_usage                       histogram   tokens of one attempt (when reported): as
                                                            above without error_type, + gen_ai_token_type
gen_ai_server_request_duration_seconds          histogram   one request, arrival to last byte:
                                                            gen_ai_operation_name, gen_ai_provider_name,
                                                            gen_ai_response_model, provider, tier,
                                                            deployment, error_type (failures)
gen_ai_server_time_to_first_token_seconds       histogram   streams: arrival to first token (failed
                                                            attempts before it included); as above
routedeck_requests_total                        counter     tier, task_type, tenant, arm, outcome,
                                                            status_class
routedeck_requests_served_total                 counter     tier, deployment (an upstream answered)
routedeck_fallbacks_total                       counter     tier, from_deployment, to_deployment, cause
routedeck_attempts_total                        counter     provider, deployment, outcome
routedeck_tokens_total                          counter     tier, tenant, deployment, token_type
routedeck_cost_usd_total                        counter     tenant, tier, deployment
routedeck_unpriced_requests_total               counter     deployment
routedeck_cache_hits_total / _misses_total      counter     tier, tenant
routedeck_cache_saved_usd_total                 counter     tier, tenant
routedeck_budget_spent_usd                      gauge       tenant, period (day|month)
routedeck_budget_limit_usd                      gauge       tenant, period (only when configured)
routedeck_breaker_state                         gauge       provider, deployment: 0 closed,
                                                            1 half_open, 2 open
routedeck_deployment_drained                    gauge       provider, deployment: 0|1
routedeck_attempts_in_flight                    gauge       provider, deployment
routedeck_safe_mode                             gauge       0|1
routedeck_baseline_release_info                 gauge       release ("r3"): always 1
routedeck_rollout_active                        gauge       0|1
routedeck_rollout_stage_index                   gauge       release, stage (0-based)
routedeck_rollout_target_ratio                  gauge       release: the stage's candidate share, 0..1
routedeck_rollout_state                         gauge       release, state (running|halted): 0|1
routedeck_alerts_today                          gauge       kind, severity
=============================================== =========== =======================================

Counters count what this process served: they start at zero on every start, which
``rate()``/``increase()`` handle. The engine's own requests (history summaries, task type
``history_summary``) are counted like any other; a request rejected before the engine saw it (a
body that is not JSON, too large) is not.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from engine.config import Config
from engine.rollout import ARM_BASELINE, ARM_CANDIDATE
from engine.snapshot import Snapshot
from engine.tenants import TENANT_LOCAL
from state.records import AttemptRecord, RequestRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OTHER = "other"
NONE = "none"
CACHE = "cache"

CAUSES = frozenset(
    {
        "ok",
        # upstream attempts (providers.errors and the control layer)
        "connect",
        "timeout",
        "429",
        "overloaded",
        "5xx",
        "stream",
        "context_length",
        "bad_request",
        "auth",
        "error",
        "client_closed",
        # requests refused or failed before or around the attempts
        "unavailable",
        "quota",
        "budget",
        "input_cap",
        "model_not_found",
        "context_length_exceeded",
        "no_eligible_deployment",
        "no_deployment",
    }
)
"""Every outcome and cause label value besides ``other``."""

INTERNAL_TASKS = frozenset({"history_summary"})
"""Task types the engine gives its own requests (``api="internal"``)."""

# OpenTelemetry GenAI semantic conventions' advisory bucket boundaries.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)  # fmt: skip
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
ROLLOUT_STATES = ("running", "halted")
ALERT_KINDS = frozenset({"budget", "spend_rate", "unpriced", "fallback_ratio", "rollout"})
ALERT_SEVERITIES = frozenset({"info", "warning", "critical"})
_TOKEN_TYPES = ((0, "input"), (1, "output"))
_ARMS = frozenset({ARM_BASELINE, ARM_CANDIDATE})
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_FIRST_TOKENS_MAX = 4096
"""Streams whose first-token time waits for their request to finish; only a stream that is
never closed leaves one behind, and the oldest go first past this many."""

Key = tuple[str, ...]


class _Histogram:
    """Per label tuple: one count per bucket (not cumulative; ``+Inf`` last), then the sum."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value


class Totals:
    """Cumulative counters and histograms since the process started; see the module docstring.

    Not thread-safe: like `Metrics`, it lives on the engine's event loop."""

    def __init__(self, config: Config) -> None:
        self._tiers = set(config.tiers)
        self._tasks = frozenset(config.tasks) | INTERNAL_TASKS
        self._tenants = frozenset(config.tenants) | {TENANT_LOCAL}
        self.deployments: dict[str, tuple[str, str, str]] = {
            name: (dep.provider, config.providers[dep.provider].protocol, dep.model)
            for name, dep in config.deployments.items()
        }
        """deployment -> (provider, protocol, upstream model)."""
        self.requests: dict[Key, float] = {}
        self.served: dict[Key, float] = {}
        self.fallbacks: dict[Key, float] = {}
        self.attempts: dict[Key, float] = {}
        self.usage: dict[Key, list[float]] = {}
        """(tier, tenant, deployment) -> [input tokens, output tokens, dollars]."""
        self.unpriced: dict[str, int] = {}
        self.cache: dict[Key, list[float]] = {}
        """(tier, tenant) -> [hits, misses, dollars saved]."""
        self.attempt_duration = _Histogram(DURATION_BUCKETS)
        self.attempt_tokens = _Histogram(TOKEN_BUCKETS)
        self.request_duration = _Histogram(DURATION_BUCKETS)
        self.first_token = _Histogram(TTFT_BUCKETS)
        self._first_token_at: dict[str, float] = {}

    def tenant(self, tenant: str) -> str:
        return tenant if tenant in self._tenants else OTHER

    # -- recording -------------------------------------------------------------------------

    def attempt_finished(self, rec: AttemptRecord) -> None:
        dep = rec.deployment if rec.deployment in self.deployments else OTHER
        outcome = rec.outcome if rec.outcome in CAUSES else OTHER
        key = (dep, outcome)
        attempts = self.attempts
        attempts[key] = attempts.get(key, 0) + 1
        self.attempt_duration.observe((dep, "") if outcome == "ok" else key, rec.latency_ms / 1000)
        if rec.input_tokens is not None:
            self.attempt_tokens.observe((dep, "input"), rec.input_tokens)
        if rec.output_tokens is not None:
            self.attempt_tokens.observe((dep, "output"), rec.output_tokens)
        if rec.ttft_ms is not None:
            # The stream's first token, on the monotonic clock, for its request's TTFT (which
            # also counts the attempts that failed before this one).
            at = time.monotonic() - (rec.latency_ms - rec.ttft_ms) / 1000
            table = self._first_token_at
            table[rec.request_id] = at
            if len(table) > _FIRST_TOKENS_MAX:
                del table[next(iter(table))]

    def request_finished(
        self, rec: RequestRecord, path: tuple[str, ...], fallback_causes: tuple[str, ...]
    ) -> None:
        tier = rec.tier
        if tier is None:
            tier = NONE
        elif tier not in self._tiers:
            tier = self._new_tier(tier, rec.arm)
        task = rec.task
        task = NONE if task is None else task if task in self._tasks else OTHER
        tenant = rec.tenant if rec.tenant in self._tenants else OTHER
        outcome = rec.outcome if rec.outcome in CAUSES else OTHER
        arm = rec.arm if rec.arm in _ARMS else OTHER
        key: Key = (tier, task, tenant, arm, outcome, _STATUS_CLASSES.get(rec.status // 100, OTHER))
        table = self.requests
        table[key] = table.get(key, 0) + 1
        cache = rec.cache
        served = rec.deployment
        if served is not None:
            dep = served if served in self.deployments else OTHER
            key = (tier, dep)
            table = self.served
            table[key] = table.get(key, 0) + 1
            if rec.fallback:
                first = path[0] if path[0] in self.deployments else OTHER
                cause = fallback_causes[0] if fallback_causes else OTHER
                key = (tier, first, dep, cause if cause in CAUSES else OTHER)
                table = self.fallbacks
                table[key] = table.get(key, 0) + 1
        else:
            dep = CACHE if cache == "hit" else NONE
        key = (tier, dep, "" if outcome == "ok" else outcome)
        self.request_duration.observe(key, rec.latency_ms / 1000)
        if rec.stream:
            first_token_at = self._first_token_at.pop(rec.request_id, None)
            if first_token_at is not None:
                started = time.monotonic() - rec.latency_ms / 1000
                self.first_token.observe(key, max(first_token_at - started, 0.0))
        # Tokens and dollars share one row per (tier, tenant, deployment).
        key = (tier, tenant, dep)
        usage = self.usage.get(key)
        if usage is None:
            usage = self.usage[key] = [0, 0, 0.0]
        usage[0] += rec.input_tokens or 0
        usage[1] += rec.output_tokens or 0
        cost = rec.cost_usd
        if cost is not None:
            usage[2] += cost
        elif served is not None and cache != "hit" and rec.input_tokens is not None:
            self.unpriced[dep] = self.unpriced.get(dep, 0) + 1
        if cache == "hit" or cache == "miss":
            key = (tier, tenant)
            row = self.cache.get(key)
            if row is None:
                row = self.cache[key] = [0, 0, 0.0]
            if cache == "hit":
                row[0] += 1
                row[2] += rec.saved_usd or 0.0
            else:
                row[1] += 1

    def _new_tier(self, tier: str, arm: str) -> str:
        if arm == ARM_BASELINE:
            # Routed by the baseline release: a tier a promoted release added. Tier names come
            # from a release's config, never from the client, so the set stays bounded.
            self._tiers.add(tier)
            return tier
        return OTHER


# -- exposition -------------------------------------------------------------------------------


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _inner(pairs: Iterable[tuple[str, str]]) -> str:
    """``a="x",b="y"``; a pair with an empty value is left out (Prometheus reads the two the
    same)."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs if value)


def _number(value: float) -> str:
    if isinstance(value, int) or (
        math.isfinite(value) and value.is_integer() and abs(value) < 1e15
    ):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {escaped}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float) -> None:
        inner = _inner(labels)
        self.lines.append(
            f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"
        )

    def counter(
        self,
        name: str,
        help_text: str,
        names: Sequence[str],
        table: dict[Key, float],
    ) -> None:
        self.family(name, "counter", help_text)
        for key in sorted(table):
            self.sample(name, zip(names, key, strict=True), table[key])

    def histogram(
        self,
        name: str,
        help_text: str,
        hist: _Histogram,
        labels_of: Iterable[tuple[Key, list[tuple[str, str]]]],
    ) -> None:
        self.family(name, "histogram", help_text)
        bounds = [repr(float(b)) for b in hist.bounds] + ["+Inf"]
        lines = self.lines
        for key, labels in labels_of:
            row = hist.series[key]
            inner = _inner(labels)
            head = f"{name}_bucket{{{inner}," if inner else f"{name}_bucket{{"
            running = 0
            for le, count in zip(bounds, row[:-1], strict=True):
                running += int(count)
                lines.append(f'{head}le="{le}"}} {running}')
            self.sample(f"{name}_sum", labels, row[-1])
            self.sample(f"{name}_count", labels, running)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _gen_ai(totals: Totals, deployment: str, model_label: str) -> list[tuple[str, str]]:
    """The OpenTelemetry labels a deployment implies (none for ``cache``/``none``/``other``)."""
    known = totals.deployments.get(deployment)
    labels = [("gen_ai_operation_name", "chat")]
    if known is not None:
        provider, protocol, model = known
        labels += [("gen_ai_provider_name", protocol), (model_label, model), ("provider", provider)]
    return labels


def _attempt_series(
    totals: Totals, hist: _Histogram, last: str
) -> Iterator[tuple[Key, list[tuple[str, str]]]]:
    for key in sorted(hist.series):
        dep, extra = key
        labels = _gen_ai(totals, dep, "gen_ai_request_model")
        yield key, [*labels, ("deployment", dep), (last, extra)]


def _request_series(
    totals: Totals, hist: _Histogram
) -> Iterator[tuple[Key, list[tuple[str, str]]]]:
    for key in sorted(hist.series):
        tier, dep, error = key
        labels = _gen_ai(totals, dep, "gen_ai_response_model")
        yield key, [*labels, ("tier", tier), ("deployment", dep), ("error_type", error)]


def _alerts_today(snapshot: Snapshot) -> dict[tuple[str, str], int]:
    today = int(snapshot.taken_at // 86400)
    counts: dict[tuple[str, str], int] = {}
    for alert in snapshot.alerts:
        if int(alert.at // 86400) != today:
            continue
        kind = alert.kind if alert.kind in ALERT_KINDS else OTHER
        severity = alert.severity if alert.severity in ALERT_SEVERITIES else OTHER
        counts[kind, severity] = counts.get((kind, severity), 0) + 1
    return counts


def render(totals: Totals, snapshot: Snapshot) -> str:
    """The whole exposition: `totals` plus gauges from ``snapshot``."""
    w = _Writer()
    w.histogram(
        "gen_ai_client_operation_duration_seconds",
        "Duration of one upstream attempt (routedeck as the GenAI client), by deployment; "
        "error_type is the failure's cause.",
        totals.attempt_duration,
        _attempt_series(totals, totals.attempt_duration, "error_type"),
    )
    w.histogram(
        "gen_ai_client_token_usage",
        "Tokens one upstream attempt used, as the provider reported them, by deployment and "
        "gen_ai_token_type (input|output).",
        totals.attempt_tokens,
        _attempt_series(totals, totals.attempt_tokens, "gen_ai_token_type"),
    )
    w.histogram(
        "gen_ai_server_request_duration_seconds",
        "Duration of one request from its arrival to its last byte (routedeck as the GenAI "
        "server), by tier and the deployment that served it (cache, or none when none did).",
        totals.request_duration,
        _request_series(totals, totals.request_duration),
    )
    w.histogram(
        "gen_ai_server_time_to_first_token_seconds",
        "Streaming requests: time from arrival to the first token, attempts that failed "
        "before it included, by tier and the deployment that served it.",
        totals.first_token,
        _request_series(totals, totals.first_token),
    )
    w.counter(
        "routedeck_requests_total",
        "Requests the engine finished, by tier, task type, tenant, release arm, outcome (ok or "
        "the cause of the failure) and HTTP status class.",
        ("tier", "task_type", "tenant", "arm", "outcome", "status_class"),
        totals.requests,
    )
    w.counter(
        "routedeck_requests_served_total",
        "Requests an upstream deployment answered (cache hits are not), by tier and deployment: "
        "the denominator of the fallback ratio.",
        ("tier", "deployment"),
        totals.served,
    )
    w.counter(
        "routedeck_fallbacks_total",
        "Requests served by a deployment other than their route's first choice, by tier, the "
        "first choice that failed, the deployment that served, and why the first choice failed.",
        ("tier", "from_deployment", "to_deployment", "cause"),
        totals.fallbacks,
    )
    w.counter(
        "routedeck_attempts_total",
        "Upstream attempts, by provider, deployment and outcome (ok or the failure's cause).",
        ("provider", "deployment", "outcome"),
        {
            (totals.deployments.get(dep, (OTHER,))[0], dep, outcome): n
            for (dep, outcome), n in totals.attempts.items()
        },
    )
    usage = totals.usage
    w.counter(
        "routedeck_tokens_total",
        "Tokens of finished requests (cache hits included, as deployment cache), by tier, tenant, "
        "deployment and token_type (input|output).",
        ("tier", "tenant", "deployment", "token_type"),
        {(*key, kind): row[i] for key, row in usage.items() for i, kind in _TOKEN_TYPES},
    )
    w.counter(
        "routedeck_cost_usd_total",
        "US dollars requests cost (failed attempts that reported usage included), by tenant, tier "
        "and the deployment that served them; unpriced requests are counted apart, never as $0.",
        ("tenant", "tier", "deployment"),
        {(tenant, tier, dep): row[2] for (tier, tenant, dep), row in usage.items()},
    )
    w.counter(
        "routedeck_unpriced_requests_total",
        "Requests served by a deployment without a known price, so their cost is unknown.",
        ("deployment",),
        {(dep,): n for dep, n in totals.unpriced.items()},
    )
    cache = totals.cache
    w.counter(
        "routedeck_cache_hits_total",
        "Requests answered from the response cache, by tier and tenant.",
        ("tier", "tenant"),
        {key: row[0] for key, row in cache.items()},
    )
    w.counter(
        "routedeck_cache_misses_total",
        "Requests looked up in the response cache and not found, by tier and tenant.",
        ("tier", "tenant"),
        {key: row[1] for key, row in cache.items()},
    )
    w.counter(
        "routedeck_cache_saved_usd_total",
        "US dollars the cache saved: what each hit's answer cost when it was first made.",
        ("tier", "tenant"),
        {key: row[2] for key, row in cache.items()},
    )
    _gauges(w, totals, snapshot)
    return w.text()


def _gauges(w: _Writer, totals: Totals, snapshot: Snapshot) -> None:
    w.family(
        "routedeck_budget_spent_usd",
        "gauge",
        "US dollars a tenant has spent in the current UTC day or month (the durable ledger).",
    )
    limits: list[tuple[list[tuple[str, str]], float]] = []
    for t in snapshot.spend.by_tenant if snapshot.spend is not None else ():
        tenant = totals.tenant(t.tenant)
        for period, spent, limit in (
            ("day", t.spent_today_usd, t.daily_budget_usd),
            ("month", t.spent_month_usd, t.monthly_budget_usd),
        ):
            labels = [("tenant", tenant), ("period", period)]
            w.sample("routedeck_budget_spent_usd", labels, spent)
            if limit is not None:
                limits.append((labels, limit))
    w.family(
        "routedeck_budget_limit_usd",
        "gauge",
        "A tenant's configured budget for the UTC day or month, in US dollars.",
    )
    for labels, limit in limits:
        w.sample("routedeck_budget_limit_usd", labels, limit)

    deployments = snapshot.deployments
    w.family(
        "routedeck_breaker_state",
        "gauge",
        "Circuit breaker of a deployment: 0 closed, 1 half_open (probing), 2 open.",
    )
    for d in deployments:
        w.sample(
            "routedeck_breaker_state",
            [("provider", d.provider), ("deployment", d.name)],
            BREAKER_VALUES.get(d.breaker, 2),
        )
    w.family(
        "routedeck_deployment_drained",
        "gauge",
        "1 while an operator has drained the deployment or its provider out of routing.",
    )
    for d in deployments:
        w.sample(
            "routedeck_deployment_drained",
            [("provider", d.provider), ("deployment", d.name)],
            int(d.state == "drained"),
        )
    w.family("routedeck_attempts_in_flight", "gauge", "Upstream attempts under way now.")
    for d in deployments:
        w.sample(
            "routedeck_attempts_in_flight",
            [("provider", d.provider), ("deployment", d.name)],
            d.in_flight,
        )
    w.family(
        "routedeck_safe_mode",
        "gauge",
        "1 while safe mode sends all traffic to the recovery tier.",
    )
    w.sample("routedeck_safe_mode", (), int(snapshot.safe_mode))
    w.family(
        "routedeck_baseline_release_info",
        "gauge",
        "The release serving as the baseline; always 1.",
    )
    w.sample("routedeck_baseline_release_info", [("release", snapshot.release)], 1)

    rollout = snapshot.rollout
    w.family("routedeck_rollout_active", "gauge", "1 while a release rollout is in progress.")
    w.sample("routedeck_rollout_active", (), int(rollout is not None))
    w.family(
        "routedeck_rollout_stage_index",
        "gauge",
        "The rollout's current stage, 0-based (internal, canary, 5%, 20%, full by default).",
    )
    if rollout is not None:
        w.sample(
            "routedeck_rollout_stage_index",
            [("release", rollout.release), ("stage", rollout.stage)],
            rollout.stage_index,
        )
    w.family(
        "routedeck_rollout_target_ratio",
        "gauge",
        "Share of traffic the current stage sends to the candidate release, 0..1 (0 while halted).",
    )
    if rollout is not None:
        w.sample(
            "routedeck_rollout_target_ratio",
            [("release", rollout.release)],
            rollout.target_percent / 100,
        )
    w.family(
        "routedeck_rollout_state",
        "gauge",
        "1 for the rollout's state: running, or halted (every request back on the baseline).",
    )
    if rollout is not None:
        for state in ROLLOUT_STATES:
            w.sample(
                "routedeck_rollout_state",
                [("release", rollout.release), ("state", state)],
                int(rollout.state == state),
            )
    w.family(
        "routedeck_alerts_today",
        "gauge",
        "Alerts raised today (UTC), by kind and severity, among the engine's newest 20.",
    )
    for (kind, severity), n in sorted(_alerts_today(snapshot).items()):
        w.sample("routedeck_alerts_today", [("kind", kind), ("severity", severity)], n)
