"""The control layer: the attempt loop that turns a `Route` into an answer.

One deadline covers the whole request. Deployments in the route's chain are tried in order;
a failure moves on to the next deployment only when its cause is one of the policy's fallback
triggers (connect, timeout, 429, 5xx, overloaded) — never for a bad request or an auth failure,
which would fail everywhere. A context-length failure skips ahead to the next deployment with a
larger window. For streams, fallback is possible only until the first event has been received:
once a byte may have reached the client the stream is never retried, and a later failure ends
it with an error event.

Every attempt is reported to `Metrics` and the request log as it ends, with its cause.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from engine.breakers import Breakers
from engine.budgets import BudgetExceeded
from engine.config import Config, PolicyConfig
from engine.metrics import Metrics
from engine.pricing import PriceBook
from engine.retry_budget import RetryBudget
from engine.routing import Route
from providers.adapters import Adapter, Timeouts
from providers.canonical import ChatRequest, ChatResponse, StreamEnd, StreamEvent, Usage
from providers.errors import (
    AuthFailed,
    ContextTooLong,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    StreamBroken,
)
from state.records import AttemptRecord
from state.store import Store

# A StreamBroken before the first event is an upstream that failed to produce a stream: for the
# fallback policy it is a server error.
_TRIGGER_OF_CAUSE = {"stream": "5xx"}
# Transient failures worth one more try on the same deployment; a 429 waits out its cooldown,
# and a timeout usually means the deployment is overloaded, so those move on instead.
_SAME_DEPLOYMENT_CAUSES = frozenset({"connect", "5xx"})


class ClientGone(ProviderError):
    """The client disconnected before its stream finished: not the upstream's fault."""

    cause = "client_closed"


class RequestFailed(Exception):
    """Every permitted attempt failed, or the first failure was not one to fall back on.

    ``status``/``code``/``message`` are what the client is told; ``kind`` chooses the error
    type in the inbound API's shape (``upstream``, ``timeout``, ``rate_limit``,
    ``invalid_request``, ``context_length``, ``unavailable``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        kind: str,
        code: str,
        cause: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.code = code
        self.cause = cause
        self.retry_after = retry_after


@dataclass(slots=True)
class Attempts:
    """What happened to one request's attempts so far; owned by that request's task."""

    request_id: str
    path: list[str] = field(default_factory=list)
    failures: list[tuple[str, ProviderError]] = field(default_factory=list)
    served_by: str | None = None
    usage: Usage | None = None
    ttft_ms: float | None = None
    cost_usd: float | None = None
    """What every attempt of the request cost, failed ones that reported usage included; None
    when the deployment that served it has no known price."""
    guard: Callable[[str], None] | None = None
    """Called before each attempt with its deployment; raises `BudgetExceeded` to stop."""

    @property
    def fallback(self) -> bool:
        """Served, but not by the route's first choice."""
        return self.served_by is not None and self.served_by != self.path[0]

    @property
    def fallback_causes(self) -> tuple[str, ...]:
        return tuple(err.cause for _, err in self.failures)


@dataclass(slots=True)
class _Plan:
    """Where one request's attempt loop stands."""

    chain: tuple[str, ...]
    deadline: Deadline
    attempts: Attempts
    policy: PolicyConfig
    index: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    budget_exhausted: bool = False
    refusal: RequestFailed | None = None


@dataclass(frozen=True, slots=True)
class Deadline:
    """The request's deadline and the per-attempt limits inside it, in seconds."""

    connect: float
    first_token: float
    """Per streaming attempt: until the first event."""
    attempt: float
    """Per non-streaming attempt: until the whole answer."""
    expires_at: float
    """In `time.monotonic` seconds."""

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()


