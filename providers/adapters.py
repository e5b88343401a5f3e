"""Provider adapters: one canonical request in, one upstream HTTP call, canonical results out.

Both adapters implement `Adapter`:

- ``await adapter.complete(request, model, timeouts=...)`` makes one non-streaming call and
  returns a `ChatResponse`, whatever ``request.stream`` says.
- ``adapter.stream(request, model, timeouts=...)`` is an async generator that makes one
  streaming call and yields `TextDelta` / `ToolCallDelta` events and then exactly one
  `StreamEnd`.

``model`` is the upstream model id to call (the request's own ``model`` is the client's name).
Adapters hold no state between calls. They are given the connection pool to call through,
shared and owned by the caller: a `providers.http1.Pool` (what the engine uses: a lean
HTTP/1.1 client, about a tenth of httpx's CPU per call) or an `httpx.AsyncClient` (honours
``HTTPS_PROXY`` and friends; tests drive it with ``httpx.MockTransport``). Every response is closed before the call returns or the generator ends,
also when the consumer stops iterating early (``aclose()`` or leaving an ``async for``).
Before the `StreamEnd` the adapter reads what is left of the body, normally nothing, so that the
connection can go back to the pool.

Failures are raised as `providers.errors` types, never as transport exceptions:

====================================================  =======================================
upstream                                              raised
====================================================  =======================================
connection refused/reset, protocol error (no answer)  `ConnectFailed`
connect timeout                                       `ProviderTimeout` (``phase="connect"``)
read, write or pool timeout                           `ProviderTimeout` (``phase="read"``)
HTTP 429                                              `RateLimited` (``retry_after`` from
                                                      ``retry-after-ms`` or ``retry-after``)
HTTP 529; a 5xx whose error says overloaded           `Overloaded`
any other 5xx; a 2xx body that is not a response      `ServerError`
HTTP 401, 403                                         `AuthFailed`
HTTP 400/413/422 saying the prompt is too long        `ContextTooLong`
any other 4xx                                         `BadRequest`
====================================================  =======================================

In `stream`, before the first event is yielded an error status is mapped as above, and so is
an error *event* (an Anthropic ``overloaded_error`` after a 200 is `Overloaded`); once an event
has been yielded, any failure - a transport error, an error event, the upstream closing without
a finish - raises `StreamBroken`, because the client has already received part of the answer.

Every message names the upstream (its host) and, for HTTP errors, the status and the
upstream's own message cut to about 300 characters. All upstream text goes through `redact`
first, so an upstream that echoes the API key cannot leak it into logs or to clients.
"""

from __future__ import annotations

import email.utils
import functools
import http
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from providers import anthropic_wire, errors, http1, openai_wire
from providers.canonical import ChatRequest, ChatResponse, StreamEnd, StreamEvent
from providers.sse import aiter_sse

__all__ = [
    "Adapter",
    "AnthropicAdapter",
    "OpenAIAdapter",
    "Timeouts",
    "map_anthropic_error",
    "map_openai_error",
    "map_transport_error",
    "parse_retry_after",
    "redact",
]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for a connection, and for each read from the upstream."""

    connect: float
    read: float


class Adapter(Protocol):
    """What the control layer calls to talk to one upstream protocol."""

    async def complete(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> ChatResponse: ...

    def stream(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> AsyncIterator[StreamEvent]: ...


# ---------------------------------------------------------------------------------------------
# Redaction and error mapping
# ---------------------------------------------------------------------------------------------

REDACTED = "[redacted]"
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*]{6,}")
_MESSAGE_LIMIT = 300


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each non-empty secret, and anything shaped like an ``sk-`` key, replaced."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_LIKE.sub(REDACTED, text)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _MESSAGE_LIMIT:
        return text
    return text[: _MESSAGE_LIMIT - 1] + "…"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            ms = float(value)
        except ValueError:
            pass
        else:
            if ms >= 0:
                return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    return seconds if seconds >= 0 else None


# Lower-case fragments of the messages providers use for a prompt that does not fit:
# OpenAI and vLLM ("maximum context length"), Anthropic ("prompt is too long", "exceed context
# limit"), Gemini's OpenAI endpoint ("exceeds the maximum number of tokens").
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "exceed context limit",
    "context window",
    "exceeds the maximum number of tokens",
)


def _is_context_error(text: str) -> bool:
    return any(marker in text for marker in _CONTEXT_MARKERS)


def _error_fields(body: bytes) -> tuple[str, str]:
    """The upstream's error message and its type/code (lower-cased), from any common shape."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace"), ""
    if not isinstance(data, dict):
        return (body.decode("utf-8", "replace") if data is not None else ""), ""
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        kind = " ".join(str(error.get(k) or "") for k in ("type", "code"))
        return (message if isinstance(message, str) else str(error)), kind.lower()
    if isinstance(error, str):
        return error, ""
    for key in ("message", "detail"):
        value = data.get(key)
        if isinstance(value, str):
            return value, ""
    return body.decode("utf-8", "replace"), ""


