"""One request's way through the engine, from the inbound key to the logged outcome.

    key → tenant ─► quota ─► route ─► caps (output clamp, input trim) ─► cache lookup
        ─► budget reservation ─► attempts (control layer) ─► settle, ledger, cache store, log

Each refusal along the way is a `RequestFailed` (or a `RoutingError`) carrying the HTTP status,
the error kind and a message that says what to do; every request, refused or served, is logged
once with its outcome. Budgets are reserved before any upstream call and settled after it; the
ledger entry is committed before the answer is acknowledged.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.budgets import BudgetExceeded, Reservation
from engine.cache import CacheDecision, replay
from engine.control import Attempts, Deadline, RequestFailed, StreamHandle
from engine.quotas import QuotaExceeded
from engine.rollout import ARM_BASELINE, Release
from engine.routing import (
    ANYWHERE,
    Constraints,
    Route,
    Router,
    RoutingError,
    tenant_constraints,
)
from engine.tenants import KeyRefused
from engine.tokens import estimate_input_tokens
from engine.trimming import transcript, trim, with_summary
from providers.canonical import (
    ChatRequest,
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from state.records import RequestRecord

if TYPE_CHECKING:
    from engine.engine import Engine

SUMMARY_PROMPT = (
    "Summarise the conversation below in at most 80 words, keeping names, numbers, decisions "
    "and open questions. Reply with the summary only."
)


def new_request_id() -> str:
    return "rd-" + os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the HTTP layer learned about a request besides its body."""

    api: str
    key: str | None = None
    task: str | None = None
    constraints: Constraints = ANYWHERE
    cache: str | None = None
    """The ``x-routedeck-cache`` header: on, off, refresh, or None."""
    user: str | None = None
    """The end user (``x-routedeck-user``, OpenAI ``user``, Anthropic ``metadata.user_id``):
    a rollout keeps each user on one arm."""
    request_id: str = field(default_factory=new_request_id)


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """How a request was served: the ``x-routedeck-*`` headers."""

    request_id: str
    tier: str | None
    tier_reason: str
    arm: str
    release: str
    """The release that routed the request, "r3"."""
    provider: str
    deployment: str
    model: str
    attempts: int
    path: tuple[str, ...]
    cache: str
    cost_usd: float | None
    """None when the price is unknown (``unpriced``), never $0; 0.0 for a cache hit."""
    trimmed_tokens: int = 0


@dataclass(slots=True)
class _Call:
    """One request on its way through the engine."""

    request: ChatRequest
    inbound: Inbound
    attempts: Attempts
    started_wall: float
    started: float
    tenant: str = "local"
    arm: str = ARM_BASELINE
    release: Release | None = None
    route: Route | None = None
    decision: CacheDecision | None = None
    cache_key: str | None = None
    reservation: Reservation | None = None
    trimmed_tokens: int | None = None
    saved_usd: float | None = None
    logged: bool = False


