"""The routing engine: owns the state store, the provider clients, the metrics and the snapshots.

    async with Engine(config) as engine:
        response, meta = await engine.complete(request, Inbound(api="openai"))

`Engine` is an async context manager. Entering opens the SQLite store, starts the in-process
simulated upstream when the config has simulated providers, opens one pooled HTTP client per
provider and starts the snapshot publisher; leaving stops them in the reverse order, after the
store has flushed every logged row. The HTTP app (`engine.http`) and the console talk to the
engine only through `complete`, `stream`, `snapshot` and `snapshots`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from engine.alerts import Alert, AlertInputs, Alerts
from engine.breakers import Breakers
from engine.budgets import Budgets
from engine.cache import ResponseCache
from engine.commands import (
    Advance,
    Command,
    CommandResult,
    EditTier,
    Effect,
    Rollback,
    StartRollout,
)
from engine.config import Config, missing_secrets
from engine.control import Controller
from engine.metrics import Metrics
from engine.operator import Operator
from engine.pipeline import Inbound, Pipeline, ResponseMeta, Session
from engine.pricing import PriceBook
from engine.quotas import Quotas
from engine.retry_budget import RetryBudget
from engine.rollout import Release, Rollouts
from engine.routing import Router
from engine.snapshot import AlertView, HealthState, Snapshot, SpendView, TenantSpendView
from engine.tenants import KeyRing
from engine.tokens import TokenCounter
from providers.adapters import Adapter, AnthropicAdapter, OpenAIAdapter
from providers.canonical import ChatRequest, ChatResponse
from providers.http1 import Pool
from providers.sim import SimProfile, SimServer
from state.rollups import Pruned, prune, roll_up
from state.store import Store

ALERT_INTERVAL_S = 15.0
LEASE = "automation"
log = logging.getLogger("routedeck.engine")


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self.router = Router(config)
        policy = config.policy
        self.breakers = Breakers(
            policy.breaker, tuple(config.deployments), cooldown_max_s=policy.cooldown_max_s
        )
        self.retry_budget = RetryBudget(
            policy.retry_budget, policy.retry_budget_window_s, policy.retry_budget_floor
        )
        self.metrics = Metrics(config, clock=clock, recent=config.server.recent_requests)
        self.quotas = Quotas(config.tenants)
        self.prices = PriceBook(config)
        self.tokens = TokenCounter()
        self.pipeline = Pipeline(self)
        self._keys: KeyRing | None = None
        self._budgets: Budgets | None = None
        self._cache: ResponseCache | None = None
        self._alerts: Alerts | None = None
        self.warnings = [str(p) for p in missing_secrets(config, self._environ)]
        self.listen = ""
        self.state: str = "starting"
        self.started_at = clock()
        self.sim: SimServer | None = None
        self._operator: Operator | None = None
        self._rollouts: Rollouts | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        """This process, as the automation lease names its holder."""
        self.leader = False
        """Holds the automation lease: runs gate decisions, retention and alerting."""
        self._seen_seq = 0
        self._stack = AsyncExitStack()
        self._store: Store | None = None
        self._controller: Controller | None = None
        self._seq = 0
        self._latest: Snapshot | None = None
        self._published = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        config = self.config
        self._store = await self._stack.enter_async_context(
            Store(
                config.state_path(),
                flush_interval=config.state.flush_interval_ms / 1000,
                flush_max_rows=config.state.flush_max_rows,
            )
        )
        simulated = {n: p.simulated for n, p in config.providers.items() if p.simulated is not None}
        if simulated:
            profiles = {
                name: SimProfile(
                    latency_ms=p.latency_ms,
                    ttft_ms=p.ttft_ms,
                    tokens_per_s=p.tokens_per_s,
                    jitter=p.jitter,
                    context_window=p.context_window,
                )
                for name, p in simulated.items()
            }
            self.sim = await self._stack.enter_async_context(SimServer(profiles=profiles))
        adapters: dict[str, Adapter] = {}
        by_provider: dict[str, Adapter] = {}
        for name, provider in config.providers.items():
            key = self._environ.get(provider.api_key_env) if provider.api_key_env else None
            if provider.simulated is not None:
                assert self.sim is not None
                base_url = self.sim.base_url(name, provider.protocol)
            else:
                assert provider.base_url is not None
                base_url = provider.base_url
            client = self._upstream_client(base_url, provider.max_connections)
            if provider.protocol == "anthropic":
                by_provider[name] = AnthropicAdapter(
                    client, base_url=base_url, api_key=key, headers=provider.headers, name=name
                )
            else:
                by_provider[name] = OpenAIAdapter(
                    client, base_url=base_url, api_key=key, headers=provider.headers, name=name
                )
        for name, dep in config.deployments.items():
            adapters[name] = by_provider[dep.provider]
        self._controller = Controller(
            config,
            adapters,
            self.metrics,
            self._store,
            breakers=self.breakers,
            retry_budget=self.retry_budget,
            prices=self.prices,
            clock=self._clock,
        )
        self._keys = KeyRing(self._store, require_keys=config.server.require_keys)
        await self._keys.load()
        self._budgets = Budgets(config.tenants, self._store, clock=self._clock)
        await self._budgets.load()
        self._alerts = await self._stack.enter_async_context(
            Alerts(config.alerts, self._store, clock=self._clock)
        )
        alerting = asyncio.create_task(
            self._alerts.run(
                self._alert_inputs, interval_s=ALERT_INTERVAL_S, active=lambda: self.leader
            ),
            name="routedeck-alerts",
        )
        self._stack.push_async_callback(_cancel, alerting)
        self._cache = ResponseCache(config.cache, self._store, clock=self._clock)
        await self._cache.open()
        self._stack.push_async_callback(self._cache.close)  # saves hit counts before the store
        maintenance = asyncio.create_task(self._maintain(), name="routedeck-maintenance")
        self._stack.push_async_callback(_cancel, maintenance)
        self._operator = Operator(config, self._store, chaos=self._set_chaos if self.sim else None)
        await self._operator.load()
        operator = self._operator
        self._rollouts = Rollouts(
            config,
            self._store,
            clock=self._clock,
            audit=operator.audit.appendleft,
            raise_alert=self._raise_rollout_alert,
            on_baseline=self._on_baseline,
        )
        await self._rollouts.load()
        self.warnings.extend(self._rollouts.warnings)
        self._seen_seq = await self._store.state_seq()
        await self._renew_lease()
        syncing = asyncio.create_task(self._sync(), name="routedeck-sync")
        self._stack.push_async_callback(_cancel, syncing)
        self.state = "running"
        self._publish()
        publisher = asyncio.create_task(self._publisher(), name="routedeck-snapshots")
        self._stack.push_async_callback(_cancel, publisher)

    def _upstream_client(self, base_url: str, max_connections: int) -> httpx.AsyncClient | Pool:
        """The connection pool for one provider: routedeck's lean HTTP/1.1 client, or httpx
        when the environment names an HTTP proxy for the upstream (httpx honours
        ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``; the lean client does
        not)."""
        if _proxied(base_url, self._environ):
            client = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                timeout=None,
            )
            self._stack.push_async_callback(client.aclose)
            return client
        pool = Pool(base_url, max_connections=max_connections)
        self._stack.push_async_callback(pool.aclose)
        return pool

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.state = "stopping"
        await self._stack.aclose()

    def set_listen(self, url: str) -> None:
        """The proxy is serving at ``url``; snapshots show it from now on."""
        self.listen = url
        if self._controller is not None:
            self._publish()

    def _set_chaos(self, provider: str, knobs: Mapping[str, Any] | None) -> None:
        assert self.sim is not None
        if knobs is None:
            self.sim.chaos.clear(provider)
        else:
            self.sim.chaos.set(provider, **knobs)

    # -- several processes on one state file -----------------------------------------------

    async def _renew_lease(self) -> None:
        interval = self.config.server.sync_interval_s
        self.leader = await self.store.take_lease(
            LEASE, self.instance, now=self._clock(), ttl_s=max(3.0, 6 * interval)
        )

    async def sync_state(self) -> bool:
        """Pick up what other processes sharing the state file changed: drains, safe mode,
        keys and releases when the file's change counter moved; the budgets' settled spend
        always; and renew the automation lease. True when shared state was reloaded."""
        store = self.store
        seq = await store.state_seq()
        changed = seq != self._seen_seq
        if changed:
            self._seen_seq = seq
            await self.operator.load()
            await self.keys.load()
            await self.rollouts.reload()
        await self.budgets.refresh()
        await self._renew_lease()
        if changed:
            self._publish()
        return changed

    async def _sync(self) -> None:
        interval = self.config.server.sync_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync_state()
            except Exception:
                log.exception("syncing with the state file failed; trying again shortly")

    def _on_baseline(self, release: Release) -> None:
        """A release became the baseline: everything that reads routing follows it."""
        self.config = release.config
        self.router = release.router
        if self._operator is not None:
            self._operator.set_routing(release.config)

    async def _raise_rollout_alert(
        self, key: str, severity: str, message: str, detail: dict[str, Any]
    ) -> None:
        if self._alerts is not None:
            await self._alerts.raise_alert(key, "rollout", "critical", message, detail)
            await self._alerts.deliver()

    @property
    def rollouts(self) -> Rollouts:
        if self._rollouts is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._rollouts

    @property
    def operator(self) -> Operator:
        if self._operator is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._operator

    @property
    def drained(self) -> frozenset[str]:
        return self._operator.drained if self._operator else frozenset()

    @property
    def safe_mode(self) -> bool:
        return self._operator.safe_mode if self._operator else False

    # -- operator commands -----------------------------------------------------------------

    def _health(self) -> dict[str, HealthState]:
        views = self.metrics.deployment_views(self._clock(), self.drained, self.breakers)
        return {d.name: d.state for d in views}

    def preview(self, command: Command) -> Effect:
        """What ``command`` would do now, without doing it."""
        if isinstance(command, StartRollout | EditTier | Advance | Rollback):
            return self.rollouts.preview(command)
        return self.operator.preview(command, self._health())

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult:
        """Apply an operator command: audited and persisted before it takes effect."""
        if isinstance(command, StartRollout | EditTier | Advance | Rollback):
            result = await self.rollouts.submit(command, actor=actor, reason=reason)
        else:
            result = await self.operator.submit(
                command, self._health(), actor=actor, reason=reason, now=self._clock()
            )
        self._publish()
        async with self._published:
            self._published.notify_all()
        return result

    def clock(self) -> float:
        return self._clock()

    @property
    def keys(self) -> KeyRing:
        if self._keys is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._keys

    @property
    def budgets(self) -> Budgets:
        if self._budgets is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._budgets

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._cache

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._store

    # -- the request path ------------------------------------------------------------------

    async def complete(
        self, request: ChatRequest, inbound: Inbound
    ) -> tuple[ChatResponse, ResponseMeta]:
        """Serve a non-streaming request. Raises `RoutingError` or `RequestFailed`."""
        return await self.pipeline.complete(request, inbound)

    async def stream(self, request: ChatRequest, inbound: Inbound) -> Session:
        """Open a stream (fallback happens before its first byte); close the session always.

        Raises `RoutingError` or `RequestFailed`."""
        return await self.pipeline.stream(request, inbound)

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._controller

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The newest published snapshot, or a new one taken now when ``fresh``."""
        if self._latest is None or fresh:
            self._publish()
        assert self._latest is not None
        return self._latest

    def _build(self) -> Snapshot:
        now = self._clock()
        m = self.metrics
        deployments = m.deployment_views(now, self.drained, self.breakers)
        by_name = {d.name: d for d in deployments}
        self._seq += 1
        return Snapshot(
            seq=self._seq,
            taken_at=now,
            listen=self.listen,
            engine_state="running"
            if self.state == "running"
            else "stopping"
            if self.state == "stopping"
            else "starting",
            started_at=self.started_at,
            window_s=self.config.server.metrics_window_s,
            rps=m.rps(now),
            requests_total=m.requests_total,
            errors_total=m.errors_total,
            safe_mode=self.safe_mode,
            safe_mode_tier=self._operator.safe_tier if self._operator else None,
            drained=tuple(sorted(self.drained)),
            drills_available=self.sim is not None,
            drills=self._operator.drill_views() if self._operator else (),
            audit=tuple(self._operator.audit) if self._operator else (),
            release=self._rollouts.baseline.label if self._rollouts else "-",
            rollout=self._rollouts.view(now) if self._rollouts else None,
            providers=m.provider_views(now, deployments, self.drained),
            deployments=deployments,
            tiers=m.tier_views(now, by_name, self.config.tiers),
            fallback=m.fallback_view(now),
            tokens=m.token_view(now),
            recent=m.recent(),
            state_queue=self._store.stats.queued if self._store else 0,
            spend=self._spend_view(),
            alerts=tuple(
                AlertView(a.at, a.kind, a.severity, a.message)
                for a in (self._alerts.recent(20) if self._alerts else ())
            ),
        )

    def _spend_view(self) -> SpendView | None:
        if self._budgets is None or self._cache is None:
            return None
        m = self.metrics
        by_tier, by_deployment, unpriced = m.cost_tables()
        cache = self._cache.stats()
        tenants = tuple(
            TenantSpendView(t, day, day_budget, month, month_budget)
            for t, day, day_budget, month, month_budget in self._budgets.view()
        )
        return SpendView(
            today_usd=sum(t.spent_today_usd for t in tenants),
            by_tenant=tenants,
            by_tier=by_tier,
            by_deployment=by_deployment,
            successes_today=m.successes_today,
            cost_per_success_usd=m.cost_today / m.successes_today if m.successes_today else None,
            unpriced=unpriced,
            cache_hit_ratio=cache.hit_ratio,
            cache_saved_usd=cache.saved_usd,
            cache_entries=cache.entries,
        )

    def _publish(self) -> None:
        self._latest = self._build()

    async def _publisher(self) -> None:
        interval = self.config.server.snapshot_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.evaluate_rollout()
            self._publish()
            async with self._published:
                self._published.notify_all()

    async def evaluate_rollout(self) -> str | None:
        """Let the gates act now (the engine also does it with every snapshot): halt or roll
        back on a failing gate, advance after the dwell. Returns what happened, or None."""
        if self._rollouts is None:
            return None
        try:
            done = await self._rollouts.evaluate(act=self.leader)
        except Exception:
            log.exception("evaluating the rollout's gates failed; trying again next snapshot")
            return None
        if done is not None:
            self._publish()
            async with self._published:
                self._published.notify_all()
        return done

    def _alert_inputs(self) -> AlertInputs:
        now = self._clock()
        unpriced = dict(self.metrics.cost_tables()[2])
        reasons = {d: r for d in unpriced if (r := self.prices.unpriced_reason(d))}
        return AlertInputs(
            budgets=self.budgets.view(),
            unpriced=unpriced,
            fallback=self.metrics.fallback_view(now),
            now=now,
            unpriced_reasons=reasons,
        )

    async def check_alerts(self) -> list[Alert]:
        """Evaluate and deliver alerts now (the engine also does it every few seconds)."""
        assert self._alerts is not None
        raised = await self._alerts.evaluate(self._alert_inputs())
        await self._alerts.deliver()
        return raised

    async def _maintain(self) -> None:
        """Housekeeping that keeps state bounded: expired cache entries once a minute; complete
        hours rolled up and old rows pruned every ``[retention] interval_s``."""
        interval = self.config.retention.interval_s
        next_retention = time.monotonic() + min(60.0, interval)
        while True:
            await asyncio.sleep(min(60.0, interval))
            try:
                await self.cache.purge_expired()
                if time.monotonic() >= next_retention and self.leader:
                    next_retention = time.monotonic() + interval
                    await self.apply_retention()
            except Exception:
                log.exception("state housekeeping failed; it runs again at the next interval")

    async def apply_retention(self) -> Pruned:
        """Roll up every complete hour (after the grace period) and prune what is older than
        the retention ages (the engine does it every ``[retention] interval_s``)."""
        retention = self.config.retention
        now = self._clock()
        hours = await roll_up(self.store, until=now - retention.grace_s)
        pruned = await prune(
            self.store,
            raw_before=now - retention.requests_days * 86400,
            hours_before=now - retention.hourly_days * 86400,
            audit_before=now - retention.audit_days * 86400 if retention.audit_days else None,
        )
        if hours or pruned.requests or pruned.request_hours or pruned.audit:
            log.info("retention: rolled up %d hour(s); pruned %s", hours, pruned)
        return pruned

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        """Every snapshot published from now on (a slow reader skips to the newest)."""
        last = -1
        while True:
            async with self._published:
                await self._published.wait_for(functools.partial(self._newer_than, last))
            assert self._latest is not None
            last = self._latest.seq
            yield self._latest

    def _newer_than(self, seq: int) -> bool:
        return self._latest is not None and self._latest.seq != seq


def _proxied(url: str, environ: Mapping[str, str]) -> bool:
    """Whether the environment sends requests to ``url`` through an HTTP proxy."""
    host = urlsplit(url).hostname or ""
    scheme = urlsplit(url).scheme
    names = (f"{scheme}_proxy", "all_proxy")
    proxy = next((environ[n] for key in names for n in (key, key.upper()) if environ.get(n)), None)
    if not proxy:
        return False
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    for entry in (e.strip().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return False
    return host not in ("127.0.0.1", "localhost", "::1")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