def _error_type(status: int, kind: str, message: str) -> type[errors.ProviderError]:
    lowered = message.lower()
    if status == 429:
        return errors.RateLimited
    if status == 529 or (status >= 500 and ("overloaded" in kind or "overloaded" in lowered)):
        return errors.Overloaded
    if status >= 500:
        return errors.ServerError
    if status in (401, 403):
        return errors.AuthFailed
    if status in (400, 413, 422) and (_is_context_error(kind) or _is_context_error(lowered)):
        return errors.ContextTooLong
    if status >= 400:
        return errors.BadRequest
    # A redirect or other non-2xx the client did not follow: the upstream is misconfigured.
    return errors.ServerError


def _classify(
    status: int,
    headers: Mapping[str, str],
    message: str,
    kind: str,
    *,
    upstream: str,
    secrets: Iterable[str],
) -> errors.ProviderError:
    if not message:
        try:
            message = http.HTTPStatus(status).phrase
        except ValueError:
            message = "no error message"
    text = f"{upstream} returned HTTP {status}: {_clip(redact(message, secrets))}"
    error_type = _error_type(status, kind, message)
    if error_type is errors.RateLimited:
        return errors.RateLimited(text, retry_after=parse_retry_after(headers), status=status)
    return error_type(text, status=status)


def map_openai_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    upstream: str = "upstream",
    secrets: Iterable[str] = (),
) -> errors.ProviderError:
    """The error for an OpenAI-compatible upstream's non-2xx answer.

    Reads ``{"error": {"message", "type", "code"}}`` (and the ``{"error": "..."}``,
    ``{"message": ...}`` and ``{"detail": ...}`` shapes some compatible servers use).
    """
    message, kind = _error_fields(body)
    return _classify(status, headers, message, kind, upstream=upstream, secrets=secrets)


def map_anthropic_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    upstream: str = "upstream",
    secrets: Iterable[str] = (),
) -> errors.ProviderError:
    """The error for an Anthropic upstream's non-2xx answer.

    Reads ``{"type": "error", "error": {"type", "message"}}``; ``overloaded_error`` is
    `Overloaded` on any 5xx (Anthropic sends it as 529).
    """
    message, kind = _error_fields(body)
    return _classify(status, headers, message, kind, upstream=upstream, secrets=secrets)


def map_transport_error(
    exc: httpx.HTTPError | http1.UpstreamError,
    *,
    upstream: str = "upstream",
    secrets: Iterable[str] = (),
) -> errors.ProviderError:
    """The error for a transport exception raised before a complete answer arrived."""
    detail = redact(str(exc), secrets) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | http1.ConnectTimeout):
        return errors.ProviderTimeout(
            f"{upstream}: no connection within the connect timeout ({detail})", phase="connect"
        )
    if isinstance(exc, httpx.TimeoutException | http1.ReadTimeout):
        return errors.ProviderTimeout(
            f"{upstream}: no data within the read timeout ({type(exc).__name__}: {detail})",
            phase="read",
        )
    if isinstance(exc, httpx.DecodingError):
        return errors.ServerError(f"{upstream}: sent a body that could not be decoded ({detail})")
    return errors.ConnectFailed(f"{upstream}: connection failed ({type(exc).__name__}: {detail})")


