"""The routing engine: owns the state store, the provider clients, the metrics and the snapshots.

    async with Engine(config) as engine:
        response, meta = await engine.complete(request, api="openai", tenant="local")

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
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from engine.breakers import Breakers
from engine.commands import Command, CommandResult, Effect
from engine.config import Config, missing_secrets
from engine.control import Attempts, Controller, Deadline, RequestFailed, StreamHandle
from engine.metrics import Metrics
from engine.operator import Operator
from engine.retry_budget import RetryBudget
from engine.routing import (
    ANYWHERE,
    Constraints,
    Route,
    Router,
    RoutingError,
    tenant_constraints,
)
from engine.snapshot import HealthState, Snapshot
from providers.adapters import Adapter, AnthropicAdapter, OpenAIAdapter
from providers.canonical import ChatRequest, ChatResponse, StreamEvent
from providers.sim import SimProfile, SimServer
from state.records import RequestRecord
from state.store import Store

ARM_BASELINE = "baseline"
TENANT_LOCAL = "local"
"""The tenant of requests that carry no virtual key."""


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What the proxy tells the client about how its request was served (the x-routedeck-* headers)."""

    request_id: str
    tier: str | None
    tier_reason: str
    arm: str
    provider: str
    deployment: str
    model: str
    attempts: int
    path: tuple[str, ...]
    cache: str
    cost_usd: float | None
    """None when the deployment has no price: shown as ``unpriced``, never $0."""