class Controller:
    def __init__(
        self,
        config: Config,
        adapters: Mapping[str, Adapter],
        metrics: Metrics,
        store: Store,
        *,
        breakers: Breakers,
        retry_budget: RetryBudget,
        prices: PriceBook,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._adapters = adapters
        self._metrics = metrics
        self._store = store
        self._breakers = breakers
        self._budget = retry_budget
        self._prices = prices
        self._clock = clock
        self._rng = rng or random.Random()

    # -- shared pieces ---------------------------------------------------------------------

    async def _next(self, plan: _Plan, err: ProviderError | None) -> str | None:
        """The deployment to try next (after ``err`` at the current one), or None to stop.

        Retries the same deployment for connect errors and 5xx while the policy allows, after a
        jittered backoff; otherwise moves down the chain (a context-length failure skips to the
        next larger window), passing over deployments whose breaker opened meanwhile. Every
        attempt after the first must come out of the retry budget."""
        policy = plan.policy
        chain = plan.chain
        if err is None:
            return chain[0]
        if len(plan.attempts.path) >= policy.max_attempts:
            return None
        i = plan.index
        trigger = _TRIGGER_OF_CAUSE.get(err.cause, err.cause)
        now = self._clock()
        same = (
            err.cause in _SAME_DEPLOYMENT_CAUSES
            and plan.retries.get(chain[i], 0) < policy.same_deployment_retries
            and not self._breakers.unavailable(chain[i], now)
        )
        if same:
            candidate: int | None = i
        elif isinstance(err, ContextTooLong):
            window = self._config.deployments[chain[i]].context_window
            candidate = next(
                (
                    j
                    for j in range(i + 1, len(chain))
                    if self._config.deployments[chain[j]].context_window > window
                ),
                None,
            )
        elif err.retryable and trigger in policy.fallback_on:
            candidate = i + 1
        else:
            candidate = None
        while candidate is not None and candidate < len(chain) and not same:
            why = self._breakers.unavailable(chain[candidate], now)
            if not why:
                break
            plan.skipped.append((chain[candidate], why))
            candidate += 1
        if candidate is None or candidate >= len(chain):
            return None
        if chain[candidate] != chain[i] and not self._guard(plan, chain[candidate]):
            return None
        if not self._budget.try_spend(now):
            plan.budget_exhausted = True
            return None
        if candidate == i:
            retry = plan.retries.get(chain[i], 0)
            plan.retries[chain[i]] = retry + 1
            # Full jitter: spreads retries of many clients so they do not arrive together.
            pause = self._rng.uniform(0, policy.backoff_ms * 2**retry) / 1000
            if pause >= plan.deadline.remaining():
                return None
            await asyncio.sleep(pause)
        plan.index = candidate
        return chain[candidate]

    def _guard(self, plan: _Plan, name: str) -> bool:
        """Re-check the tenant's budget for a fallback to ``name``; False stops the request."""
        if plan.attempts.guard is None:
            return True
        try:
            plan.attempts.guard(name)
        except BudgetExceeded as exc:
            plan.refusal = RequestFailed(
                exc.message,
                status=429,
                kind="rate_limit",
                code="budget_exceeded",
                cause="budget",
                retry_after=exc.retry_after,
            )
            return False
        return True

    def _begin(self, attempts: Attempts, name: str) -> tuple[float, float]:
        attempts.path.append(name)
        now = self._clock()
        self._breakers.begin(name, now)
        self._metrics.attempt_started(name)
        return now, time.monotonic()

    def _record(
        self,
        attempts: Attempts,
        name: str,
        started_wall: float,
        started: float,
        *,
        error: ProviderError | None,
        usage: Usage | None,
        ttft_ms: float | None,
    ) -> None:
        dep = self._config.deployments[name]
        rec = AttemptRecord(
            request_id=attempts.request_id,
            attempt=len(attempts.path),
            started_at=started_wall,
            deployment=name,
            provider=dep.provider,
            model=dep.model,
            outcome="ok" if error is None else error.cause,
            http_status=200 if error is None else error.status,
            latency_ms=(time.monotonic() - started) * 1000,
            ttft_ms=ttft_ms,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            error=None if error is None else error.message[:500],
        )
        self._metrics.attempt_finished(rec)
        self._store.log_attempt(rec)
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        self._breakers.record(name, rec.outcome, self._clock(), retry_after=retry_after)
        if usage is not None:
            cost = self._prices.cost(name, usage)
            if cost is not None:
                attempts.cost_usd = (attempts.cost_usd or 0.0) + cost
        if error is None:
            attempts.served_by = name
            attempts.usage = usage
            attempts.ttft_ms = ttft_ms
            if usage is not None and self._prices.price(name) is None:
                attempts.cost_usd = None  # served unpriced: the total is unknown, never $0
        else:
            attempts.failures.append((name, error))

    def _timeouts(self, deadline: Deadline, first_token: bool) -> tuple[Timeouts, float]:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise ProviderTimeout(
                "the request's deadline passed before this attempt", phase="total"
            )
        read = min(deadline.first_token if first_token else deadline.attempt, remaining)
        return Timeouts(connect=min(deadline.connect, remaining), read=read), read

    def _give_up(self, plan: _Plan) -> RequestFailed:
        attempts, deadline = plan.attempts, plan.deadline
        if plan.refusal is not None:
            return plan.refusal
        if plan.budget_exhausted:
            tried = "; ".join(f"{n}: {e.cause}" for n, e in attempts.failures)
            return RequestFailed(
                f"Failing fast: the retry budget is spent ({self._budget.describe(self._clock())})"
                f", so routedeck is not retrying ({tried}). Upstreams are failing; retry later.",
                status=503,
                kind="unavailable",
                code="retry_budget_exhausted",
                cause=attempts.failures[-1][1].cause if attempts.failures else "unavailable",
            )
        if not attempts.failures:
            return RequestFailed(
                "The request's deadline passed before any upstream could be tried.",
                status=504,
                kind="timeout",
                code="deadline_exceeded",
                cause="timeout",
            )
        name, last = attempts.failures[-1]
        tried = "; ".join(f"{n}: {e.cause} ({e.message[:160]})" for n, e in attempts.failures)
        provider = self._config.deployments[name].provider
        if isinstance(last, ContextTooLong):
            return RequestFailed(
                f"The conversation is too long for every deployment that could serve it "
                f"({tried}). Shorten it or use a model with a larger context window.",
                status=400,
                kind="context_length",
                code="context_length_exceeded",
                cause=last.cause,
            )
        if isinstance(last, AuthFailed):
            env = self._config.providers[provider].api_key_env
            where = f" Check the key in ${env}." if env else ""
            return RequestFailed(
                f"Provider {provider!r} rejected routedeck's credentials ({last.message[:200]}).{where}",
                status=502,
                kind="upstream",
                code="upstream_auth_failed",
                cause=last.cause,
            )
        if not last.retryable:
            return RequestFailed(
                f"The upstream {provider!r} rejected the request: {last.message[:300]}",
                status=400,
                kind="invalid_request",
                code="upstream_bad_request",
                cause=last.cause,
            )
        if all(isinstance(e, RateLimited) for _, e in attempts.failures):
            waits = [
                e.retry_after
                for _, e in attempts.failures
                if isinstance(e, RateLimited) and e.retry_after
            ]
            return RequestFailed(
                f"Every deployment for this route is rate limited ({tried}). Retry later.",
                status=429,
                kind="rate_limit",
                code="upstream_rate_limited",
                cause="429",
                retry_after=min(waits) if waits else None,
            )
        skipped = "".join(f"; {n} skipped: {why}" for n, why in plan.skipped)
        tried += skipped
        if deadline.remaining() <= 0 or isinstance(last, ProviderTimeout):
            return RequestFailed(
                f"No upstream answered within the deadline ({tried}).",
                status=504,
                kind="timeout",
                code="upstream_timeout",
                cause=last.cause,
            )
        return RequestFailed(
            f"Every deployment tried for this request failed ({tried}).",
            status=502,
            kind="upstream",
            code="upstream_failed",
            cause=last.cause,
        )

    # -- non-streaming ---------------------------------------------------------------------

    async def complete(
        self, request: ChatRequest, route: Route, deadline: Deadline, attempts: Attempts
    ) -> ChatResponse:
        plan = _Plan(
            route.chain,
            deadline,
            attempts,
            route.policy or self._config.policy,
            skipped=list(route.skipped),
        )
        self._budget.request(self._clock())
        err: ProviderError | None = None
        while (name := await self._next(plan, err)) is not None:
            dep = self._config.deployments[name]
            started_wall, started = self._begin(attempts, name)
            try:
                timeouts, budget = self._timeouts(deadline, first_token=False)
                async with asyncio.timeout(budget):
                    response = await self._adapters[name].complete(
                        request, dep.model, timeouts=timeouts
                    )
            except TimeoutError:
                err = ProviderTimeout(f"no answer within {budget:.1f}s", phase="total")
            except ProviderError as exc:
                err = exc
            else:
                self._record(
                    attempts,
                    name,
                    started_wall,
                    started,
                    error=None,
                    usage=response.usage,
                    ttft_ms=None,
                )
                return response
            self._record(attempts, name, started_wall, started, error=err, usage=None, ttft_ms=None)
        raise self._give_up(plan)

    # -- streaming -------------------------------------------------------------------------

    async def open_stream(
        self, request: ChatRequest, route: Route, deadline: Deadline, attempts: Attempts
    ) -> StreamHandle:
        """Try deployments until one produces its first event; nothing has reached the client yet."""
        plan = _Plan(
            route.chain,
            deadline,
            attempts,
            route.policy or self._config.policy,
            skipped=list(route.skipped),
        )
        self._budget.request(self._clock())
        err: ProviderError | None = None
        while (name := await self._next(plan, err)) is not None:
            dep = self._config.deployments[name]
            started_wall, started = self._begin(attempts, name)
            events: AsyncIterator[StreamEvent] | None = None
            try:
                timeouts, budget = self._timeouts(deadline, first_token=True)
                events = self._adapters[name].stream(request, dep.model, timeouts=timeouts)
                async with asyncio.timeout(budget):
                    first = await anext(events)
            except TimeoutError:
                err = ProviderTimeout(f"no first token within {budget:.1f}s", phase="first_token")
            except StopAsyncIteration:
                err = StreamBroken("the upstream closed the stream before any event")
            except ProviderError as exc:
                err = exc
            else:
                ttft_ms = (time.monotonic() - started) * 1000
                attempts.served_by = name
                attempts.ttft_ms = ttft_ms
                return StreamHandle(
                    self,
                    attempts,
                    name,
                    events,
                    first,
                    started_wall,
                    started,
                    ttft_ms,
                    deadline,
                    read_timeout=timeouts.read,
                )
            if events is not None:
                await _aclose(events)
            self._record(attempts, name, started_wall, started, error=err, usage=None, ttft_ms=None)
        raise self._give_up(plan)


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class StreamHandle:
    """An upstream stream that has produced its first event; iterate it exactly once.

    Iteration yields every event, the first included, and ends after `StreamEnd`. A failure
    after the first event is recorded (cause ``stream`` or ``timeout``) and re-raised as
    `StreamBroken`/`ProviderTimeout`; there is no retry. `close` must be called (it is
    idempotent) so that an abandoned stream is still recorded.
    """

    def __init__(
        self,
        controller: Controller,
        attempts: Attempts,
        deployment: str,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent,
        started_wall: float,
        started: float,
        ttft_ms: float,
        deadline: Deadline,
        *,
        read_timeout: float = float("inf"),
    ) -> None:
        self._controller = controller
        self._read_timeout = read_timeout
        self.attempts = attempts
        self.deployment = deployment
        self._events = events
        self._first: StreamEvent | None = first
        self._started_wall = started_wall
        self._started = started
        self.ttft_ms = ttft_ms
        self._deadline = deadline
        self._done = False
        self.error: ProviderError | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        first, self._first = self._first, None
        if first is None:
            return
        yield first
        if isinstance(first, StreamEnd):
            self._finish(None, first.usage)
            return
        while True:
            try:
                remaining = max(self._deadline.remaining(), 0.0)
                if remaining > self._read_timeout + 0.05:
                    # The transport's read timeout ends a stalled stream before the deadline
                    # could: no per-event timer needed (it was the costliest part of a stream).
                    event = await anext(self._events)
                else:
                    async with asyncio.timeout(remaining):
                        event = await anext(self._events)
            except StopAsyncIteration:
                err: ProviderError = StreamBroken(
                    "the upstream ended the stream without finishing it"
                )
            except TimeoutError:
                err = ProviderTimeout("the request's deadline passed mid-stream", phase="total")
            except ProviderError as exc:
                err = (
                    exc
                    if isinstance(exc, StreamBroken | ProviderTimeout)
                    else StreamBroken(exc.message)
                )
            else:
                yield event
                if isinstance(event, StreamEnd):
                    self._finish(None, event.usage)
                    return
                continue
            self._finish(err, None)
            raise err

    def _finish(self, error: ProviderError | None, usage: Usage | None) -> None:
        if self._done:
            return
        self._done = True
        self.error = error
        self._controller._record(
            self.attempts,
            self.deployment,
            self._started_wall,
            self._started,
            error=error,
            usage=usage,
            ttft_ms=self.ttft_ms,
        )

    async def close(self) -> None:
        """End the upstream stream; an unfinished one is recorded as abandoned by the client."""
        if not self._done:
            self._finish(ClientGone("the client went away before the stream finished"), None)
        await _aclose(self._events)