class Pipeline:
    def __init__(self, engine: Engine) -> None:
        self._e = engine

    # -- admission -------------------------------------------------------------------------

    def _start(self, request: ChatRequest, inbound: Inbound) -> _Call:
        e = self._e
        call = _Call(request, inbound, Attempts(inbound.request_id), e.clock(), time.monotonic())
        try:
            call.tenant = e.keys.tenant_for(inbound.key)
        except KeyRefused as exc:
            raise self._refuse(
                call,
                RequestFailed(
                    exc.message, status=401, kind="auth", code="invalid_api_key", cause="auth"
                ),
            ) from None
        try:
            e.quotas.admit(call.tenant, estimate_input_tokens(request), e.clock())
        except QuotaExceeded as exc:
            raise self._refuse(
                call,
                RequestFailed(
                    exc.message,
                    status=429,
                    kind="rate_limit",
                    code=f"{exc.which}_exceeded",
                    cause="quota",
                    retry_after=exc.retry_after,
                ),
            ) from None
        try:
            call.route = self._route(call)
        except RoutingError as exc:
            self._log(call, status=exc.status, outcome=exc.code, error=exc.message)
            raise
        return call

    def _route(self, call: _Call) -> Route:
        """Pick the call's release arm, then its route through that release's routing."""
        e = self._e
        request, tenant, inbound = call.request, call.tenant, call.inbound
        call.arm, call.release = e.rollouts.assign(
            tenant, inbound.user, inbound.request_id, safe_mode=e.safe_mode
        )
        constraints = inbound.constraints
        tenant_config = e.config.tenants.get(tenant)
        if tenant_config is not None:
            constraints = constraints.merge(
                tenant_constraints(tenant_config.regions, tenant_config.compliance)
            )
        now = e.clock()
        return call.release.router.route(
            request,
            task=inbound.task,
            constraints=constraints,
            drained=e.drained,
            unavailable=lambda name: e.breakers.unavailable(name, now),
            force_tier=e.operator.safe_tier if e.safe_mode else None,
        )

    def _refuse(self, call: _Call, failure: RequestFailed) -> RequestFailed:
        self._log(call, status=failure.status, outcome=failure.cause, error=failure.message)
        return failure

    # -- caps ------------------------------------------------------------------------------

    def _count(self, request: ChatRequest, deployment: str) -> int:
        e = self._e
        dep = e.config.deployments[deployment]
        protocol = e.config.providers[dep.provider].protocol
        return e.tokens.count_request(request, dep.model, protocol).tokens

    async def _apply_caps(self, call: _Call) -> None:
        assert call.route is not None
        tier = self._router(call).tier_of(call.route)
        request = call.request
        if tier.max_output_tokens is not None:
            wanted = request.max_tokens or tier.max_output_tokens
            request = dataclasses.replace(request, max_tokens=min(wanted, tier.max_output_tokens))
        cap = tier.max_input_tokens
        if cap is not None:
            first = call.route.chain[0]
            result = trim(request, cap, lambda r: self._count(r, first))
            name = call.route.tier or first
            if result.tokens_before > cap and (tier.on_input_over == "reject" or not result.fits):
                over = result.tokens_before - cap
                why = (
                    "Shorten it"
                    if tier.on_input_over == "reject"
                    else "Even its system prompt and newest turn do not fit; shorten them"
                )
                raise self._refuse(
                    call,
                    RequestFailed(
                        f"The request is {result.tokens_before} input tokens, {over} over the "
                        f"{cap}-token input cap of tier {name!r}. {why}.",
                        status=400,
                        kind="context_length",
                        code="input_over_cap",
                        cause="input_cap",
                    ),
                )
            if result.dropped:
                request = result.request
                call.trimmed_tokens = result.trimmed_tokens
                if tier.summarize_trimmed:
                    summary = await self._summarize(result.dropped, tier.summary_tier, call)
                    if summary:
                        request = with_summary(result, summary)
        call.request = request

    async def _summarize(self, dropped: tuple[Message, ...], tier: str, call: _Call) -> str:
        """A short summary of trimmed turns by ``tier`` (deterministic, so cached)."""
        summary_request = ChatRequest(
            model=tier,
            messages=(
                Message("system", (TextPart(SUMMARY_PROMPT),)),
                Message("user", (TextPart(transcript(dropped)),)),
            ),
            temperature=0,
            max_tokens=200,
        )
        inbound = Inbound(api="internal", task="history_summary")
        try:
            response, _ = await self.complete(summary_request, inbound, tenant=call.tenant)
        except (RequestFailed, RoutingError):
            return ""  # the trimmed request still fits: go on without a summary
        return response.text.strip()

    # -- cache and budget ------------------------------------------------------------------

    def _cache_decision(self, call: _Call) -> None:
        assert call.route is not None
        try:
            call.decision = self._e.cache.decide(call.request, call.inbound.cache)
        except ValueError as exc:
            raise self._refuse(
                call,
                RequestFailed(
                    str(exc),
                    status=400,
                    kind="invalid_request",
                    code="invalid_cache_header",
                    cause="bad_request",
                ),
            ) from None
        if call.decision.lookup or call.decision.store:
            assert call.release is not None
            target = call.release.cache_target(call.route.tier, call.route.chain[0])
            call.cache_key = self._e.cache.key(call.request, tenant=call.tenant, target=target)

    def _reserve(self, call: _Call) -> None:
        assert call.route is not None
        e = self._e
        reservation = e.budgets.open(call.tenant)
        input_tokens = call.route.input_tokens_estimate
        max_out = call.request.max_tokens

        def worst(deployment: str) -> float | None:
            out = max_out or e.config.deployments[deployment].max_output_tokens
            return e.prices.worst_case(deployment, input_tokens, out)

        try:
            reservation.resize(worst(call.route.chain[0]))
        except BudgetExceeded as exc:
            raise self._refuse(
                call,
                RequestFailed(
                    exc.message,
                    status=429,
                    kind="rate_limit",
                    code="budget_exceeded",
                    cause="budget",
                    retry_after=exc.retry_after,
                ),
            ) from None
        call.reservation = reservation
        call.attempts.guard = lambda deployment: reservation.resize(worst(deployment))

    async def _settle(self, call: _Call, response: ChatResponse | None) -> None:
        """Settle the budget, write the ledger (durably), count tokens, store in the cache."""
        e = self._e
        attempts = call.attempts
        usage = attempts.usage
        if call.reservation is not None:
            call.reservation.settle(attempts.cost_usd)
        now = e.clock()
        tokens_in = usage.input_tokens if usage else 0
        tokens_out = usage.output_tokens if usage else 0
        e.quotas.used_tokens(call.tenant, tokens_in + tokens_out, now)
        if attempts.path:
            # None means unpriced only when an unpriced deployment served it; attempts that all
            # failed without reporting usage cost nothing.
            served = attempts.served_by
            unpriced = served is not None and e.prices.price(served) is None
            await e.budgets.record(
                call.tenant,
                cost=attempts.cost_usd if attempts.cost_usd is not None or unpriced else 0.0,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cache_hit=False,
                saved=None,
                now=now,
            )
        if (
            response is not None
            and call.decision is not None
            and call.decision.store
            and call.cache_key is not None
        ):
            await e.cache.put(
                call.cache_key, tenant=call.tenant, response=response, cost_usd=attempts.cost_usd
            )

    # -- serving ---------------------------------------------------------------------------

    async def complete(
        self, request: ChatRequest, inbound: Inbound, *, tenant: str | None = None
    ) -> tuple[ChatResponse, ResponseMeta]:
        """Serve a non-streaming request. Raises `RoutingError` or `RequestFailed`.

        ``tenant`` skips key resolution and quotas (internal requests made for a tenant)."""
        e = self._e
        call = (
            self._start(request, inbound)
            if tenant is None
            else self._start_internal(request, inbound, tenant)
        )
        await self._apply_caps(call)
        self._cache_decision(call)
        hit = await self._lookup(call)
        if hit is not None:
            return hit, self._hit_meta(call, hit)
        self._reserve(call)
        assert call.route is not None
        try:
            response = await e.controller.complete(
                call.request, call.route, self._deadline(call), call.attempts
            )
        except RequestFailed as exc:
            await self._settle(call, None)
            self._log(call, status=exc.status, outcome=exc.cause, error=exc.message)
            raise
        await self._settle(call, response)
        self._log(call, status=200, outcome="ok", error=None)
        assert call.attempts.served_by is not None
        return response, self._meta(call, call.attempts.served_by)

    def _start_internal(self, request: ChatRequest, inbound: Inbound, tenant: str) -> _Call:
        e = self._e
        call = _Call(
            request,
            inbound,
            Attempts(inbound.request_id),
            e.clock(),
            time.monotonic(),
            tenant=tenant,
        )
        try:
            call.route = self._route(call)
        except RoutingError as exc:
            self._log(call, status=exc.status, outcome=exc.code, error=exc.message)
            raise
        return call

    async def stream(self, request: ChatRequest, inbound: Inbound) -> Session:
        """Open a stream; fallback happens here, before anything reaches the client.

        Raises `RoutingError` or `RequestFailed`. The returned session must be closed."""
        e = self._e
        call = self._start(request, inbound)
        await self._apply_caps(call)
        self._cache_decision(call)
        hit = await self._lookup(call)
        if hit is not None:
            return CachedStream(self._hit_meta(call, hit), replay(hit))
        self._reserve(call)
        assert call.route is not None
        try:
            handle = await e.controller.open_stream(
                call.request, call.route, self._deadline(call), call.attempts
            )
        except RequestFailed as exc:
            await self._settle(call, None)
            self._log(call, status=exc.status, outcome=exc.cause, error=exc.message)
            raise
        return StreamSession(self, call, handle)

    async def _lookup(self, call: _Call) -> ChatResponse | None:
        if call.decision is None or not call.decision.lookup or call.cache_key is None:
            return None
        cached = await self._e.cache.get(call.cache_key)
        if cached is None:
            return None
        call.saved_usd = cached.cost_usd
        e = self._e
        usage = cached.response.usage
        await e.budgets.record(
            call.tenant,
            cost=0.0,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_hit=True,
            saved=cached.cost_usd,
            now=e.clock(),
        )
        call.attempts.usage = usage
        call.attempts.cost_usd = 0.0
        self._log(call, status=200, outcome="ok", error=None, cache="hit")
        return cached.response

    def _router(self, call: _Call) -> Router:
        return call.release.router if call.release is not None else self._e.router

    def _deadline(self, call: _Call) -> Deadline:
        assert call.route is not None
        tier = self._router(call).tier_of(call.route)
        return Deadline(
            connect=tier.connect_timeout_s,
            first_token=tier.first_token_s,
            attempt=tier.attempt_s,
            expires_at=time.monotonic() + tier.timeout_s,
        )

    def _cache_status(self, call: _Call) -> str:
        return call.decision.status if call.decision is not None else "bypass"

    def _meta(self, call: _Call, deployment: str) -> ResponseMeta:
        assert call.route is not None
        dep = self._e.config.deployments[deployment]
        return ResponseMeta(
            request_id=call.attempts.request_id,
            tier=call.route.tier,
            tier_reason=call.route.reason,
            arm=call.arm,
            release=self._release_label(call),
            provider=dep.provider,
            deployment=deployment,
            model=dep.model,
            attempts=len(call.attempts.path),
            path=tuple(call.attempts.path),
            cache=self._cache_status(call),
            cost_usd=call.attempts.cost_usd,
            trimmed_tokens=call.trimmed_tokens or 0,
        )

    def _hit_meta(self, call: _Call, response: ChatResponse) -> ResponseMeta:
        assert call.route is not None
        return ResponseMeta(
            request_id=call.attempts.request_id,
            tier=call.route.tier,
            tier_reason=call.route.reason,
            arm=call.arm,
            release=self._release_label(call),
            provider="cache",
            deployment="cache",
            model=response.model,
            attempts=0,
            path=(),
            cache="hit",
            cost_usd=0.0,
            trimmed_tokens=call.trimmed_tokens or 0,
        )

    def _release_label(self, call: _Call) -> str:
        return call.release.label if call.release is not None else "-"

    def _log(
        self, call: _Call, *, status: int, outcome: str, error: str | None, cache: str | None = None
    ) -> None:
        if call.logged:
            return
        call.logged = True
        e = self._e
        attempts, route = call.attempts, call.route
        served = attempts.served_by
        usage = attempts.usage
        rec = RequestRecord(
            request_id=attempts.request_id,
            started_at=call.started_wall,
            tenant=call.tenant,
            api=call.inbound.api,
            model_requested=call.request.model,
            tier=route.tier if route else None,
            tier_reason=route.reason if route else None,
            arm=call.arm,
            deployment=served,
            provider=e.config.deployments[served].provider if served else None,
            stream=call.request.stream,
            status=status,
            outcome=outcome,
            attempts=len(attempts.path),
            fallback=attempts.fallback,
            latency_ms=(time.monotonic() - call.started) * 1000,
            ttft_ms=attempts.ttft_ms,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cost_usd=attempts.cost_usd,
            cache=cache or self._cache_status(call),
            error=error,
            task=call.inbound.task,
            trimmed_tokens=call.trimmed_tokens,
            saved_usd=call.saved_usd,
            release=call.release.id if call.release is not None else None,
        )
        e.metrics.request_finished(rec, tuple(attempts.path), attempts.fallback_causes)
        e.store.log_request(rec)


