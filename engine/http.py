"""The HTTP face of the engine: the OpenAI- and Anthropic-compatible API and the admin API.

Routes:

- ``POST /v1/chat/completions`` — OpenAI Chat Completions, streaming (SSE) and not.
- ``POST /v1/messages`` — Anthropic Messages, streaming and not; the key may come as
  ``x-api-key`` or ``Authorization: Bearer``.
- ``GET /v1/models`` — every model name routedeck answers to (tiers, deployments, aliases), in a
  list both SDKs parse.
- ``GET /healthz`` — 200 while running, 503 while stopping.
- ``GET /metrics`` — Prometheus text format 0.0.4 (`engine.prometheus`); access as the admin
  routes.
- ``GET /admin/snapshot`` — the live `Snapshot` as JSON.
- ``POST /admin/preview`` — what a command would do (an `Effect`), without doing it.
- ``POST /admin/commands`` — apply a command (``{"command": "drain", "target": "sim-fast",
  "actor": "...", "reason": "..."}``, see `engine.commands`); 200 when applied, 409 when refused.
- ``GET /admin/audit?limit=N`` — the newest audit entries, oldest first; filters ``actor``,
  ``action`` (a prefix), ``target``, ``result``, ``since``/``until`` (Unix seconds), ``q`` (text
  in the detail) and ``after`` (an id: only newer entries, for following the log).
- ``GET /admin/rollout`` — the baseline, the rollout in progress (a `RolloutView`, or null)
  and the newest releases with their rollout events. Rollouts are driven with commands:
  ``rollout_start`` (``toml``, ``note``, ``emergency``), ``edit_tier`` (``tier``, ``mapping``),
  ``advance`` (``override``) and ``rollback``, each with a ``reason``.
- ``GET /admin/export?routing_only=1`` — the config with the baseline release's routing, as
  TOML (``text/plain``), to write back to the config file.
- ``GET /admin/keys``, ``POST /admin/keys`` (``{"tenant": ..., "name": ...}``; the answer holds
  the key, shown this once), ``POST /admin/keys/{id}/revoke`` — virtual API keys.

With an admin token configured (``[server] admin_token_env``) the admin routes require
``Authorization: Bearer <token>``; without one they exist only when the server is bound to
loopback.

Every proxied response carries ``x-routedeck-*`` headers (request id, tier, tier reason, arm, release,
provider, deployment, model, attempts, fallback path, cache, cost). Every error is in the inbound
API's own error shape, with a status the official SDKs understand and a message that says what
to do; no request ever gets a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.commands import Command, CommandError, command_from_dict
from engine.control import RequestFailed
from engine.engine import Engine
from engine.pipeline import Inbound, ResponseMeta, Session, new_request_id
from engine.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from engine.prometheus import render as render_prometheus
from engine.releases import export_toml
from engine.routing import RoutingError, constraints_from
from engine.tenants import TENANT_LOCAL, ApiKey
from providers import anthropic_wire, openai_wire
from providers.canonical import ChatRequest
from providers.errors import InvalidRequest, ProviderError

log = logging.getLogger("routedeck.http")


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Failure:
    """A client-facing error, independent of the inbound API's shape."""

    status: int
    kind: str
    """``invalid_request``, ``not_found``, ``too_large``, ``auth``, ``forbidden``,
    ``rate_limit``, ``timeout``, ``upstream``, ``context_length`` or ``unavailable``."""
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None


_ROUTING_KINDS = {"context_length_exceeded": "context_length"}
_STATUS_KINDS = {400: "invalid_request", 403: "forbidden", 404: "not_found", 503: "unavailable"}

_OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "auth": "authentication_error",
    "forbidden": "permission_error",
    "rate_limit": "rate_limit_error",
    "timeout": "timeout_error",
    "upstream": "upstream_error",
    "unavailable": "service_unavailable_error",
}
_ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "auth": "authentication_error",
    "forbidden": "permission_error",
    "rate_limit": "rate_limit_error",
    "timeout": "api_error",
    "upstream": "api_error",
    "unavailable": "overloaded_error",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