# Anthropic error-event types and OpenAI error-chunk types/codes, as the status the same error
# would have had before the stream started, so it is classified like one.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
    "context_length_exceeded": 400,
}


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _httpx_timeout(t: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect)


@functools.lru_cache(maxsize=64)
def _http1_timeouts(t: Timeouts) -> http1.Timeouts:
    return http1.Timeouts(connect=t.connect, read=t.read)


TransportError = (httpx.HTTPError, http1.UpstreamError)
"""What either transport raises for a failed exchange."""


class _Stream(Protocol):
    status: int
    headers: Mapping[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _Transport(Protocol):
    async def post(self, body: bytes, timeouts: Timeouts) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body), the whole body read."""
        ...

    async def stream(self, body: bytes, timeouts: Timeouts) -> _Stream: ...


class _Http1Transport:
    """Calls through a `providers.http1.Pool`: the engine's transport."""

    __slots__ = ("_headers", "_path", "_pool")

    def __init__(self, pool: http1.Pool, path: str, headers: Mapping[str, str]) -> None:
        self._pool = pool
        self._path = path
        # Encoded once: the pool sends them as they are with every call.
        self._headers = tuple(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        )

    async def post(self, body: bytes, timeouts: Timeouts) -> tuple[int, Mapping[str, str], bytes]:
        response = await self._pool.post(self._path, body, self._headers, _http1_timeouts(timeouts))
        return response.status, response.headers, response.body

    async def stream(self, body: bytes, timeouts: Timeouts) -> _Stream:
        return await self._pool.stream(self._path, body, self._headers, _http1_timeouts(timeouts))


class _HttpxStream:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()

    async def aread(self) -> bytes:
        return await self._response.aread()

    async def aclose(self) -> None:
        await self._response.aclose()


class _HttpxTransport:
    """Calls through an `httpx.AsyncClient` (proxies from the environment, mock transports)."""

    __slots__ = ("_client", "_headers", "_url")

    def __init__(self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> None:
        self._client = client
        self._url = url
        self._headers = dict(headers)

    async def post(self, body: bytes, timeouts: Timeouts) -> tuple[int, Mapping[str, str], bytes]:
        response = await self._client.post(
            self._url, content=body, headers=self._headers, timeout=_httpx_timeout(timeouts)
        )
        return response.status_code, response.headers, response.content

    async def stream(self, body: bytes, timeouts: Timeouts) -> _Stream:
        request = self._client.build_request(
            "POST", self._url, content=body, headers=self._headers, timeout=_httpx_timeout(timeouts)
        )
        return _HttpxStream(await self._client.send(request, stream=True))


class _StreamDecoder(Protocol):
    done: bool
    error: dict[str, Any] | None

    def finish(self) -> StreamEnd: ...


_Feed = Callable[[str | None, str], list[StreamEvent]]


class _MapError(Protocol):
    def __call__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        upstream: str = ...,
        secrets: Iterable[str] = ...,
    ) -> errors.ProviderError: ...


_CREDENTIAL_HINTS = ("key", "token", "secret", "auth")