class Session:
    """A stream ready for the client: `meta`, the events (iterate once), then `close`."""

    meta: ResponseMeta

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class StreamSession(Session):
    """An upstream stream that has its first event."""

    def __init__(self, pipeline: Pipeline, call: _Call, handle: StreamHandle) -> None:
        self._pipeline = pipeline
        self._call = call
        self._handle = handle
        self._closed = False
        self._assembler = _Assembler()
        self.meta = pipeline._meta(call, handle.deployment)
        """Known when the first event arrives; ``cost_usd`` is None until the stream ends."""

    async def _events(self) -> AsyncIterator[StreamEvent]:
        async for event in self._handle:
            self._assembler.add(event)
            yield event

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._handle.close()
        err = self._handle.error
        response = self._assembler.response(self._call.attempts.usage) if err is None else None
        self._pipeline._log(
            self._call,
            status=200,
            outcome="ok" if err is None else err.cause,
            error=None if err is None else err.message,
        )
        await self._pipeline._settle(self._call, response)


class CachedStream(Session):
    """A cache hit replayed as a stream."""

    def __init__(self, meta: ResponseMeta, events: list[StreamEvent]) -> None:
        self.meta = meta
        self._events = events

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        for event in self._events:
            yield event

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class _Assembler:
    """Rebuilds a whole `ChatResponse` from stream events, for the cache."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)
    finish: str = "stop"

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            parts = self.calls.setdefault(event.index, ["", "", ""])
            if event.id:
                parts[0] = event.id
            if event.name:
                parts[1] = event.name
            parts[2] += event.arguments
        elif isinstance(event, StreamEnd):
            self.finish = event.finish_reason

    def response(self, usage: Usage | None) -> ChatResponse:
        calls = tuple(ToolCall(i, n, a) for _, (i, n, a) in sorted(self.calls.items()))
        return ChatResponse(
            text="".join(self.text),
            tool_calls=calls,
            finish_reason=self.finish,  # type: ignore[arg-type]
            usage=usage or Usage(),
        )
