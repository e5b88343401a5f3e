"""The observability layer's live half: in-memory rolling windows of every attempt and request.

`Metrics` is fed by the control layer (one call per attempt, one per request) and read by the
snapshot publisher. It owns no task and does no I/O; every structure is bounded (windows by
their length, the request tail by ``recent``, per-day totals by the number of tiers and
tenants), so memory stays flat however long the engine runs.

Health, per deployment, over the last ``window_s`` seconds:

- ``drained``: an operator removed it from routing.
- ``down``: at least `MIN_SAMPLES` attempts and half or more of them failed.
- ``degraded``: some attempts failed (at least `DEGRADED_ERROR_RATE` of them), or the p95 latency
  is over the deployment's ``p95_slo_ms``.
- ``idle``: no attempt in the window.
- ``healthy``: otherwise.

Failures the client caused (bad request, context too long, going away mid-stream) do not count
against health.

``totals`` (`engine.prometheus.Totals`) is fed from the same two hooks: cumulative counters and
histograms since the process started, for ``GET /metrics``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.breakers import Breakers, BreakerView
from engine.config import Config, TierConfig
from engine.prometheus import Totals
from engine.releases import format_mapping
from engine.snapshot import (
    DeploymentView,
    FallbackView,
    HealthState,
    ProviderView,
    RequestView,
    TierStepView,
    TierView,
    TokenView,
)
from engine.windows import RollingCounter, RollingHistogram
from state.records import AttemptRecord, RequestRecord

MIN_SAMPLES = 3
DEGRADED_ERROR_RATE = 0.05
DOWN_ERROR_RATE = 0.5
SPARK_SECONDS = 60
CLIENT_CAUSES = frozenset({"bad_request", "context_length", "client_closed"})


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(slots=True)
class _DeploymentStats:
    size: int
    attempts: RollingCounter = field(init=False)
    ok: RollingCounter = field(init=False)
    failed: RollingCounter = field(init=False)
    errors: dict[str, RollingCounter] = field(default_factory=dict)
    latency: RollingHistogram = field(init=False)
    ttft: RollingHistogram = field(init=False)
    input_tokens: RollingCounter = field(init=False)
    output_tokens: RollingCounter = field(init=False)
    in_flight: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.attempts = RollingCounter(self.size)
        self.ok = RollingCounter(self.size)
        self.failed = RollingCounter(self.size)
        self.latency = RollingHistogram(self.size)
        self.ttft = RollingHistogram(self.size)
        self.input_tokens = RollingCounter(self.size)
        self.output_tokens = RollingCounter(self.size)


@dataclass(slots=True)
class _TierStats:
    size: int
    served: RollingCounter = field(init=False)
    fallbacks: RollingCounter = field(init=False)
    by_deployment: dict[str, RollingCounter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.served = RollingCounter(self.size)
        self.fallbacks = RollingCounter(self.size)


class Metrics:
    def __init__(self, config: Config, *, clock: Callable[[], float], recent: int = 200) -> None:
        self._config = config
        self._clock = clock
        self._window = config.server.metrics_window_s
        size = max(SPARK_SECONDS, self._window)
        self._size = size
        self._deployments = {name: _DeploymentStats(size) for name in config.deployments}
        self._tiers = {name: _TierStats(size) for name in config.tiers}
        self._requests = RollingCounter(size)
        self._served = RollingCounter(size)
        self._fallbacks = RollingCounter(size)
        self._fallback_causes: dict[str, RollingCounter] = {}
        self._input = RollingCounter(size)
        self._output = RollingCounter(size)
        self._recent: deque[RequestView] = deque(maxlen=recent)
        self.requests_total = 0
        self.errors_total = 0
        self._day = self._day_of(clock())
        self._tokens_by_tier: dict[str, list[int]] = {}
        self._tokens_by_tenant: dict[str, list[int]] = {}
        self._cost_by_tier: dict[str, float] = {}
        self._cost_by_deployment: dict[str, float] = {}
        self._unpriced: dict[str, int] = {}
        self.successes_today = 0
        self.cost_today = 0.0
        self.totals = Totals(config)

    @staticmethod
    def _day_of(now: float) -> int:
        return int(now // 86400)

    # -- recording -------------------------------------------------------------------------

    def attempt_started(self, deployment: str) -> None:
        self._deployments[deployment].in_flight += 1

    def attempt_finished(self, rec: AttemptRecord) -> None:
        stats = self._deployments[rec.deployment]
        stats.in_flight -= 1
        self.totals.attempt_finished(rec)
        now = self._clock()
        if rec.outcome in CLIENT_CAUSES:
            return
        stats.attempts.add(now)
        if rec.outcome == "ok":
            stats.ok.add(now)
            stats.latency.add(now, rec.latency_ms)
        else:
            stats.failed.add(now)
            counter = stats.errors.get(rec.outcome)
            if counter is None:
                counter = stats.errors[rec.outcome] = RollingCounter(self._size)
            counter.add(now)
            stats.last_error = rec.error or rec.outcome
        if rec.ttft_ms is not None:
            stats.ttft.add(now, rec.ttft_ms)
        if rec.input_tokens:
            stats.input_tokens.add(now, rec.input_tokens)
        if rec.output_tokens:
            stats.output_tokens.add(now, rec.output_tokens)

    def request_finished(
        self, rec: RequestRecord, path: tuple[str, ...], fallback_causes: tuple[str, ...]
    ) -> None:
        self.totals.request_finished(rec, path, fallback_causes)
        now = self._clock()
        self.requests_total += 1
        self._requests.add(now)
        if rec.outcome not in ("ok", "client_closed"):  # a client leaving is not an error of ours
            self.errors_total += 1
        if rec.deployment is not None:
            self._served.add(now)
            tier = None if rec.tier is None else self._tier(rec.tier)
            if tier is not None:
                tier.served.add(now)
                counter = tier.by_deployment.get(rec.deployment)
                if counter is None:
                    counter = tier.by_deployment[rec.deployment] = RollingCounter(self._size)
                counter.add(now)
                if rec.fallback:
                    tier.fallbacks.add(now)
            if rec.fallback:
                self._fallbacks.add(now)
        for cause in fallback_causes:
            counter = self._fallback_causes.get(cause)
            if counter is None:
                counter = self._fallback_causes[cause] = RollingCounter(self._size)
            counter.add(now)
        tokens_in, tokens_out = rec.input_tokens or 0, rec.output_tokens or 0
        if tokens_in:
            self._input.add(now, tokens_in)
        if tokens_out:
            self._output.add(now, tokens_out)
        day = self._day_of(now)
        if day != self._day:
            self._day = day
            for table in (
                self._tokens_by_tier,
                self._tokens_by_tenant,
                self._cost_by_tier,
                self._cost_by_deployment,
                self._unpriced,
            ):
                table.clear()
            self.successes_today = 0
            self.cost_today = 0.0
        if rec.outcome == "ok":
            self.successes_today += 1
        if rec.cost_usd is not None:
            self.cost_today += rec.cost_usd
            tier_key = rec.tier or "-"
            self._cost_by_tier[tier_key] = self._cost_by_tier.get(tier_key, 0.0) + rec.cost_usd
            if rec.deployment is not None:
                self._cost_by_deployment[rec.deployment] = (
                    self._cost_by_deployment.get(rec.deployment, 0.0) + rec.cost_usd
                )
        elif rec.deployment is not None and rec.cache != "hit" and rec.input_tokens is not None:
            self._unpriced[rec.deployment] = self._unpriced.get(rec.deployment, 0) + 1
        for table, key in (
            (self._tokens_by_tier, rec.tier or "-"),
            (self._tokens_by_tenant, rec.tenant),
        ):
            totals = table.setdefault(key, [0, 0])
            totals[0] += tokens_in
            totals[1] += tokens_out
        self._recent.appendleft(
            RequestView(
                request_id=rec.request_id,
                at=rec.started_at,
                tenant=rec.tenant,
                model=rec.model_requested,
                tier=rec.tier,
                tier_reason=rec.tier_reason,
                deployment=rec.deployment,
                status=rec.status,
                outcome=rec.outcome,
                latency_ms=rec.latency_ms,
                input_tokens=rec.input_tokens,
                output_tokens=rec.output_tokens,
                stream=rec.stream,
                path=path,
            )
        )

    # -- reading ---------------------------------------------------------------------------

    def rps(self, now: float) -> float:
        return self._requests.total(now, self._window) / self._window

    def _health(
        self,
        name: str,
        stats: _DeploymentStats,
        now: float,
        drained: bool,
        breaker: BreakerView | None,
    ) -> tuple[HealthState, str]:
        if drained:
            return "drained", "drained by an operator"
        if breaker is not None and breaker.state == "open":
            return "down", f"breaker open: {breaker.reason}"
        attempts = stats.attempts.total(now, self._window)
        if attempts == 0:
            return "idle", "no traffic in the window"
        failed = stats.failed.total(now, self._window)
        rate = failed / attempts
        if attempts >= MIN_SAMPLES and rate >= DOWN_ERROR_RATE:
            return "down", f"{rate:.0%} of {attempts} attempts failed: {stats.last_error}"
        if breaker is not None and breaker.state == "half_open":
            return "degraded", f"breaker half-open, probing: {breaker.reason}"
        if failed and rate >= DEGRADED_ERROR_RATE:
            return "degraded", f"{rate:.0%} of {attempts} attempts failed: {stats.last_error}"
        slo = self._config.deployments[name].p95_slo_ms
        if slo is not None:
            (p95,) = stats.latency.quantiles(now, (0.95,), self._window)
            if p95 is not None and p95 > slo:
                return "degraded", f"p95 {p95:.0f} ms is over its {slo:.0f} ms objective"
        return "healthy", ""

    def deployment_views(
        self, now: float, drained: frozenset[str], breakers: Breakers | None = None
    ) -> tuple[DeploymentView, ...]:
        w = self._window
        total_ok = sum(s.ok.total(now, w) for s in self._deployments.values())
        views = []
        for name, stats in self._deployments.items():
            dep = self._config.deployments[name]
            attempts = stats.attempts.total(now, w)
            ok = stats.ok.total(now, w)
            errors = {cause: c.total(now, w) for cause, c in stats.errors.items()}
            errors = {cause: n for cause, n in errors.items() if n}
            p50, p95, p99 = stats.latency.quantiles(now, (0.5, 0.95, 0.99), w)
            (ttft95,) = stats.ttft.quantiles(now, (0.95,), w)
            breaker = breakers.view(name, now) if breakers is not None else None
            state, reason = self._health(
                name, stats, now, bool({name, dep.provider} & drained), breaker
            )
            views.append(
                DeploymentView(
                    name=name,
                    provider=dep.provider,
                    model=dep.model,
                    state=state,
                    state_reason=reason,
                    rps=attempts / w,
                    share=ok / total_ok if total_ok else 0.0,
                    attempts=attempts,
                    p50_ms=p50,
                    p95_ms=p95,
                    p99_ms=p99,
                    ttft_p95_ms=ttft95,
                    error_rate=_ratio(sum(errors.values()), attempts),
                    rate_429=_ratio(errors.get("429", 0), attempts),
                    timeout_rate=_ratio(errors.get("timeout", 0), attempts),
                    errors_by_cause=tuple(sorted(errors.items())),
                    in_flight=stats.in_flight,
                    input_tokens_per_req=_ratio(stats.input_tokens.total(now, w), ok),
                    output_tokens_per_req=_ratio(stats.output_tokens.total(now, w), ok),
                    spark=stats.attempts.series(now, SPARK_SECONDS),
                    breaker=breaker.state if breaker else "closed",
                    breaker_reason=breaker.reason if breaker else "",
                    breaker_left_s=breaker.left_s if breaker else None,
                )
            )
        return tuple(views)

    def provider_views(
        self, now: float, deployments: tuple[DeploymentView, ...], drained: frozenset[str]
    ) -> tuple[ProviderView, ...]:
        order: tuple[HealthState, ...] = ("down", "degraded", "healthy", "idle")
        views = []
        for name, provider in self._config.providers.items():
            mine = [d for d in deployments if d.provider == name]
            attempts = sum(d.attempts for d in mine)
            errors = sum(n for d in mine for _, n in d.errors_by_cause)
            by_cause: dict[str, int] = {}
            for d in mine:
                for cause, n in d.errors_by_cause:
                    by_cause[cause] = by_cause.get(cause, 0) + n
            if name in drained:
                state: HealthState = "drained"
                reason = "drained by an operator"
            else:
                live = [d for d in mine if d.state != "drained"]
                worst = (
                    min(live, key=lambda d: order.index(d.state), default=None) if live else None
                )
                state = worst.state if worst else "drained"
                reason = worst.state_reason if worst else "every deployment is drained"
            p95s = [d.p95_ms for d in mine if d.p95_ms is not None]
            spark = (
                tuple(sum(col) for col in zip(*(d.spark for d in mine), strict=True))
                if mine
                else ()
            )
            views.append(
                ProviderView(
                    name=name,
                    protocol=provider.protocol,
                    region=provider.region,
                    simulated=provider.simulated is not None,
                    state=state,
                    state_reason=reason,
                    rps=sum(d.rps for d in mine),
                    share=sum(d.share for d in mine),
                    p95_ms=max(p95s) if p95s else None,
                    error_rate=_ratio(errors, attempts),
                    rate_429=_ratio(by_cause.get("429", 0), attempts),
                    timeout_rate=_ratio(by_cause.get("timeout", 0), attempts),
                    in_flight=sum(d.in_flight for d in mine),
                    deployments=tuple(d.name for d in mine),
                    spark=spark,
                )
            )
        return tuple(views)

    def _tier(self, name: str) -> _TierStats:
        # A release may add a tier this process did not start with.
        stats = self._tiers.get(name)
        if stats is None:
            stats = self._tiers[name] = _TierStats(self._size)
        return stats

    def tier_views(
        self,
        now: float,
        deployments: Mapping[str, DeploymentView],
        tiers: Mapping[str, TierConfig],
    ) -> tuple[TierView, ...]:
        """The tiers of the baseline release (``tiers``), with their live shares."""
        w = self._window
        views = []
        for name, tier in tiers.items():
            stats = self._tier(name)
            served = stats.served.total(now, w)
            steps = []
            for dep in tier.names:
                counter = stats.by_deployment.get(dep)
                n = counter.total(now, w) if counter else 0
                steps.append(
                    TierStepView(
                        deployment=dep,
                        state=deployments[dep].state,
                        share=n / served if served else 0.0,
                    )
                )
            views.append(
                TierView(
                    name=name,
                    description=tier.description,
                    steps=tuple(steps),
                    rps=served / w,
                    fallback_ratio=_ratio(stats.fallbacks.total(now, w), served),
                    skipped=tuple(
                        (d, deployments[d].state_reason)
                        for d in tier.names
                        if deployments[d].state == "drained" or deployments[d].breaker == "open"
                    ),
                    mapping=format_mapping(tier),
                )
            )
        return tuple(views)

    def fallback_view(self, now: float) -> FallbackView:
        w = self._window
        served = self._served.total(now, w)
        fallbacks = self._fallbacks.total(now, w)
        causes = {cause: c.total(now, w) for cause, c in self._fallback_causes.items()}
        return FallbackView(
            ratio=_ratio(fallbacks, served),
            requests=served,
            fallbacks=fallbacks,
            by_cause=tuple(sorted((c, n) for c, n in causes.items() if n)),
            spark=self._fallbacks.series(now, SPARK_SECONDS),
        )

    def token_view(self, now: float) -> TokenView:
        ins = self._input.series(now, SPARK_SECONDS)
        outs = self._output.series(now, SPARK_SECONDS)
        return TokenView(
            input_per_min=sum(ins),
            output_per_min=sum(outs),
            input_today=sum(v[0] for v in self._tokens_by_tier.values()),
            output_today=sum(v[1] for v in self._tokens_by_tier.values()),
            by_tier=tuple(sorted((k, v[0], v[1]) for k, v in self._tokens_by_tier.items())),
            by_tenant=tuple(sorted((k, v[0], v[1]) for k, v in self._tokens_by_tenant.items())),
            spark=tuple(a + b for a, b in zip(ins, outs, strict=True)),
        )

    def cost_tables(
        self,
    ) -> tuple[
        tuple[tuple[str, float], ...], tuple[tuple[str, float], ...], tuple[tuple[str, int], ...]
    ]:
        """Today's dollars by tier and by deployment, and unpriced requests by deployment."""
        return (
            tuple(sorted(self._cost_by_tier.items())),
            tuple(sorted(self._cost_by_deployment.items())),
            tuple(sorted(self._unpriced.items())),
        )

    def recent(self) -> tuple[RequestView, ...]:
        return tuple(self._recent)