class _HTTPAdapter:
    """The HTTP call, error mapping and stream loop both protocols share."""

    __slots__ = ("_map_error", "_secrets", "_transport", "_upstream")

    def __init__(
        self,
        client: httpx.AsyncClient | http1.Pool,
        base_url: str,
        path: str,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        map_error: _MapError,
        name: str | None,
    ) -> None:
        url = base_url.rstrip("/") + path
        self._transport: _Transport = (
            _Http1Transport(client, path, headers)
            if isinstance(client, http1.Pool)
            else _HttpxTransport(client, url, headers)
        )
        self._secrets = secrets
        self._map_error = map_error
        # Errors name the upstream: the provider's configured name, else the URL's host.
        self._upstream = name or urlsplit(url).hostname or url

    def _status_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> errors.ProviderError:
        return self._map_error(
            status, headers, body, upstream=self._upstream, secrets=self._secrets
        )

    def _transport_error(self, exc: httpx.HTTPError | http1.UpstreamError) -> errors.ProviderError:
        return map_transport_error(exc, upstream=self._upstream, secrets=self._secrets)

    async def _post(self, body: dict[str, Any], timeouts: Timeouts) -> bytes:
        try:
            status, headers, content = await self._transport.post(orjson.dumps(body), timeouts)
        except TransportError as exc:
            raise self._transport_error(exc) from exc
        if not 200 <= status < 300:
            raise self._status_error(status, headers, content)
        return content

    def _decoded(self, decode: Callable[[bytes], ChatResponse], content: bytes) -> ChatResponse:
        try:
            return decode(content)
        except errors.ServerError as exc:
            # Not chained: the original message holds unredacted upstream text.
            raise errors.ServerError(
                f"{self._upstream}: {_clip(redact(exc.message, self._secrets))}"
            ) from None

    def _stream_error(
        self, exc: Exception, started: bool, decoder: _StreamDecoder
    ) -> errors.ProviderError:
        if isinstance(exc, TransportError):
            if not started:
                return self._transport_error(exc)
            detail = f"{type(exc).__name__}: {redact(str(exc), self._secrets)}"
        else:
            detail = redact(str(exc), self._secrets)
            if not started and decoder.error is not None:
                classified = self._error_event(decoder.error)
                if classified is not None:
                    return classified
        return errors.StreamBroken(f"{self._upstream}: stream failed: {_clip(detail)}")

    def _error_event(self, error: Mapping[str, Any]) -> errors.ProviderError | None:
        """An error event that came before any output, classified as its HTTP status would be."""
        kind = " ".join(str(error.get(k) or "") for k in ("type", "code")).lower()
        status = next(
            (_ERROR_TYPE_STATUS[k] for k in kind.split() if k in _ERROR_TYPE_STATUS), None
        )
        if status is None:
            return None
        message = error.get("message")
        message = message if isinstance(message, str) else str(error)
        # No HTTP status is recorded: the response itself was a 200.
        return _error_type(status, kind, message)(
            f"{self._upstream} sent an error before the stream started: "
            f"{_clip(redact(message, self._secrets))}",
            status=None,
        )

    async def _stream(
        self,
        encode: Callable[[], dict[str, Any]],
        timeouts: Timeouts,
        decoder: _StreamDecoder,
        feed: _Feed,
    ) -> AsyncGenerator[StreamEvent, None]:
        # Encoding happens here, on the first iteration, so that every failure of a stream,
        # including a request Anthropic cannot express, comes out of the iteration.
        body = encode()
        try:
            response = await self._transport.stream(orjson.dumps(body), timeouts)
        except TransportError as exc:
            raise self._transport_error(exc) from exc
        try:
            if not 200 <= response.status < 300:
                try:
                    content = await response.aread()
                except TransportError:
                    content = b""
                raise self._status_error(response.status, response.headers, content)
            events = aiter_sse(aiter(response))
            try:
                started = False
                while not decoder.done:
                    try:
                        event, data = await anext(events)
                        out = feed(event, data)
                    except StopAsyncIteration:
                        break
                    except TransportError as exc:
                        raise self._stream_error(exc, started, decoder) from exc
                    except errors.ProviderError as exc:
                        # Not chained: the original message holds unredacted upstream text.
                        raise self._stream_error(exc, started, decoder) from None
                    for item in out:
                        started = True
                        yield item
                try:
                    end = decoder.finish()
                except errors.StreamBroken as exc:
                    raise self._stream_error(exc, started, decoder) from None
                # Normally only the end of the body is left. Read it before yielding the end:
                # consumers stop at `StreamEnd` and close this generator, and an unread body
                # makes the pool close the connection instead of reusing it.
                try:
                    async for _ in events:
                        pass
                except TransportError:
                    pass
                yield end
            finally:
                await events.aclose()
        finally:
            await response.aclose()