def new_request_id() -> str:
    return "rd-" + os.urandom(8).hex()


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
        self.warnings = [str(p) for p in missing_secrets(config, self._environ)]
        self.listen = ""
        self.state: str = "starting"
        self.started_at = clock()
        self.sim: SimServer | None = None
        self._operator: Operator | None = None
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
            client = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=provider.max_connections,
                    max_keepalive_connections=provider.max_connections,
                ),
                timeout=None,
            )
            self._stack.push_async_callback(client.aclose)
            key = self._environ.get(provider.api_key_env) if provider.api_key_env else None
            if provider.simulated is not None:
                assert self.sim is not None
                base_url = self.sim.base_url(name, provider.protocol)
            else:
                assert provider.base_url is not None
                base_url = provider.base_url
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
            clock=self._clock,
        )
        self._operator = Operator(config, self._store, chaos=self._set_chaos if self.sim else None)
        await self._operator.load()
        self.state = "running"
        self._publish()
        publisher = asyncio.create_task(self._publisher(), name="routedeck-snapshots")
        self._stack.push_async_callback(_cancel, publisher)

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
        return self.operator.preview(command, self._health())

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult:
        """Apply an operator command: audited and persisted before it takes effect."""
        result = await self.operator.submit(
            command, self._health(), actor=actor, reason=reason, now=self._clock()
        )
        self._publish()
        async with self._published:
            self._published.notify_all()
        return result

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the engine is not running; use `async with Engine(config)`")
        return self._store

    # -- the request path ------------------------------------------------------------------

    def route(
        self,
        request: ChatRequest,
        *,
        tenant: str = TENANT_LOCAL,
        task: str | None = None,
        constraints: Constraints = ANYWHERE,
    ) -> Route:
        """Raises `RoutingError` when the model is unknown or nothing can serve it."""
        force = self.operator.safe_tier if self.safe_mode else None
        tenant_config = self.config.tenants.get(tenant)
        if tenant_config is not None:
            constraints = constraints.merge(
                tenant_constraints(tenant_config.regions, tenant_config.compliance)
            )
        now = self._clock()
        return self.router.route(
            request,
            task=task,
            constraints=constraints,
            drained=self.drained,
            unavailable=lambda name: self.breakers.unavailable(name, now),
            force_tier=force,
        )

    def _deadline(self, route: Route) -> Deadline:
        tier = self.router.tier_of(route)
        return Deadline(
            connect=tier.connect_timeout_s,
            first_token=tier.first_token_s,
            attempt=tier.attempt_s,
            expires_at=time.monotonic() + tier.timeout_s,
        )

    def _start_call(
        self,
        request: ChatRequest,
        *,
        api: str,
        tenant: str,
        request_id: str | None,
        task: str | None,
        constraints: Constraints,
    ) -> _Call:
        call = _Call(
            request=request,
            api=api,
            tenant=tenant,
            task=task,
            attempts=Attempts(request_id or new_request_id()),
            started_wall=self._clock(),
            started=time.monotonic(),
        )
        try:
            call.route = self.route(request, tenant=tenant, task=task, constraints=constraints)
        except RoutingError as exc:
            self._log(
                call, stream=request.stream, status=exc.status, outcome=exc.code, error=exc.message
            )
            raise
        return call

    async def complete(
        self,
        request: ChatRequest,
        *,
        api: str,
        tenant: str = TENANT_LOCAL,
        request_id: str | None = None,
        task: str | None = None,
        constraints: Constraints = ANYWHERE,
    ) -> tuple[ChatResponse, ResponseMeta]:
        """Serve a non-streaming request. Raises `RoutingError` or `RequestFailed`."""
        assert self._controller is not None
        call = self._start_call(
            request,
            api=api,
            tenant=tenant,
            request_id=request_id,
            task=task,
            constraints=constraints,
        )
        assert call.route is not None
        try:
            response = await self._controller.complete(
                request, call.route, self._deadline(call.route), call.attempts
            )
        except RequestFailed as exc:
            self._log(call, stream=False, status=exc.status, outcome=exc.cause, error=exc.message)
            raise
        self._log(call, stream=False, status=200, outcome="ok", error=None)
        assert call.attempts.served_by is not None
        return response, self._meta(call.route, call.attempts, call.attempts.served_by)

    async def stream(
        self,
        request: ChatRequest,
        *,
        api: str,
        tenant: str = TENANT_LOCAL,
        request_id: str | None = None,
        task: str | None = None,
        constraints: Constraints = ANYWHERE,
    ) -> StreamSession:
        """Open a stream: fallback happens here, before anything reaches the client.

        Raises `RoutingError` or `RequestFailed`. The returned session must be closed.
        """
        assert self._controller is not None
        call = self._start_call(
            request,
            api=api,
            tenant=tenant,
            request_id=request_id,
            task=task,
            constraints=constraints,
        )
        assert call.route is not None
        try:
            handle = await self._controller.open_stream(
                request, call.route, self._deadline(call.route), call.attempts
            )
        except RequestFailed as exc:
            self._log(call, stream=True, status=exc.status, outcome=exc.cause, error=exc.message)
            raise
        return StreamSession(self, call, handle)

    def _meta(self, route: Route, attempts: Attempts, deployment: str) -> ResponseMeta:
        dep = self.config.deployments[deployment]
        return ResponseMeta(
            request_id=attempts.request_id,
            tier=route.tier,
            tier_reason=route.reason,
            arm=ARM_BASELINE,
            provider=dep.provider,
            deployment=deployment,
            model=dep.model,
            attempts=len(attempts.path),
            path=tuple(attempts.path),
            cache="bypass",
            cost_usd=attempts.cost_usd,
        )

    def _log(
        self, call: _Call, *, stream: bool, status: int, outcome: str, error: str | None
    ) -> None:
        attempts, route = call.attempts, call.route
        served = attempts.served_by
        usage = attempts.usage
        rec = RequestRecord(
            request_id=attempts.request_id,
            started_at=call.started_wall,
            tenant=call.tenant,
            api=call.api,
            model_requested=call.request.model,
            tier=route.tier if route else None,
            tier_reason=route.reason if route else None,
            arm=ARM_BASELINE,
            deployment=served,
            provider=self.config.deployments[served].provider if served else None,
            stream=stream,
            status=status,
            outcome=outcome,
            attempts=len(attempts.path),
            fallback=attempts.fallback,
            latency_ms=(time.monotonic() - call.started) * 1000,
            ttft_ms=attempts.ttft_ms,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cost_usd=attempts.cost_usd,
            cache="bypass",
            error=error,
            task=call.task,
        )
        self.metrics.request_finished(rec, tuple(attempts.path), attempts.fallback_causes)
        self.store.log_request(rec)

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
            release="config",
            rollout=None,
            providers=m.provider_views(now, deployments, self.drained),
            deployments=deployments,
            tiers=m.tier_views(now, by_name),
            fallback=m.fallback_view(now),
            tokens=m.token_view(now),
            recent=m.recent(),
            state_queue=self._store.stats.queued if self._store else 0,
        )

    def _publish(self) -> None:
        self._latest = self._build()

    async def _publisher(self) -> None:
        interval = self.config.server.snapshot_interval_s
        while True:
            await asyncio.sleep(interval)
            self._publish()
            async with self._published:
                self._published.notify_all()

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


class StreamSession:
    """A stream that has its first event. Iterate it once, then `close` it (always)."""

    def __init__(self, engine: Engine, call: _Call, handle: StreamHandle) -> None:
        assert call.route is not None
        self._engine = engine
        self._call = call
        self._handle = handle
        self._closed = False
        self.meta = engine._meta(call.route, handle.attempts, handle.deployment)
        """Known when the first event arrives; ``cost_usd`` is None until the stream ends."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._handle.__aiter__()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._handle.close()
        err = self._handle.error
        self._engine._log(
            self._call,
            stream=True,
            status=200,
            outcome="ok" if err is None else err.cause,
            error=None if err is None else err.message,
        )


@dataclass(slots=True)
class _Call:
    """One request on its way through the engine."""

    request: ChatRequest
    api: str
    tenant: str
    task: str | None
    attempts: Attempts
    started_wall: float
    started: float
    route: Route | None = None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
