"""`SimServer`: the simulated upstream, one real HTTP server speaking OpenAI and Anthropic.

Routes (``{provider}`` is any prefix; without one the provider is ``"default"``)::

    POST /{provider}/v1/chat/completions     OpenAI Chat Completions (streaming and not)
    POST /{provider}/v1/messages             Anthropic Messages (streaming and not)
    GET  /{provider}/v1/models               OpenAI's list shape, Anthropic's when the request
                                             carries an ``anthropic-version`` header
    ...  /_sim/...                           the control endpoint (`providers.sim.control`)

A request is answered in this order, each step in the protocol's own error shape: the profile's
key check (401), the size limit (413), JSON parsing (400), chaos (reset, hang, injected error,
extra latency), the protocol's validation (400), the profile's context window (400), then the
deterministic reply of `providers.sim.replies`, after the profile's latency. Every request to
the two inference routes is counted in `SimServer.stats`.

Usage::

    async with SimServer(profiles={"sim-fast": SimProfile(latency_ms=20)}) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url("sim-fast", "openai"), api_key="x")
        sim.chaos.set("sim-fast", error_rate=0.5, error_status=429, retry_after=1)
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import orjson

from providers.sim.anthropic_dialect import AnthropicDialect
from providers.sim.chaos import ChaosController, ChaosDecision
from providers.sim.control import PREFIX as CONTROL_PREFIX
from providers.sim.control import handle_control
from providers.sim.dialect import INJECTABLE, Dialect, InvalidRequest
from providers.sim.http11 import HttpConnection, Request
from providers.sim.openai_dialect import OpenAIDialect
from providers.sim.profile import NO_PROFILES, SimProfile
from providers.sim.replies import Prompt, Reply, compose
from providers.sim.stats import SimStats

DEFAULT_PROVIDER = "default"
_OPENAI = OpenAIDialect()
_ANTHROPIC = AnthropicDialect()
_ENDPOINTS: Mapping[str, Dialect] = {"chat/completions": _OPENAI, "messages": _ANTHROPIC}
# Streams are written at most this often; pieces due within it go out together.
_TICK_S = 0.002
# A midstream failure sends between one and this many pieces first.
_MAX_PIECES_BEFORE_BREAK = 3


class SimServer:
    """The simulated upstream on a real loopback (or any) port; an async context manager.

    ``port=0`` picks a free port; `port` and `url` are valid once started. `chaos` is the live
    `ChaosController`; `stats` the counts. ``max_body_bytes`` bounds request bodies (413),
    ``keep_alive_timeout`` closes idle connections, ``shutdown_grace`` is how long `close`
    waits for requests in flight before dropping them.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        profiles: Mapping[str, SimProfile] = NO_PROFILES,
        seed: int = 0,
        max_body_bytes: int = 8 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        keep_alive_timeout: float = 75.0,
        shutdown_grace: float = 2.0,
    ) -> None:
        self._host = host
        self._port = port
        self._profiles = dict(profiles)
        self._default_profile = self._profiles.get(DEFAULT_PROVIDER, SimProfile())
        self._seed = seed
        self._max_body = max_body_bytes
        self._max_header = max_header_bytes
        self._keep_alive_timeout = keep_alive_timeout
        self._grace = shutdown_grace
        self._latency_rng = random.Random(f"latency:{seed}")
        self._stats = SimStats()
        self._connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self.chaos = ChaosController(seed)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; returns once the port is bound."""
        if self._server is not None:
            raise RuntimeError("SimServer is already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, self._host, self._port, reuse_address=True, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, let requests in flight finish (up to the grace), then drop the rest.

        Held (hanging) requests are dropped at once. Returns when every connection task is done.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        for conn in list(self._connections):
            conn.shutdown()
        pending = {conn.task for conn in self._connections if conn.task is not None}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self._grace)
        # Closing connections may still be flushing a last response: give them the rest of
        # the grace before dropping them.
        lost = {conn.lost for conn in self._connections}
        if lost:
            await asyncio.wait(lost, timeout=max(0.0, deadline - loop.time()))
        for conn in list(self._connections):
            conn.abort()
        if pending:
            await asyncio.wait(pending)
        await server.wait_closed()

    def _connection(self) -> HttpConnection:
        return HttpConnection(
            self._handle,
            self._connections,
            max_body_bytes=self._max_body,
            max_header_bytes=self._max_header,
            keep_alive_timeout=self._keep_alive_timeout,
        )

    # -- public API ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the requested one until `start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``, without a trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def base_url(self, provider: str, protocol: str) -> str:
        """The base URL an SDK or adapter for ``provider`` should use.

        OpenAI-compatible base URLs end in ``/v1`` (the client appends ``/chat/completions``);
        Anthropic ones do not (the client appends ``/v1/messages``). Provider ``"default"``
        maps to the unprefixed routes.
        """
        prefix = self.url if provider == DEFAULT_PROVIDER else f"{self.url}/{provider}"
        if protocol == "openai":
            return f"{prefix}/v1"
        if protocol == "anthropic":
            return prefix
        raise ValueError(f"protocol must be 'openai' or 'anthropic', got {protocol!r}")

    def profile(self, provider: str) -> SimProfile:
        """The profile that answers ``provider``'s requests."""
        return self._profiles.get(provider, self._default_profile)

    def stats(self) -> dict[str, Any]:
        """Counts by provider, model and outcome; see `providers.sim.stats`."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counts."""
        self._stats.reset()

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: Request, conn: HttpConnection) -> None:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            if request.too_large:
                message = (
                    f"the request body exceeds the simulator's limit of {self._max_body} bytes"
                )
                conn.respond(413, _plain_error("request_too_large", message))
            else:
                handle_control(request, conn, self.chaos, self._stats)
            return
        route = _route(path)
        if route is None:
            conn.respond(404, _plain_error("not_found_error", f"no route {path}; see docs/sim.md"))
            return
        provider, endpoint = route
        if endpoint == "models":
            self._models(request, conn, provider)
            return
        dialect = _ENDPOINTS.get(endpoint)
        if dialect is None:
            conn.respond(404, _plain_error("not_found_error", f"no route {path}; see docs/sim.md"))
        elif request.method != "POST":
            conn.respond(405, dialect.error("method_not_allowed"), headers=[("allow", "POST")])
        else:
            await self._inference(request, conn, provider, dialect)

    def _models(self, request: Request, conn: HttpConnection, provider: str) -> None:
        dialect = _ANTHROPIC if "anthropic-version" in request.headers else _OPENAI
        profile = self.profile(provider)
        if request.method != "GET":
            conn.respond(405, dialect.error("method_not_allowed"), headers=[("allow", "GET")])
        elif profile.require_key is not None and _api_key(request) != profile.require_key:
            conn.respond(401, dialect.error("authentication"))
        else:
            conn.respond(200, dialect.models(profile.models))

    async def _inference(
        self, request: Request, conn: HttpConnection, provider: str, dialect: Dialect
    ) -> None:
        stats = self._stats
        profile = self.profile(provider)
        model = "-"
        # Whatever ends this request early (the client leaving, mostly) counts as disconnected.
        outcome = "disconnected"
        stats.in_flight += 1
        try:
            if profile.require_key is not None and _api_key(request) != profile.require_key:
                outcome = "auth"
                conn.respond(401, dialect.error("authentication"))
                return
            if request.too_large:
                outcome = "invalid"
                message = (
                    f"the request body exceeds the simulator's limit of {self._max_body} bytes"
                )
                conn.respond(413, dialect.error("too_large", message))
                return
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError as exc:
                outcome = "invalid"
                conn.respond(
                    400, dialect.error("invalid_request", f"the body is not valid JSON: {exc}")
                )
                return
            if not isinstance(body, dict):
                outcome = "invalid"
                conn.respond(
                    400, dialect.error("invalid_request", "the body must be a JSON object")
                )
                return
            if isinstance(body.get("model"), str):
                model = body["model"]

            decision = self.chaos.decide(provider, model)
            if decision.outcome == "reset":
                outcome = "reset"
                conn.reset()
                return
            if decision.outcome == "hang":
                outcome = "hang"
                await conn.hold_until_closed()
                return
            if decision.extra_latency_ms > 0:
                await asyncio.sleep(decision.extra_latency_ms / 1000)
            if decision.outcome == "error":
                outcome = f"error_{decision.status}"
                conn.respond(
                    decision.status,
                    dialect.error(INJECTABLE[decision.status]),
                    headers=_retry_headers(decision.retry_after),
                )
                return

            try:
                prompt = dialect.parse(body, self._seed)
            except InvalidRequest as exc:
                outcome = "invalid"
                conn.respond(400, dialect.error("invalid_request", exc.message, exc.param))
                return
            if prompt.input_tokens > profile.context_window:
                outcome = "context_length"
                conn.respond(
                    400, dialect.context_error(prompt.input_tokens, profile.context_window)
                )
                return
            reply = compose(prompt)
            if prompt.stream:
                outcome = await self._stream(conn, dialect, prompt, reply, profile, decision)
            else:
                outcome = await self._complete(conn, dialect, prompt, reply, profile, decision)
        finally:
            stats.in_flight -= 1
            stats.record(provider, model, outcome)

    async def _complete(
        self,
        conn: HttpConnection,
        dialect: Dialect,
        prompt: Prompt,
        reply: Reply,
        profile: SimProfile,
        decision: ChaosDecision,
    ) -> str:
        delay = profile.latency_ms * self._jitter(profile) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        body = dialect.completion(reply, prompt, int(time.time()))
        headers = _reply_headers(dialect, reply)
        if decision.break_at is not None:
            conn.respond_broken(200, body, max(1, len(body) // 2), headers=headers)
            return "midstream_fail"
        conn.respond(200, body, headers=headers)
        return "ok"

    async def _stream(
        self,
        conn: HttpConnection,
        dialect: Dialect,
        prompt: Prompt,
        reply: Reply,
        profile: SimProfile,
        decision: ChaosDecision,
    ) -> str:
        factor = self._jitter(profile)
        ttft = profile.ttft_ms * factor / 1000
        rate = profile.tokens_per_s / factor / decision.slow_stream
        plan = dialect.stream(reply, prompt, int(time.time()))
        pieces = plan.pieces
        count = len(pieces)
        if decision.break_at is not None:
            count = min(count, 1 + int(decision.break_at * _MAX_PIECES_BEFORE_BREAK))
        if ttft > 0:
            await asyncio.sleep(ttft)

        headers = [("cache-control", "no-cache"), *_reply_headers(dialect, reply)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        batch = [plan.head]
        started = False
        tokens = 0
        for index in range(count):
            data, weight = pieces[index]
            if rate > 0 and index > 0:
                wait = start + tokens / rate - loop.time()
                if wait > _TICK_S:
                    # Send what is due, then sleep until the next piece is.
                    if started:
                        conn.send_chunk(b"".join(batch))
                    else:
                        conn.start_stream(200, b"".join(batch), headers=headers)
                        started = True
                    batch = []
                    await conn.drain()
                    await asyncio.sleep(wait)
            batch.append(data)
            tokens += weight
        broken = decision.break_at is not None
        if not broken:
            batch.append(plan.tail)
        if not started:
            conn.start_stream(200, b"".join(batch), headers=headers)
            if not broken:
                conn.end_stream()
        elif not broken:
            conn.end_stream(b"".join(batch))
        else:
            conn.send_chunk(b"".join(batch))
        if broken:
            conn.close()
            return "midstream_fail"
        return "ok"

    def _jitter(self, profile: SimProfile) -> float:
        if profile.jitter == 0:
            return 1.0
        return 1.0 + profile.jitter * (2.0 * self._latency_rng.random() - 1.0)


def _route(path: str) -> tuple[str, str] | None:
    """``(provider, endpoint)`` of an API path, e.g. ``("sim-fast", "chat/completions")``."""
    path = path.rstrip("/")
    if path.startswith("/v1/"):
        return DEFAULT_PROVIDER, path[4:]
    parts = path.split("/", 3)
    if len(parts) == 4 and parts[1] and parts[2] == "v1":
        return parts[1], parts[3]
    return None


def _api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is not None:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _retry_headers(retry_after: float | None) -> list[tuple[str, str]]:
    if retry_after is None:
        return []
    return [
        ("retry-after", str(math.ceil(retry_after))),
        ("retry-after-ms", str(round(retry_after * 1000))),
    ]


def _reply_headers(dialect: Dialect, reply: Reply) -> list[tuple[str, str]]:
    request_id = "req_" + reply.id
    if dialect is _ANTHROPIC:
        return [("request-id", request_id)]
    return [("x-request-id", request_id)]


def _plain_error(kind: str, message: str) -> bytes:
    """An error both SDKs parse, for paths that belong to neither protocol."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