class _JSONResponse:
    """A whole JSON response as its two ASGI messages, for the proxy routes.

    Starlette's `Response` lower-cases, re-encodes and re-checks every header on each request;
    with routedeck's dozen ``x-routedeck-*`` headers that was a quarter of the HTTP layer's own
    CPU per proxied request."""

    __slots__ = ("_body", "_start")

    def __init__(self, body: Any, status: int, headers: dict[str, str]) -> None:
        raw = orjson.dumps(body)
        encoded = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(raw)),
        ]
        encoded += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._start = {"type": "http.response.start", "status": status, "headers": encoded}
        self._body = {"type": "http.response.body", "body": raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)
        await send(self._body)


def _header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by (lower-case) name, the first of repeated ones, decoded once:
    Starlette's `Headers.get` scans and decodes the whole list on every lookup."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


def meta_headers(meta: ResponseMeta, *, with_cost: bool) -> dict[str, str]:
    headers = {
        "x-routedeck-request-id": meta.request_id,
        "x-routedeck-tier": meta.tier or "-",
        "x-routedeck-tier-reason": meta.tier_reason,
        "x-routedeck-arm": meta.arm,
        "x-routedeck-release": meta.release,
        "x-routedeck-provider": meta.provider,
        "x-routedeck-deployment": meta.deployment,
        "x-routedeck-model": meta.model,
        "x-routedeck-attempts": str(meta.attempts),
        "x-routedeck-fallback": ">".join(meta.path) if len(meta.path) > 1 else "none",
        "x-routedeck-cache": meta.cache,
    }
    if with_cost:
        headers["x-routedeck-cost"] = (
            "unpriced" if meta.cost_usd is None else f"{meta.cost_usd:.8f}"
        )
    if meta.trimmed_tokens:
        headers["x-routedeck-trimmed-tokens"] = str(meta.trimmed_tokens)
    return headers


class _Dialect:
    """One inbound API: how to parse its requests and shape its answers and errors."""

    name: str

    def parse(self, body: Any) -> ChatRequest:
        raise NotImplementedError

    def error(self, failure: _Failure) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, request_id: str, response: Any, meta: ResponseMeta) -> dict[str, Any]:
        raise NotImplementedError

    def encoder(self, request_id: str, request: ChatRequest, meta: ResponseMeta) -> Any:
        raise NotImplementedError

    def stream_error(self, encoder: Any, failure: _Failure) -> bytes:
        raise NotImplementedError


class _OpenAI(_Dialect):
    name = "openai"

    def parse(self, body: Any) -> ChatRequest:
        return openai_wire.parse_request(body)

    def error(self, failure: _Failure) -> dict[str, Any]:
        return openai_wire.error_body(
            failure.message, _OPENAI_TYPES[failure.kind], param=failure.param, code=failure.code
        )

    def answer(self, request_id: str, response: Any, meta: ResponseMeta) -> dict[str, Any]:
        return openai_wire.encode_response(
            response, id=f"chatcmpl-{request_id}", model=meta.model, created=int(time.time())
        )

    def encoder(self, request_id: str, request: ChatRequest, meta: ResponseMeta) -> Any:
        return openai_wire.StreamEncoder(
            id=f"chatcmpl-{request_id}",
            model=meta.model,
            created=int(time.time()),
            include_usage=request.include_usage,
        )

    def stream_error(self, encoder: Any, failure: _Failure) -> bytes:
        return bytes(encoder.error(failure.message, _OPENAI_TYPES[failure.kind], failure.code))


class _Anthropic(_Dialect):
    name = "anthropic"

    def parse(self, body: Any) -> ChatRequest:
        return anthropic_wire.parse_request(body)

    def error(self, failure: _Failure) -> dict[str, Any]:
        return anthropic_wire.error_body(failure.message, _ANTHROPIC_TYPES[failure.kind])

    def answer(self, request_id: str, response: Any, meta: ResponseMeta) -> dict[str, Any]:
        return anthropic_wire.encode_response(response, id=f"msg_{request_id}", model=meta.model)

    def encoder(self, request_id: str, request: ChatRequest, meta: ResponseMeta) -> Any:
        return anthropic_wire.StreamEncoder(
            id=f"msg_{request_id}", model=meta.model, input_tokens=0
        )

    def stream_error(self, encoder: Any, failure: _Failure) -> bytes:
        return bytes(encoder.error(failure.message, _ANTHROPIC_TYPES[failure.kind]))


