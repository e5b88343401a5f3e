"""Provider adapters over `httpx.MockTransport`: the requests they send, the events they yield,
the error they raise for every failure, redaction of keys, and that responses are closed."""

from __future__ import annotations

import dataclasses
import email.utils
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import orjson
import pytest

from providers import errors
from providers.adapters import (
    Adapter,
    AnthropicAdapter,
    OpenAIAdapter,
    Timeouts,
    map_anthropic_error,
    map_openai_error,
    map_transport_error,
    parse_retry_after,
    redact,
)
from providers.canonical import (
    ChatRequest,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

OPENAI_KEY = "sk-proj-SECRETSECRET0123456789"
ANTHROPIC_KEY = "plain-anthropic-secret-42"  # not sk- shaped: only the secrets list catches it
TIMEOUTS = Timeouts(connect=1.5, read=7.0)
REQUEST = ChatRequest(
    model="tier-high",
    messages=(Message("system", (TextPart("Be brief."),)), Message("user", (TextPart("hi"),))),
    temperature=0.2,
)

Handler = Callable[[httpx.Request], httpx.Response]


class Body(httpx.AsyncByteStream):
    """A response body served in the given chunks, optionally failing after them."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks = chunks
        self.fail = fail
        self.sent = 0
        self.exhausted = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk
        if self.fail is not None:
            raise self.fail
        self.exhausted = True

    async def aclose(self) -> None:
        self.closed = True


def split_awkwardly(raw: bytes) -> list[bytes]:
    """Cut a body into chunks of 1 to 7 bytes, so boundaries land inside lines and CRLFs."""
    chunks, i, size = [], 0, 1
    while i < len(raw):
        chunks.append(raw[i : i + size])
        i += size
        size = size % 7 + 1
    return chunks


def sse_response(body: Body, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=body)


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture
def openai_adapter(clients: list[httpx.AsyncClient]) -> Callable[..., OpenAIAdapter]:
    def make(handler: Handler, **kwargs: Any) -> OpenAIAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        kwargs.setdefault("api_key", OPENAI_KEY)
        return OpenAIAdapter(client, base_url="https://api.openai.test/v1/", **kwargs)

    return make


@pytest.fixture
def anthropic_adapter(clients: list[httpx.AsyncClient]) -> Callable[..., AnthropicAdapter]:
    def make(handler: Handler, **kwargs: Any) -> AnthropicAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        kwargs.setdefault("api_key", ANTHROPIC_KEY)
        return AnthropicAdapter(client, base_url="https://api.anthropic.test", **kwargs)

    return make


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def openai_sse(*chunks: dict[str, Any] | str, crlf: bool = False) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + end for c in chunks
    )


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


OPENAI_STREAM = openai_sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hé"}}]},
    {"choices": [{"index": 0, "delta": {"content": "llo"}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    "[DONE]",
    crlf=True,
)
OPENAI_EVENTS: list[StreamEvent] = [
    TextDelta("Hé"),
    TextDelta("llo"),
    StreamEnd("stop", Usage(5, 2)),
]

ANTHROPIC_STREAM = anthropic_sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        },
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi ✓"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"q": 1}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 6},
    },
    {"type": "message_stop"},
)
ANTHROPIC_EVENTS: list[StreamEvent] = [
    TextDelta("Hi ✓"),
    ToolCallDelta(0, "", id="toolu_1", name="f"),
    ToolCallDelta(0, '{"q": 1}'),
    StreamEnd("tool_calls", Usage(11, 6)),
]


def test_both_adapters_satisfy_the_protocol(
    openai_adapter: Callable[..., OpenAIAdapter],
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    adapters: list[Adapter] = [
        openai_adapter(lambda r: httpx.Response(500)),
        anthropic_adapter(lambda r: httpx.Response(500)),
    ]
    assert all(callable(a.complete) and callable(a.stream) for a in adapters)


# --- requests and happy paths ----------------------------------------------------------------


async def test_openai_complete_sends_the_request_and_decodes_the_answer(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "model": "gpt-up-2025",
                "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 1},
            },
        )

    adapter = openai_adapter(handler, headers={"openai-organization": "org-1"})
    streaming = dataclasses.replace(REQUEST, stream=True)
    response = await adapter.complete(streaming, "gpt-up", timeouts=TIMEOUTS)

    assert (response.text, response.usage, response.model) == ("Hello", Usage(8, 1), "gpt-up-2025")
    (request,) = seen
    assert str(request.url) == "https://api.openai.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["openai-organization"] == "org-1"
    assert request.extensions["timeout"] == {"connect": 1.5, "read": 7.0, "write": 7.0, "pool": 1.5}
    body = orjson.loads(request.content)
    assert body["model"] == "gpt-up" and body["temperature"] == 0.2
    # complete() never streams, whatever the request says.
    assert "stream" not in body and "stream_options" not in body


async def test_anthropic_complete_sends_the_request_and_decodes_the_answer(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "type": "message",
                "model": "claude-up",
                "content": [{"type": "text", "text": "Hello"}],
                "stop_reason": "max_tokens",
                "usage": {"input_tokens": 9, "output_tokens": 3},
            },
        )

    adapter = anthropic_adapter(
        handler, default_max_tokens=321, headers={"anthropic-beta": "x-2025"}
    )
    response = await adapter.complete(REQUEST, "claude-up", timeouts=TIMEOUTS)

    assert (response.text, response.finish_reason) == ("Hello", "length")
    (request,) = seen
    assert str(request.url) == "https://api.anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == "x-2025"
    assert "authorization" not in request.headers
    body = orjson.loads(request.content)
    assert body["model"] == "claude-up" and body["max_tokens"] == 321
    assert body["system"] == "Be brief."
    assert "stream" not in body


async def test_openai_stream_split_at_awkward_boundaries(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    upstream = Body(split_awkwardly(OPENAI_STREAM))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse_response(upstream)

    events = await collect(openai_adapter(handler).stream(REQUEST, "gpt-up", timeouts=TIMEOUTS))

    assert events == OPENAI_EVENTS
    body = orjson.loads(seen[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # The rest of the body was read (so the connection can be reused), then closed.
    assert upstream.exhausted and upstream.closed


async def test_anthropic_stream_split_at_awkward_boundaries(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    upstream = Body(split_awkwardly(ANTHROPIC_STREAM))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse_response(upstream)

    adapter = anthropic_adapter(handler)
    events = await collect(adapter.stream(REQUEST, "claude-up", timeouts=TIMEOUTS))

    assert events == ANTHROPIC_EVENTS
    assert orjson.loads(seen[0].content)["stream"] is True
    assert upstream.exhausted and upstream.closed


async def test_stream_without_done_marker_still_ends(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    raw = OPENAI_STREAM.replace(b"data: [DONE]\r\n\r\n", b"")
    events = await collect(
        openai_adapter(lambda r: sse_response(Body([raw]))).stream(REQUEST, "m", timeouts=TIMEOUTS)
    )
    assert events == OPENAI_EVENTS


# --- early close -----------------------------------------------------------------------------


async def test_consumer_closing_early_closes_the_response(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    upstream = Body(split_awkwardly(OPENAI_STREAM))
    stream = openai_adapter(lambda r: sse_response(upstream)).stream(
        REQUEST, "m", timeouts=TIMEOUTS
    )
    assert await anext(stream) == TextDelta("Hé")
    await stream.aclose()
    assert upstream.closed
    assert not upstream.exhausted


async def test_breaking_out_of_an_aclosing_loop_closes_the_response(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    upstream = Body([ANTHROPIC_STREAM])
    adapter = anthropic_adapter(lambda r: sse_response(upstream))
    async with aclosing(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS)) as stream:
        async for event in stream:
            assert event == TextDelta("Hi ✓")
            break
    assert upstream.closed


async def test_closing_right_after_stream_end_closes_the_response(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    upstream = Body([OPENAI_STREAM])
    stream = openai_adapter(lambda r: sse_response(upstream)).stream(
        REQUEST, "m", timeouts=TIMEOUTS
    )
    events = [await anext(stream) for _ in range(3)]
    assert isinstance(events[-1], StreamEnd)
    await stream.aclose()
    assert upstream.closed


async def test_error_status_on_a_stream_closes_the_response(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    upstream = Body([b'{"error": {"message": "slow down"}}'])
    adapter = openai_adapter(lambda r: httpx.Response(429, stream=upstream))
    with pytest.raises(errors.RateLimited):
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    assert upstream.closed


# --- error mapping ---------------------------------------------------------------------------


def _oai(message: str, type: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": code}})


def _ant(type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type, "message": message}})


OPENAI_TABLE: list[tuple[int, bytes, dict[str, str], type[errors.ProviderError], str]] = [
    (
        429,
        _oai("Rate limit reached", "requests", "rate_limit_exceeded"),
        {},
        errors.RateLimited,
        "Rate limit reached",
    ),
    (529, b"", {}, errors.Overloaded, "HTTP 529"),
    (
        503,
        _oai("The engine is currently overloaded, please try again later", "server_error"),
        {},
        errors.Overloaded,
        "overloaded",
    ),
    (
        503,
        _oai("Service unavailable", "server_error"),
        {},
        errors.ServerError,
        "Service unavailable",
    ),
    (
        500,
        b"<html><body>Internal   error</body></html>",
        {},
        errors.ServerError,
        "<html><body>Internal error",
    ),
    (502, b"", {}, errors.ServerError, "Bad Gateway"),
    (
        401,
        _oai("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
        {},
        errors.AuthFailed,
        "Incorrect API key",
    ),
    (403, _oai("Country not supported", "request_forbidden"), {}, errors.AuthFailed, "Country"),
    (
        400,
        _oai(
            "This model's maximum context length is 128000 tokens. However, you requested 130000 tokens."
        ),
        {},
        errors.ContextTooLong,
        "maximum context length",
    ),
    (
        400,
        _oai("Too many tokens in the input.", code="context_length_exceeded"),
        {},
        errors.ContextTooLong,
        "Too many tokens",
    ),
    (
        422,
        orjson.dumps({"detail": "This model's maximum context length is 4096 tokens"}),
        {},
        errors.ContextTooLong,
        "4096",
    ),
    (413, _oai("Request too large"), {}, errors.BadRequest, "Request too large"),
    (400, _oai("Invalid value for 'temperature'"), {}, errors.BadRequest, "temperature"),
    (
        404,
        _oai("The model `gpt-9` does not exist", code="model_not_found"),
        {},
        errors.BadRequest,
        "gpt-9",
    ),
    (409, orjson.dumps({"error": "conflict"}), {}, errors.BadRequest, "conflict"),
    (302, b"", {"location": "https://elsewhere"}, errors.ServerError, "HTTP 302"),
]

ANTHROPIC_TABLE: list[tuple[int, bytes, dict[str, str], type[errors.ProviderError], str]] = [
    (529, _ant("overloaded_error", "Overloaded"), {}, errors.Overloaded, "Overloaded"),
    (503, _ant("overloaded_error", "Busy"), {}, errors.Overloaded, "Busy"),
    (
        500,
        _ant("api_error", "Internal server error"),
        {},
        errors.ServerError,
        "Internal server error",
    ),
    (
        429,
        _ant("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
        {"retry-after": "30"},
        errors.RateLimited,
        "rate limit",
    ),
    (
        401,
        _ant("authentication_error", "invalid x-api-key"),
        {},
        errors.AuthFailed,
        "invalid x-api-key",
    ),
    (403, _ant("permission_error", "no access to model"), {}, errors.AuthFailed, "no access"),
    (
        400,
        _ant("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
        {},
        errors.ContextTooLong,
        "prompt is too long",
    ),
    (
        400,
        _ant(
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
        ),
        {},
        errors.ContextTooLong,
        "exceed context limit",
    ),
    (
        413,
        _ant("request_too_large", "Request exceeds the maximum allowed number of bytes"),
        {},
        errors.BadRequest,
        "maximum allowed number of bytes",
    ),
    (
        400,
        _ant("invalid_request_error", "messages: roles must alternate"),
        {},
        errors.BadRequest,
        "roles must alternate",
    ),
    (404, _ant("not_found_error", "model: claude-9"), {}, errors.BadRequest, "claude-9"),
]


def _check(
    exc: errors.ProviderError,
    status: int,
    expected: type[errors.ProviderError],
    fragment: str,
    host: str,
) -> None:
    assert type(exc) is expected
    assert exc.status == status
    assert f"{host} returned HTTP {status}" in exc.message
    assert fragment in exc.message


@pytest.mark.parametrize(("status", "body", "headers", "expected", "fragment"), OPENAI_TABLE)
async def test_openai_status_mapping(
    openai_adapter: Callable[..., OpenAIAdapter],
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[errors.ProviderError],
    fragment: str,
) -> None:
    adapter = openai_adapter(lambda r: httpx.Response(status, content=body, headers=headers))
    with pytest.raises(errors.ProviderError) as info:
        await adapter.complete(REQUEST, "m", timeouts=TIMEOUTS)
    _check(info.value, status, expected, fragment, "api.openai.test")
    # A stream that fails before its first event is mapped the same way.
    adapter = openai_adapter(lambda r: httpx.Response(status, content=body, headers=headers))
    with pytest.raises(errors.ProviderError) as info:
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    _check(info.value, status, expected, fragment, "api.openai.test")


@pytest.mark.parametrize(("status", "body", "headers", "expected", "fragment"), ANTHROPIC_TABLE)
async def test_anthropic_status_mapping(
    anthropic_adapter: Callable[..., AnthropicAdapter],
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[errors.ProviderError],
    fragment: str,
) -> None:
    adapter = anthropic_adapter(lambda r: httpx.Response(status, content=body, headers=headers))
    with pytest.raises(errors.ProviderError) as info:
        await adapter.complete(REQUEST, "m", timeouts=TIMEOUTS)
    _check(info.value, status, expected, fragment, "api.anthropic.test")
    with pytest.raises(errors.ProviderError) as info:
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    _check(info.value, status, expected, fragment, "api.anthropic.test")


def test_rate_limit_carries_retry_after() -> None:
    exc = map_anthropic_error(429, {"retry-after": "30"}, _ant("rate_limit_error", "slow"))
    assert isinstance(exc, errors.RateLimited) and exc.retry_after == 30.0
    exc = map_openai_error(429, {}, _oai("slow"))
    assert isinstance(exc, errors.RateLimited) and exc.retry_after is None


def test_long_upstream_messages_are_cut() -> None:
    exc = map_openai_error(400, {}, _oai("x" * 5000))
    assert 300 <= len(exc.message) < 400
    assert exc.message.endswith("…")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": email.utils.formatdate(1_000_120, usegmt=True)}, 120.0),
        ({"retry-after": email.utils.formatdate(999_000, usegmt=True)}, 0.0),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": "-3"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), now=1_000_000.0) == expected


@pytest.mark.parametrize(
    ("exc", "expected", "phase"),
    [
        (httpx.ConnectError("refused"), errors.ConnectFailed, None),
        (httpx.RemoteProtocolError("peer closed"), errors.ConnectFailed, None),
        (httpx.ReadError("reset"), errors.ConnectFailed, None),
        (httpx.WriteError("broken pipe"), errors.ConnectFailed, None),
        (httpx.ConnectTimeout("slow"), errors.ProviderTimeout, "connect"),
        (httpx.ReadTimeout("slow"), errors.ProviderTimeout, "read"),
        (httpx.WriteTimeout("slow"), errors.ProviderTimeout, "read"),
        (httpx.PoolTimeout("slow"), errors.ProviderTimeout, "read"),
    ],
)
async def test_transport_errors(
    openai_adapter: Callable[..., OpenAIAdapter],
    anthropic_adapter: Callable[..., AnthropicAdapter],
    exc: httpx.HTTPError,
    expected: type[errors.ProviderError],
    phase: str | None,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    for adapter in (openai_adapter(handler), anthropic_adapter(handler)):
        for call in (
            adapter.complete(REQUEST, "m", timeouts=TIMEOUTS),
            collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS)),
        ):
            with pytest.raises(errors.ProviderError) as info:
                await call
            assert type(info.value) is expected
            assert getattr(info.value, "phase", None) == phase
            assert "api." in info.value.message and ".test" in info.value.message


def test_transport_error_message_names_the_exception() -> None:
    exc = map_transport_error(httpx.ReadError(""), upstream="api.x")
    assert exc.message.startswith("api.x: ") and "ReadError" in exc.message


async def test_unparseable_success_body_is_a_server_error(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    adapter = openai_adapter(lambda r: httpx.Response(200, content=b"<html>oops</html>"))
    with pytest.raises(errors.ServerError, match=r"api\.openai\.test: upstream returned a body"):
        await adapter.complete(REQUEST, "m", timeouts=TIMEOUTS)


# --- streams that fail -----------------------------------------------------------------------


async def test_error_event_before_the_first_event_is_classified(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    raw = ANTHROPIC_STREAM.split(b"event: ping")[0] + anthropic_sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    upstream = Body([raw])
    adapter = anthropic_adapter(lambda r: sse_response(upstream))
    with pytest.raises(errors.Overloaded) as info:
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    assert info.value.message == (
        "api.anthropic.test sent an error before the stream started: Overloaded"
    )
    assert info.value.status is None  # the HTTP status was 200
    assert upstream.closed


async def test_openai_error_chunk_before_the_first_event_is_classified(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    raw = openai_sse({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}})
    adapter = openai_adapter(lambda r: sse_response(Body([raw])))
    with pytest.raises(errors.RateLimited, match="Rate limit reached"):
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))


async def test_unknown_error_chunk_before_the_first_event_is_stream_broken(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    raw = openai_sse({"error": {"message": "something odd"}})
    adapter = openai_adapter(lambda r: sse_response(Body([raw])))
    with pytest.raises(errors.StreamBroken, match="something odd"):
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))


FIRST_OPENAI_EVENT = OPENAI_STREAM.split(b'{"content":"llo"}')[0].rsplit(b"data:", 1)[0]


@pytest.mark.parametrize(
    ("tail", "fail"),
    [
        (openai_sse({"error": {"message": "overloaded", "type": "overloaded_error"}}), None),
        (b"", httpx.ReadError("connection reset")),
        (b"", httpx.ReadTimeout("timed out")),
        (b"", None),  # the upstream closed without a finish_reason
        (b"data: {not json\n\n", None),
    ],
)
async def test_any_failure_after_the_first_event_is_stream_broken(
    openai_adapter: Callable[..., OpenAIAdapter], tail: bytes, fail: Exception | None
) -> None:
    upstream = Body([FIRST_OPENAI_EVENT, tail], fail=fail)
    stream = openai_adapter(lambda r: sse_response(upstream)).stream(
        REQUEST, "m", timeouts=TIMEOUTS
    )
    received: list[StreamEvent] = []
    with pytest.raises(errors.ProviderError) as info:
        async for event in stream:
            received.append(event)
    assert received == [TextDelta("Hé")]
    assert type(info.value) is errors.StreamBroken
    assert info.value.message.startswith("api.openai.test: stream failed")
    assert upstream.closed


async def test_anthropic_stream_closing_without_stop_reason_is_stream_broken(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    raw = ANTHROPIC_STREAM.split(b"event: message_delta")[0]
    adapter = anthropic_adapter(lambda r: sse_response(Body([raw])))
    with pytest.raises(errors.StreamBroken, match="stop_reason"):
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))


async def test_read_error_before_the_first_event_is_connect_failed(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    upstream = Body([b": comment\n\n"], fail=httpx.ReadError("reset"))
    adapter = openai_adapter(lambda r: sse_response(upstream))
    with pytest.raises(errors.ConnectFailed):
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    assert upstream.closed


async def test_request_anthropic_cannot_express_fails_without_a_call(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    bad = ChatRequest(
        model="m",
        messages=(Message("assistant", (), tool_calls=(ToolCall("c", "f", "not json"),)),),
    )
    adapter = anthropic_adapter(handler)
    with pytest.raises(errors.BadRequest):
        await adapter.complete(bad, "m", timeouts=TIMEOUTS)
    stream = adapter.stream(bad, "m", timeouts=TIMEOUTS)  # nothing happens until iterated
    with pytest.raises(errors.BadRequest):
        await collect(stream)
    assert calls == []


# --- redaction -------------------------------------------------------------------------------


def test_redact_replaces_secrets_and_key_shaped_tokens() -> None:
    text = "key plain-secret and sk-ant-api03-abcDEF_123-xyz and sk-proj-****abcd, not sk-1"
    assert redact(text, ["plain-secret", ""]) == (
        "key [redacted] and [redacted] and [redacted], not sk-1"
    )


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


async def test_upstream_echoing_the_key_does_not_leak_it(
    openai_adapter: Callable[..., OpenAIAdapter],
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    echo = _oai(f"Incorrect API key provided: {OPENAI_KEY}.", code="invalid_api_key")
    with pytest.raises(errors.AuthFailed) as info:
        await openai_adapter(lambda r: httpx.Response(401, content=echo)).complete(
            REQUEST, "m", timeouts=TIMEOUTS
        )
    assert "[redacted]" in info.value.message
    assert OPENAI_KEY not in _full_text(info.value)

    echo = _ant("authentication_error", f"bad key {ANTHROPIC_KEY}")
    with pytest.raises(errors.AuthFailed) as info:
        await anthropic_adapter(lambda r: httpx.Response(401, content=echo)).complete(
            REQUEST, "m", timeouts=TIMEOUTS
        )
    assert "[redacted]" in info.value.message
    assert ANTHROPIC_KEY not in _full_text(info.value)


async def test_key_at_the_cut_is_redacted_before_cutting(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    # Cut first and the key's prefix would survive, no longer matching the secret.
    echo = _ant("invalid_request_error", "x" * 285 + ANTHROPIC_KEY + "y" * 100)
    with pytest.raises(errors.BadRequest) as info:
        await anthropic_adapter(lambda r: httpx.Response(400, content=echo)).complete(
            REQUEST, "m", timeouts=TIMEOUTS
        )
    assert ANTHROPIC_KEY[:8] not in info.value.message


async def test_credentials_in_extra_headers_are_redacted(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    azure_key = "azure-credential-7777"
    echo = _oai(f"Access denied for key {azure_key}")
    adapter = openai_adapter(
        lambda r: httpx.Response(403, content=echo), api_key=None, headers={"api-key": azure_key}
    )
    with pytest.raises(errors.AuthFailed) as info:
        await adapter.complete(REQUEST, "m", timeouts=TIMEOUTS)
    assert azure_key not in info.value.message


async def test_key_in_a_mid_stream_error_is_redacted(
    anthropic_adapter: Callable[..., AnthropicAdapter],
) -> None:
    raw = ANTHROPIC_STREAM.split(b"event: content_block_stop")[0] + anthropic_sse(
        {"type": "error", "error": {"type": "api_error", "message": f"echo {ANTHROPIC_KEY}"}}
    )
    adapter = anthropic_adapter(lambda r: sse_response(Body([raw])))
    with pytest.raises(errors.StreamBroken) as info:
        await collect(adapter.stream(REQUEST, "m", timeouts=TIMEOUTS))
    assert "[redacted]" in info.value.message
    assert ANTHROPIC_KEY not in _full_text(info.value)


async def test_key_in_an_error_before_the_first_event_is_redacted(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    raw = openai_sse({"error": {"message": f"key {OPENAI_KEY}", "type": "server_error"}})
    with pytest.raises(errors.ServerError) as info:
        await collect(
            openai_adapter(lambda r: sse_response(Body([raw]))).stream(
                REQUEST, "m", timeouts=TIMEOUTS
            )
        )
    assert OPENAI_KEY not in _full_text(info.value)


def _iter_chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


async def test_transport_errors_keep_their_cause(
    openai_adapter: Callable[..., OpenAIAdapter],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(errors.ConnectFailed) as info:
        await openai_adapter(handler).complete(REQUEST, "m", timeouts=TIMEOUTS)
    assert any(isinstance(e, httpx.ConnectError) for e in _iter_chain(info.value))


async def test_a_finished_stream_returns_its_connection_to_the_pool() -> None:
    """Consumers stop at StreamEnd and close the generator; the connection must be reused."""
    from providers.adapters import OpenAIAdapter as _OpenAI
    from providers.canonical import StreamEnd as _End
    from providers.sim import SimServer

    server = SimServer()
    accepted = 0
    make = server._connection

    def counting() -> Any:
        nonlocal accepted
        accepted += 1
        return make()

    server._connection = counting  # type: ignore[method-assign]
    async with server, httpx.AsyncClient() as client:
        adapter = _OpenAI(client, base_url=server.base_url("p", "openai"), api_key=None)
        request = ChatRequest(
            model="m", messages=(Message("user", (TextPart("hi"),)),), stream=True
        )
        for _ in range(5):
            events = adapter.stream(request, "m", timeouts=Timeouts(connect=2, read=2))
            async for event in events:
                if isinstance(event, _End):
                    break
            await events.aclose()
        assert accepted == 1