def _secrets(api_key: str | None, headers: Mapping[str, str]) -> tuple[str, ...]:
    secrets = [api_key] if api_key else []
    secrets.extend(
        value
        for name, value in headers.items()
        if value and any(hint in name.lower() for hint in _CREDENTIAL_HINTS)
    )
    return tuple(secrets)


class OpenAIAdapter(_HTTPAdapter):
    """An OpenAI-compatible upstream: ``POST {base_url}/chat/completions``, bearer auth.

    ``base_url`` includes the API version path (``https://api.openai.com/v1``); a trailing
    slash is ignored. ``headers`` are sent with every request and override the defaults.
    """

    __slots__ = ("_max_tokens_field",)

    def __init__(
        self,
        client: httpx.AsyncClient | http1.Pool,
        *,
        base_url: str,
        api_key: str | None,
        headers: Mapping[str, str] = {},
        max_tokens_field: openai_wire.MaxTokensField = "max_completion_tokens",
        name: str | None = None,
    ) -> None:
        base: dict[str, str] = {"content-type": "application/json"}
        if api_key:
            base["authorization"] = f"Bearer {api_key}"
        base.update(headers)
        super().__init__(
            client,
            base_url,
            "/chat/completions",
            base,
            _secrets(api_key, headers),
            map_openai_error,
            name,
        )
        self._max_tokens_field: openai_wire.MaxTokensField = max_tokens_field

    async def complete(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> ChatResponse:
        body = openai_wire.encode_request(request, model, max_tokens_field=self._max_tokens_field)
        body.pop("stream", None)
        body.pop("stream_options", None)
        return self._decoded(openai_wire.decode_response, await self._post(body, timeouts))

    def _stream_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = openai_wire.encode_request(request, model, max_tokens_field=self._max_tokens_field)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    def stream(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        decoder = openai_wire.StreamDecoder()
        return self._stream(
            lambda: self._stream_body(request, model),
            timeouts,
            decoder,
            lambda _event, data: decoder.feed(data),
        )


class AnthropicAdapter(_HTTPAdapter):
    """An Anthropic upstream: ``POST {base_url}/v1/messages`` with ``x-api-key``.

    ``base_url`` is the host root (``https://api.anthropic.com``); a trailing slash is ignored.
    ``default_max_tokens`` is sent when the request sets no limit (Anthropic requires one);
    ``version`` is the ``anthropic-version`` header. ``headers`` are sent with every request
    and override the defaults (e.g. ``anthropic-beta``).
    """

    __slots__ = ("_default_max_tokens",)

    def __init__(
        self,
        client: httpx.AsyncClient | http1.Pool,
        *,
        base_url: str,
        api_key: str | None,
        headers: Mapping[str, str] = {},
        default_max_tokens: int = 4096,
        version: str = "2023-06-01",
        name: str | None = None,
    ) -> None:
        base: dict[str, str] = {"content-type": "application/json", "anthropic-version": version}
        if api_key:
            base["x-api-key"] = api_key
        base.update(headers)
        super().__init__(
            client,
            base_url,
            "/v1/messages",
            base,
            _secrets(api_key, headers),
            map_anthropic_error,
            name,
        )
        self._default_max_tokens = default_max_tokens

    async def complete(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> ChatResponse:
        body = anthropic_wire.encode_request(
            request, model, default_max_tokens=self._default_max_tokens
        )
        body.pop("stream", None)
        return self._decoded(anthropic_wire.decode_response, await self._post(body, timeouts))

    def _stream_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = anthropic_wire.encode_request(
            request, model, default_max_tokens=self._default_max_tokens
        )
        body["stream"] = True
        return body

    def stream(
        self, request: ChatRequest, model: str, *, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        decoder = anthropic_wire.StreamDecoder()
        return self._stream(
            lambda: self._stream_body(request, model), timeouts, decoder, decoder.feed
        )