class _SSEResponse:
    """Streams a session's events as SSE and always closes the session, even on disconnect."""

    def __init__(
        self, dialect: _Dialect, session: Session, encoder: Any, headers: dict[str, str]
    ) -> None:
        self._dialect = dialect
        self._session = session
        self._encoder = encoder
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn drops writes to a closed connection silently, so a client that goes away is
        # noticed by watching receive() for the disconnect; it cancels the stream at once, which
        # closes the upstream stream too instead of paying for tokens nobody reads.
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"gone": False, "finished": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["finished"]:
                state["gone"] = True
                streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self._send_all(send)
            state["finished"] = True
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            streaming.uncancel()
        finally:
            watcher.cancel()
            await self._session.close()

    async def _send_all(self, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *self._headers,
        ]
        encoder = self._encoder
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoder.start(), "more_body": True})
        # The upstream side runs in a task of its own and this side sends whatever it gathered
        # meanwhile: the events of one upstream read go out in one write, not one write each
        # (a write per event was the largest cost of a stream).
        pending: list[bytes] = []
        ready = asyncio.Event()
        failed: list[ProviderError] = []

        async def produce() -> None:
            try:
                async for event in self._session:
                    body = encoder.event(event)
                    if body:
                        pending.append(body)
                        ready.set()
            except ProviderError as exc:
                failed.append(exc)
            finally:
                ready.set()

        producer = asyncio.create_task(produce(), name="routedeck-upstream-stream")
        try:
            while True:
                await ready.wait()
                ready.clear()
                if pending:
                    body = pending[0] if len(pending) == 1 else b"".join(pending)
                    pending.clear()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if producer.done() and not pending:
                    break
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        producer.result()  # a bug in the upstream side is not swallowed
        if failed:
            exc = failed[0]
            failure = _Failure(
                502,
                "upstream",
                f"The upstream failed after the stream started ({exc.cause}: "
                f"{exc.message[:200]}); the answer is incomplete. Retry the request.",
                code="upstream_stream_broken",
            )
            body = self._dialect.stream_error(encoder, failure)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(engine: Engine, *, admin_token: str | None, host: str) -> ASGIApp:
    """The ASGI app. ``admin_token`` None disables admin auth, allowed only on loopback."""
    max_body = engine.config.server.max_body_bytes
    admin_enabled = admin_token is not None or _is_loopback(host)
    if not admin_enabled:
        log.warning(
            "admin API disabled: bound to %s without an admin token; set $%s to enable it",
            host,
            engine.config.server.admin_token_env,
        )

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise _BodyTooLarge
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise InvalidRequest("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"The request body is not valid JSON ({exc}). Send a JSON object with "
                "Content-Type: application/json."
            ) from None

    def proxy(dialect: _Dialect) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            request_id = new_request_id()

            def fail(failure: _Failure, extra: dict[str, str] | None = None) -> _JSONResponse:
                headers = {"x-routedeck-request-id": request_id, **(extra or {})}
                if failure.retry_after is not None:
                    headers["retry-after"] = str(max(1, round(failure.retry_after)))
                return _JSONResponse(dialect.error(failure), failure.status, headers)

            try:
                body = await read_json(request)
                chat = dialect.parse(body)
            except _BodyTooLarge:
                return fail(
                    _Failure(
                        413,
                        "too_large",
                        f"The request body is over routedeck's limit of {max_body} bytes. Send a "
                        "shorter conversation, or raise [server] max_body_bytes.",
                        code="request_too_large",
                    )
                )
            except InvalidRequest as exc:
                return fail(
                    _Failure(
                        400, "invalid_request", exc.message, param=exc.param, code="invalid_request"
                    )
                )
            except ClientDisconnect:
                return Response(status_code=499)
            headers = _header_map(request.scope)
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            inbound = Inbound(
                api=dialect.name,
                key=key or headers.get("x-api-key"),
                task=headers.get("x-routedeck-task") or chat.metadata.get("task") or None,
                constraints=constraints_from(
                    headers.get("x-routedeck-region"), headers.get("x-routedeck-compliance")
                ),
                cache=headers.get("x-routedeck-cache"),
                user=headers.get("x-routedeck-user") or chat.user,
                request_id=request_id,
            )
            try:
                if chat.stream:
                    session = await engine.stream(chat, inbound)
                    encoder = dialect.encoder(request_id, chat, session.meta)
                    return _SSEResponse(
                        dialect, session, encoder, meta_headers(session.meta, with_cost=False)
                    )
                response, meta = await engine.complete(chat, inbound)
            except RoutingError as exc:
                kind = _ROUTING_KINDS.get(exc.code) or _STATUS_KINDS.get(exc.status, "unavailable")
                param = "model" if exc.status == 404 else None
                return fail(_Failure(exc.status, kind, exc.message, code=exc.code, param=param))
            except RequestFailed as exc:
                return fail(
                    _Failure(
                        exc.status,
                        exc.kind,
                        exc.message,
                        code=exc.code,
                        retry_after=exc.retry_after,
                    )
                )
            return _JSONResponse(
                dialect.answer(request_id, response, meta), 200, meta_headers(meta, with_cost=True)
            )

        return endpoint

    async def models(request: Request) -> Response:
        names = engine.router.model_names()
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "routedeck",
                "type": "model",
                "display_name": name,
                "created_at": "1970-01-01T00:00:00Z",
            }
            for name in names
        ]
        return _json(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        )

    async def healthz(request: Request) -> Response:
        ok = engine.state == "running"
        return _json(
            {"status": "ok" if ok else engine.state, "listen": engine.listen}, 200 if ok else 503
        )

    def admin_denied(request: Request) -> Response | None:
        if not admin_enabled:
            return _json(
                {
                    "error": {
                        "message": "The admin API is disabled: routedeck is bound "
                        f"to {host} without an admin token. Set "
                        f"${engine.config.server.admin_token_env} and restart."
                    }
                },
                403,
            )
        if admin_token is None:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            return _json(
                {
                    "error": {
                        "message": "Missing or wrong admin token: send "
                        "Authorization: Bearer <token> with the token from "
                        f"${engine.config.server.admin_token_env}."
                    }
                },
                401,
            )
        return None

    async def admin_snapshot(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        return Response(orjson.dumps(engine.snapshot()), media_type="application/json")

    async def metrics(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        text = render_prometheus(engine.metrics.totals, engine.snapshot())
        return Response(text, media_type=PROMETHEUS_CONTENT_TYPE)

    async def admin_body(request: Request) -> tuple[Command, dict[str, Any]] | Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        try:
            body = await read_json(request)
            return command_from_dict(body), body
        except (InvalidRequest, CommandError) as exc:
            message = exc.message if isinstance(exc, InvalidRequest) else str(exc)
            return _json({"error": {"message": message}}, 400)
        except _BodyTooLarge:
            return _json({"error": {"message": "the command body is too large"}}, 413)

    async def admin_preview(request: Request) -> Response:
        parsed = await admin_body(request)
        if isinstance(parsed, Response):
            return parsed
        effect = engine.preview(parsed[0])
        return _json(dataclasses.asdict(effect))

    async def admin_command(request: Request) -> Response:
        parsed = await admin_body(request)
        if isinstance(parsed, Response):
            return parsed
        command, body = parsed
        actor = body.get("actor") if isinstance(body.get("actor"), str) else "admin-api"
        reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
        result = await engine.submit(command, actor=str(actor), reason=str(reason))
        return _json(dataclasses.asdict(result), 200 if result.ok else 409)

    async def admin_audit(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
            after = int(query["after"]) if "after" in query else None
            since = float(query["since"]) if "since" in query else None
            until = float(query["until"]) if "until" in query else None
        except ValueError:
            return _json(
                {
                    "error": {
                        "message": "limit and after take whole numbers, since and until Unix "
                        "seconds"
                    }
                },
                400,
            )
        entries = await engine.store.fetch_audit(
            max(1, min(limit, 10_000)),
            actor=query.get("actor") or None,
            action=query.get("action") or None,
            target=query.get("target") or None,
            result=query.get("result") or None,
            since=since,
            until=until,
            text=query.get("q") or None,
            after_id=after,
        )
        return _json({"entries": entries})

    async def admin_rollout(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        rollouts = engine.rollouts
        view = rollouts.view(engine.clock())
        return _json(
            {
                "baseline": rollouts.baseline.label,
                "rollout": dataclasses.asdict(view) if view is not None else None,
                "releases": await rollouts.history(20),
            }
        )

    async def admin_export(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        baseline = engine.rollouts.baseline
        routing_only = request.query_params.get("routing_only", "") in ("1", "true", "yes")
        header = (
            f"routedeck config exported from release {baseline.label} (the baseline), "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(engine.clock()))}.\n"
            + (f"Release note: {baseline.note}\n" if baseline.note else "")
            + "Defaults are left out; config.example.toml documents every key."
        )
        text = export_toml(baseline.config, header=header, routing_only=routing_only)
        return Response(text, media_type="text/plain; charset=utf-8")

    def key_json(key: ApiKey) -> dict[str, Any]:
        return {
            "id": key.id,
            "tenant": key.tenant,
            "name": key.name,
            "prefix": key.prefix,
            "created_at": key.created_at,
            "revoked_at": key.revoked_at,
        }

    async def admin_keys(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        if request.method == "GET":
            return _json({"keys": [key_json(k) for k in engine.keys.list_keys()]})
        try:
            body = await read_json(request)
        except (InvalidRequest, _BodyTooLarge):
            body = None
        tenant = body.get("tenant") if isinstance(body, dict) else None
        name = body.get("name", "") if isinstance(body, dict) else ""
        actor = body.get("actor", "admin-api") if isinstance(body, dict) else "admin-api"
        known = sorted({*engine.config.tenants, TENANT_LOCAL})
        if not isinstance(tenant, str) or tenant not in known or not isinstance(name, str):
            return _json(
                {
                    "error": {
                        "message": f'send {{"tenant": ..., "name": ...}} with a '
                        f"tenant from [tenants]: {', '.join(known)}"
                    }
                },
                400,
            )
        now = engine.clock()
        key, record = await engine.keys.create(tenant, name, now=now)
        await engine.store.audit(
            str(actor),
            "keys.create",
            record.id,
            {
                "summary": f"created {record.id} ({record.prefix}…) for tenant {tenant}",
                "tenant": tenant,
                "name": name,
                "prefix": record.prefix,
                "before": "none",
                "after": "active",
            },
            "applied",
        )
        return _json({**key_json(record), "key": key}, 201)

    async def admin_revoke(request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        key_id = request.path_params["key_id"]
        record = await engine.keys.revoke(key_id, now=engine.clock())
        if record is None:
            return _json(
                {
                    "error": {
                        "message": f"no key with id {key_id!r}; `routedeck keys list` shows them"
                    }
                },
                404,
            )
        await engine.store.audit(
            "admin-api",
            "keys.revoke",
            key_id,
            {
                "summary": f"revoked {key_id} ({record.prefix}…, tenant {record.tenant})",
                "prefix": record.prefix,
                "before": "active",
                "after": "revoked",
            },
            "applied",
        )
        return _json(key_json(record))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        verb = "is not allowed on" if status == 405 else "does not exist on"
        return _json(
            openai_wire.error_body(
                f"{request.method} {request.url.path} {verb} routedeck. The API is POST "
                "/v1/chat/completions, POST /v1/messages and GET /v1/models.",
                "invalid_request_error",
                code="unknown_url",
            ),
            status,
        )

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(
            openai_wire.error_body(
                "routedeck hit an internal error serving this request; it is logged. Retry, and "
                "report it if it persists.",
                "server_error",
                code="internal_error",
            ),
            500,
        )

    chat = proxy(_OpenAI())
    messages = proxy(_Anthropic())
    app = Starlette(
        exception_handlers={404: not_found, 405: not_found, Exception: internal},
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/snapshot", admin_snapshot, methods=["GET"]),
            Route("/admin/preview", admin_preview, methods=["POST"]),
            Route("/admin/commands", admin_command, methods=["POST"]),
            Route("/admin/audit", admin_audit, methods=["GET"]),
            Route("/admin/rollout", admin_rollout, methods=["GET"]),
            Route("/admin/export", admin_export, methods=["GET"]),
            Route("/admin/keys", admin_keys, methods=["GET", "POST"]),
            Route("/admin/keys/{key_id}/revoke", admin_revoke, methods=["POST"]),
        ],
    )
    hot = {"/v1/chat/completions": chat, "/v1/messages": messages}

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        # The two proxy routes skip Starlette's middleware and router (about a tenth of the
        # proxy's CPU per request): same endpoint, same Request and Response objects, and the
        # same answer for an unhandled error. Everything else goes through Starlette.
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = hot.get(scope["path"])
            if endpoint is not None:
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await internal(request, exc)
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    return front
