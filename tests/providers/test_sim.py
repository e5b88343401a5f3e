"""The simulated upstream, against a real SimServer on loopback with the real SDKs and httpx."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from providers.sim import ChaosController, ChaosError, SimProfile, SimServer, main

REPO = Path(__file__).resolve().parents[2]

# The documented token rule, written out again here so the test is an independent check.
TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(value: Any) -> int:
    if isinstance(value, str):
        return len(TOKEN.findall(value))
    if isinstance(value, dict):
        return sum(len(TOKEN.findall(k)) + tokens(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(tokens(v) for v in value)
    return 0


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "ratio": {"type": "number"},
        "alerts": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object"},
        "optional_note": {"type": "string"},
    },
    "required": ["city", "unit", "days", "ratio", "alerts", "tags", "extra"],
}
WEATHER_ARGS = {
    "city": "sample",
    "unit": "celsius",
    "days": 1,
    "ratio": 1.0,
    "alerts": True,
    "tags": [],
    "extra": {},
}
OPENAI_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"],
            },
        },
    },
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}
    for t in OPENAI_TOOLS
]
HELLO: list[Any] = [{"role": "user", "content": "Hello, world!"}]
OPENAI_BODY: dict[str, Any] = {"model": "gpt-sim", "messages": HELLO}
ANTHROPIC_BODY: dict[str, Any] = {"model": "claude-sim", "max_tokens": 1000, "messages": HELLO}


async def eventually(check: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``check`` until it holds, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(seed=7) as server:
        yield server


@pytest.fixture
async def oai(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=sim.base_url("p", "openai"), api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def ant(sim: SimServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=sim.base_url("p", "anthropic"), api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def http(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=2.0) as client:
        yield client


# -- OpenAI happy paths -----------------------------------------------------------------------


async def test_openai_completion_text_and_usage(oai: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, world!"},
    ]
    reply = await oai.chat.completions.create(model="gpt-sim", messages=messages)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert reply.model == "gpt-sim"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens(messages) == 13
    assert reply.usage.completion_tokens == tokens(choice.message.content)
    assert 20 <= reply.usage.completion_tokens <= 120
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_openai_stream_matches_completion_and_ends_with_usage(
    oai: openai.AsyncOpenAI,
) -> None:
    full = await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
    stream = await oai.chat.completions.create(
        model="gpt-sim", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == full.usage
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == full.usage.completion_tokens  # type: ignore[union-attr]


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(model="gpt-sim", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_openai_tool_call_uses_first_tool_with_required_arguments(
    oai: openai.AsyncOpenAI,
) -> None:
    reply = await oai.chat.completions.create(model="gpt-sim", messages=HELLO, tools=OPENAI_TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens(HELLO) + tokens(OPENAI_TOOLS)
    assert reply.usage.completion_tokens == tokens("get_weather") + tokens(call.function.arguments)


async def test_openai_named_tool_choice_calls_that_tool(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="gpt-sim",
        messages=HELLO,
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "sample"}


async def test_openai_answers_text_after_tool_result_or_tool_choice_none(
    oai: openai.AsyncOpenAI,
) -> None:
    after = await oai.chat.completions.create(
        model="gpt-sim",
        messages=[
            *HELLO,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"zone":"UTC"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        ],
        tools=OPENAI_TOOLS,
    )
    assert after.choices[0].finish_reason == "stop"
    assert after.choices[0].message.tool_calls is None
    assert after.choices[0].message.content
    refused = await oai.chat.completions.create(
        model="gpt-sim", messages=HELLO, tools=OPENAI_TOOLS, tool_choice="none"
    )
    assert refused.choices[0].finish_reason == "stop"
    assert refused.choices[0].message.content


async def test_openai_streamed_tool_call_sends_id_and_name_first(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-sim", messages=HELLO, tools=OPENAI_TOOLS, stream=True
    )
    deltas = [
        call
        async for chunk in stream
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    assert deltas[0].id and deltas[0].id.startswith("call_")
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == WEATHER_ARGS
    # The SDK's own stream accumulator agrees.
    async with oai.chat.completions.stream(
        model="gpt-sim", messages=HELLO, tools=OPENAI_TOOLS
    ) as helper:
        final = await helper.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    (call,) = final.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == WEATHER_ARGS


class Forecast(BaseModel):
    city: str
    high: float
    days: int
    tags: list[str]


async def test_openai_json_modes(oai: openai.AsyncOpenAI) -> None:
    plain = await oai.chat.completions.create(
        model="gpt-sim", messages=HELLO, response_format={"type": "json_object"}
    )
    assert set(json.loads(plain.choices[0].message.content or "")) == {"answer"}
    parsed = await oai.chat.completions.parse(
        model="gpt-sim", messages=HELLO, response_format=Forecast
    )
    assert parsed.choices[0].message.parsed == Forecast(city="sample", high=1.0, days=1, tags=[])


async def test_openai_max_tokens_clamps_with_finish_length(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="gpt-sim", messages=HELLO, max_completion_tokens=5
    )
    assert reply.choices[0].finish_reason == "length"
    assert tokens(reply.choices[0].message.content) == 5
    assert reply.usage is not None and reply.usage.completion_tokens == 5


async def test_openai_models_and_default_provider(sim: SimServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=sim.base_url("default", "openai"), api_key="k", max_retries=0
    ) as client:
        models = await client.models.list()
        reply = await client.chat.completions.create(model="anything-at-all", messages=HELLO)
    assert sim.base_url("default", "openai") == f"{sim.url}/v1"
    assert sim.base_url("p", "anthropic") == f"{sim.url}/p"
    with pytest.raises(ValueError, match="protocol"):
        sim.base_url("p", "grpc")
    assert [m.id for m in models.data] == ["sim-small", "sim-medium", "sim-large"]
    assert reply.model == "anything-at-all"
    assert sim.stats()["by_provider"] == {"default": {"ok": 1}}


# -- Anthropic happy paths --------------------------------------------------------------------


async def test_anthropic_message_text_and_usage(ant: anthropic.AsyncAnthropic) -> None:
    system = "Be brief."
    message = await ant.messages.create(
        model="claude-sim", max_tokens=1000, system=system, messages=HELLO
    )
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    (block,) = message.content
    assert block.type == "text"
    assert message.usage.input_tokens == tokens(system) + tokens(HELLO) == 10
    assert message.usage.output_tokens == tokens(block.text)


async def test_anthropic_stream_events_and_final_message(ant: anthropic.AsyncAnthropic) -> None:
    full = await ant.messages.create(model="claude-sim", max_tokens=1000, messages=HELLO)
    async with ant.messages.stream(model="claude-sim", max_tokens=1000, messages=HELLO) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in full.content]
    assert final.usage.input_tokens == full.usage.input_tokens
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.stop_reason == "end_turn"
    raw = await ant.messages.create(
        model="claude-sim", max_tokens=1000, messages=HELLO, stream=True
    )
    raw_kinds = [event.type async for event in raw]
    assert raw_kinds[:2] == ["message_start", "content_block_start"]
    assert raw_kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert raw_kinds.count("content_block_delta") == full.usage.output_tokens
    assert "text" in kinds


async def test_anthropic_tool_use_streaming_and_not(ant: anthropic.AsyncAnthropic) -> None:
    message = await ant.messages.create(
        model="claude-sim", max_tokens=1000, messages=HELLO, tools=ANTHROPIC_TOOLS
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == WEATHER_ARGS
    assert message.usage.input_tokens == tokens(HELLO) + tokens(ANTHROPIC_TOOLS)
    async with ant.messages.stream(
        model="claude-sim",
        max_tokens=1000,
        messages=HELLO,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_time"},
    ) as stream:
        final = await stream.get_final_message()
    (streamed,) = final.content
    assert streamed.type == "tool_use"
    assert streamed.name == "get_time"
    assert streamed.input == {"zone": "sample"}
    assert final.stop_reason == "tool_use"


async def test_anthropic_answers_text_after_tool_result(ant: anthropic.AsyncAnthropic) -> None:
    message = await ant.messages.create(
        model="claude-sim",
        max_tokens=1000,
        tools=ANTHROPIC_TOOLS,
        messages=[
            *HELLO,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"}],
            },
        ],
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"


async def test_anthropic_max_tokens_and_json_schema(ant: anthropic.AsyncAnthropic) -> None:
    short = await ant.messages.create(model="claude-sim", max_tokens=3, messages=HELLO)
    assert short.stop_reason == "max_tokens"
    assert short.usage.output_tokens == 3
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    shaped = await ant.messages.create(
        model="claude-sim",
        max_tokens=1000,
        messages=HELLO,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert shaped.content[0].type == "text"
    assert json.loads(shaped.content[0].text) == {"city": "sample", "days": 1}


async def test_anthropic_models_list(ant: anthropic.AsyncAnthropic) -> None:
    page = await ant.models.list()
    assert [m.id for m in page.data] == ["sim-small", "sim-medium", "sim-large"]


async def test_paced_streams_carry_the_same_reply_in_several_writes() -> None:
    profile = SimProfile(latency_ms=5, ttft_ms=5, tokens_per_s=4000, jitter=0.3)
    async with SimServer(profiles={"paced": profile}) as sim:
        sim.chaos.set("paced", slow_stream=2, extra_latency_ms=1)
        async with httpx.AsyncClient(base_url=sim.url) as http:
            full = (await http.post("/paced/v1/chat/completions", json=OPENAI_BODY)).json()
            body = {**OPENAI_BODY, "stream": True}
            async with http.stream("POST", "/paced/v1/chat/completions", json=body) as response:
                raw = [chunk async for chunk in response.aiter_raw()]
        assert len(raw) > 1
        deltas = [
            json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in b"".join(raw).decode().splitlines()
            if line.startswith("data: {")
        ]
        assert "".join(deltas) == full["choices"][0]["message"]["content"]
        async with anthropic.AsyncAnthropic(
            base_url=sim.base_url("paced", "anthropic"), api_key="k", max_retries=0
        ) as ant:
            message = await ant.messages.create(**ANTHROPIC_BODY)
            async with ant.messages.stream(**ANTHROPIC_BODY) as stream:
                final = await stream.get_final_message()
        assert final.content[0].type == message.content[0].type == "text"
        assert final.content[0].text == message.content[0].text
        assert sim.stats()["by_outcome"] == {"ok": 4}


# -- determinism and the token rule -----------------------------------------------------------


async def test_same_body_same_reply_and_other_seed_differs(http: httpx.AsyncClient) -> None:
    first = (await http.post("/p/v1/chat/completions", json=OPENAI_BODY)).json()
    again = (await http.post("/p/v1/chat/completions", json=OPENAI_BODY)).json()
    assert first["choices"] == again["choices"]
    assert first["id"] == again["id"]
    async with SimServer(seed=8) as other, httpx.AsyncClient(base_url=other.url) as client:
        different = (await client.post("/p/v1/chat/completions", json=OPENAI_BODY)).json()
    assert (
        different["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]
    )


async def test_reply_length_follows_the_body(http: httpx.AsyncClient) -> None:
    lengths = set()
    for i in range(25):
        body = {"model": "gpt-sim", "messages": [{"role": "user", "content": f"question {i}"}]}
        reply = (await http.post("/p/v1/chat/completions", json=body)).json()
        content = reply["choices"][0]["message"]["content"]
        assert reply["usage"]["completion_tokens"] == tokens(content)
        lengths.add(tokens(content))
    assert min(lengths) >= 20
    assert max(lengths) <= 120
    assert len(lengths) > 10


# -- request errors in each protocol's shape --------------------------------------------------


async def test_malformed_json_is_400_in_each_shape(http: httpx.AsyncClient) -> None:
    bad = b'{"model": "x", '
    headers = {"content-type": "application/json"}
    o = await http.post("/p/v1/chat/completions", content=bad, headers=headers)
    a = await http.post("/p/v1/messages", content=bad, headers=headers)
    assert o.status_code == a.status_code == 400
    assert o.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in o.json()["error"]["message"]
    assert a.json()["type"] == "error"
    assert a.json()["error"]["type"] == "invalid_request_error"


async def test_protocol_validation_errors(
    oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await ant.messages.create(model="claude-sim", messages=HELLO, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="messages"):
        await oai.chat.completions.create(model="gpt-sim", messages=[])
    with pytest.raises(openai.BadRequestError, match="not one of the request's tools"):
        await oai.chat.completions.create(
            model="gpt-sim",
            messages=HELLO,
            tools=OPENAI_TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


async def test_context_window_errors() -> None:
    async with SimServer(profiles={"tiny": SimProfile(context_window=5)}) as sim:
        async with openai.AsyncOpenAI(
            base_url=sim.base_url("tiny", "openai"), api_key="k", max_retries=0
        ) as oai:
            with pytest.raises(openai.BadRequestError) as o:
                await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
        async with anthropic.AsyncAnthropic(
            base_url=sim.base_url("tiny", "anthropic"), api_key="k", max_retries=0
        ) as ant:
            with pytest.raises(anthropic.BadRequestError) as a:
                await ant.messages.create(model="claude-sim", max_tokens=10, messages=HELLO)
        assert sim.stats()["by_outcome"] == {"context_length": 2}
    assert o.value.code == "context_length_exceeded"
    assert a.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert a.value.body["error"]["message"] == "prompt is too long: 7 tokens > 5 maximum"  # type: ignore[index]


async def test_require_key() -> None:
    profiles = {"locked": SimProfile(require_key="sk-right")}
    async with SimServer(profiles=profiles) as sim:
        for key, ok in (("sk-wrong", False), ("sk-right", True)):
            async with (
                openai.AsyncOpenAI(
                    base_url=sim.base_url("locked", "openai"), api_key=key, max_retries=0
                ) as oai,
                anthropic.AsyncAnthropic(
                    base_url=sim.base_url("locked", "anthropic"), api_key=key, max_retries=0
                ) as ant,
            ):
                if ok:
                    await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
                    await ant.messages.create(model="claude-sim", max_tokens=10, messages=HELLO)
                else:
                    with pytest.raises(openai.AuthenticationError):
                        await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
                    with pytest.raises(anthropic.AuthenticationError) as a:
                        await ant.messages.create(model="claude-sim", max_tokens=10, messages=HELLO)
                    assert a.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert sim.stats()["by_outcome"] == {"auth": 2, "ok": 2}


async def test_request_too_large_is_413() -> None:
    async with SimServer(max_body_bytes=1024) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        big = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 4096}]}
        response = await http.post("/p/v1/messages", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"
        assert (await http.post("/p/v1/messages", json=ANTHROPIC_BODY)).status_code == 200


async def test_unknown_routes_and_methods(http: httpx.AsyncClient) -> None:
    assert (await http.get("/p/v1/embeddings")).status_code == 404
    assert (await http.get("/nothing")).status_code == 404
    wrong = await http.get("/p/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


# -- HTTP/1.1 behaviour -----------------------------------------------------------------------


async def test_keep_alive_and_pipelining(sim: SimServer) -> None:
    body = json.dumps(OPENAI_BODY).encode()

    def request(extra: bytes = b"") -> bytes:
        return (
            b"POST /p/v1/chat/completions HTTP/1.1\r\nhost: sim\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (len(body), extra, body)
        )

    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(request() + request(b"connection: close\r\n"))
    raw = await asyncio.wait_for(reader.read(), timeout=2)  # until the server closes
    writer.close()
    await writer.wait_closed()
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert raw.count(b'"object":"chat.completion"') == 2


async def test_malformed_http_gets_400(sim: SimServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout=2)
    writer.close()
    await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_close_lets_requests_in_flight_finish() -> None:
    sim = SimServer(profiles={"slow": SimProfile(latency_ms=100)})
    await sim.start()
    async with httpx.AsyncClient(base_url=sim.url) as http:
        pending = asyncio.create_task(http.post("/slow/v1/chat/completions", json=OPENAI_BODY))
        await eventually(lambda: sim.stats()["in_flight"] == 1)
        await sim.close()
        response = await pending
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=sim.url) as http:
            await http.get("/_sim/stats")


# -- chaos ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type"),
    [
        (429, "requests", "rate_limit_error"),
        (500, "server_error", "api_error"),
        (503, "server_error", "api_error"),
        (529, "server_error", "overloaded_error"),
    ],
)
async def test_injected_errors_in_each_shape(
    sim: SimServer, http: httpx.AsyncClient, status: int, openai_type: str, anthropic_type: str
) -> None:
    sim.chaos.set("p", error_rate=1.0, error_status=status, retry_after=2.5)
    o = await http.post("/p/v1/chat/completions", json=OPENAI_BODY)
    a = await http.post("/p/v1/messages", json=ANTHROPIC_BODY)
    assert o.status_code == a.status_code == status
    assert o.json()["error"]["type"] == openai_type
    assert o.json()["error"]["message"]
    assert a.json()["type"] == "error"
    assert a.json()["error"]["type"] == anthropic_type
    assert o.headers["retry-after"] == a.headers["retry-after"] == "3"
    assert o.headers["retry-after-ms"] == "2500"
    if status == 429:
        assert o.json()["error"]["code"] == "rate_limit_exceeded"
    assert sim.stats()["by_outcome"] == {f"error_{status}": 2}


async def test_sdks_classify_injected_errors(
    sim: SimServer, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    sim.chaos.set("p", error_rate=1.0, error_status=429, retry_after=1)
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
    sim.chaos.set("p", error_rate=1.0, error_status=529)
    with pytest.raises(anthropic.OverloadedError):
        await ant.messages.create(model="claude-sim", max_tokens=10, messages=HELLO)


async def test_reset_is_a_connection_error(
    sim: SimServer, http: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    sim.chaos.set("p", reset_rate=1.0)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await http.post("/p/v1/chat/completions", json=OPENAI_BODY)
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="gpt-sim", messages=HELLO)
    assert sim.stats()["by_outcome"] == {"reset": 2}


async def test_hang_times_out_on_the_client_and_leaks_nothing(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    sim.chaos.set("p", hang_rate=1.0)
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/p/v1/messages", json=ANTHROPIC_BODY, timeout=0.2)
    await eventually(lambda: sim.stats()["in_flight"] == 0)
    assert sim.stats()["by_outcome"] == {"hang": 1}


async def test_close_drops_a_hanging_request_at_once() -> None:
    sim = SimServer(shutdown_grace=30)
    await sim.start()
    sim.chaos.set("*", hang_rate=1.0)
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as http:
        pending = asyncio.create_task(http.post("/v1/messages", json=ANTHROPIC_BODY))
        await eventually(lambda: sim.stats()["in_flight"] == 1)
        await asyncio.wait_for(sim.close(), timeout=2)
        with pytest.raises(httpx.TransportError):
            await pending
    assert sim.stats()["in_flight"] == 0


async def sse_lines_until_broken(http: httpx.AsyncClient, path: str, body: Any) -> list[str]:
    """The lines of a streamed response that must end in a protocol error, not a clean end."""
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        async with http.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
    return lines


async def test_midstream_failure_breaks_the_stream(
    sim: SimServer, http: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    sim.chaos.set("p", midstream_fail_rate=1.0)
    lines = await sse_lines_until_broken(http, "/p/v1/chat/completions", OPENAI_BODY)
    data = [line for line in lines if line.startswith("data: ")]
    assert 2 <= len(data) <= 4  # the role chunk, then one to three content chunks
    assert "data: [DONE]" not in data

    lines = await sse_lines_until_broken(http, "/p/v1/messages", ANTHROPIC_BODY)
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert 1 <= events.count("content_block_delta") <= 3
    assert "message_stop" not in events

    received = []
    with pytest.raises(openai.APIConnectionError):
        stream = await oai.chat.completions.create(model="gpt-sim", messages=HELLO, stream=True)
        async for chunk in stream:
            received.append(chunk)
    assert received

    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/p/v1/chat/completions", json=OPENAI_BODY)
    assert sim.stats()["by_outcome"] == {"midstream_fail": 4}


async def test_rules_scope_by_provider_and_model(sim: SimServer, http: httpx.AsyncClient) -> None:
    sim.chaos.set("p", model="bad-model", error_rate=1.0, error_status=503)

    async def status(provider: str, model: str) -> int:
        body = {**OPENAI_BODY, "model": model}
        return (await http.post(f"/{provider}/v1/chat/completions", json=body)).status_code

    assert await status("p", "bad-model") == 503
    assert await status("p", "good-model") == 200
    assert await status("q", "bad-model") == 200
    sim.chaos.set("*", error_rate=1.0, error_status=500)
    sim.chaos.set("q")  # an all-default rule exempts q from "*"
    assert await status("p", "bad-model") == 503
    assert await status("r", "any") == 500
    assert await status("q", "any") == 200
    assert sim.chaos.clear("*") == 1
    assert await status("r", "any") == 200
    sim.chaos.clear()
    assert sim.chaos.rules() == ()


async def test_chaos_draws_are_reproducible_by_seed() -> None:
    async def outcomes(seed: int) -> list[int]:
        async with SimServer(seed=seed) as sim, httpx.AsyncClient(base_url=sim.url) as http:
            sim.chaos.set("*", error_rate=0.5, error_status=500)
            return [
                (await http.post("/v1/chat/completions", json=OPENAI_BODY)).status_code
                for _ in range(24)
            ]

    first, again, other = await outcomes(1), await outcomes(1), await outcomes(2)
    assert first == again
    assert first != other
    assert {200, 500} == set(first)


def test_chaos_knobs_are_validated_and_decided() -> None:
    chaos = ChaosController(seed=0)
    with pytest.raises(ChaosError, match="error_rate"):
        chaos.set("p", error_rate=2)
    with pytest.raises(ChaosError, match="error_status"):
        chaos.set("p", error_rate=0.1, error_status=418)
    with pytest.raises(ChaosError, match="must not exceed 1"):
        chaos.set("p", error_rate=0.6, hang_rate=0.6)
    chaos.set("p", extra_latency_ms=250, slow_stream=4)
    decision = chaos.decide("p", "m")
    assert (decision.outcome, decision.extra_latency_ms, decision.slow_stream) == ("ok", 250, 4)
    assert chaos.decide("other", "m").extra_latency_ms == 0


# -- control endpoint and stats ---------------------------------------------------------------


async def test_control_endpoint_sets_lists_and_clears_rules(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    created = await http.post(
        "/_sim/chaos",
        json={"provider": "p", "model": "m", "error_rate": 0.25, "error_status": 429},
    )
    assert created.status_code == 200
    assert created.json()["rule"]["error_rate"] == 0.25
    await http.post("/_sim/chaos", json={"provider": "*", "extra_latency_ms": 5})
    listed = (await http.get("/_sim/chaos")).json()["rules"]
    assert [(r["provider"], r["model"]) for r in listed] == [("p", "m"), ("*", None)]
    assert sim.chaos.rule_for("p", "m") is not None
    cleared = await http.delete("/_sim/chaos", params={"provider": "p"})
    assert cleared.json() == {"cleared": 1, "rules": [listed[1]]}
    assert (await http.delete("/_sim/chaos")).json() == {"cleared": 1, "rules": []}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"provider": "p", "error_rate": 2}, "error_rate must be a number between 0 and 1"),
        ({"provider": "p", "error_rate": 1, "error_status": 418}, "error_status must be one of"),
        ({"provider": "p", "hang_rate": "lots"}, "hang_rate"),
        ({"provider": "p", "error_rte": 0.5}, "unknown key(s) error_rte"),
        ({"error_rate": 0.5}, "provider is required"),
        ({"provider": "p", "slow_stream": 0}, "slow_stream must be a number > 0"),
        ([1, 2], "JSON object"),
    ],
)
async def test_control_endpoint_rejects_nonsense(
    sim: SimServer, http: httpx.AsyncClient, payload: Any, words: str
) -> None:
    response = await http.post("/_sim/chaos", json=payload)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]
    assert sim.chaos.rules() == ()


async def test_stats_count_outcomes_by_provider_and_model(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    sim.chaos.set("p", model="m-bad", error_rate=1.0, error_status=429)
    for provider, model in [("p", "m-ok"), ("p", "m-ok"), ("p", "m-bad"), ("q", "m-ok")]:
        await http.post(f"/{provider}/v1/chat/completions", json={**OPENAI_BODY, "model": model})
    await http.post("/q/v1/messages", content=b"{oops")
    await http.get("/q/v1/models")  # listings are not counted
    stats = (await http.get("/_sim/stats")).json()
    assert stats == sim.stats()
    assert stats["total"] == 5
    assert stats["by_outcome"] == {"ok": 3, "error_429": 1, "invalid": 1}
    assert stats["by_provider"] == {"p": {"ok": 2, "error_429": 1}, "q": {"ok": 1, "invalid": 1}}
    assert stats["by_model"]["m-ok"] == {"ok": 3}
    assert {"provider": "p", "model": "m-bad", "outcome": "error_429", "count": 1} in stats["rows"]
    reset = await http.post("/_sim/stats/reset")
    assert reset.json()["total"] == 0
    await http.post("/p/v1/chat/completions", json=OPENAI_BODY)
    sim.reset_stats()
    assert sim.stats()["total"] == 0


# -- running standalone -----------------------------------------------------------------------


def test_main_rejects_a_bad_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "fast:latency_ms=soon"])
    assert exit_.value.code == 2
    assert "latency_ms needs a number" in capsys.readouterr().err


async def test_cli_prints_its_url_and_stops_on_sigint() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "providers.sim",
        "--port",
        "0",
        "--profile",
        "fast:latency_ms=1",
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=10)).decode()
    match = re.fullmatch(r"routedeck sim listening on (http://127\.0\.0\.1:\d+)\n", line)
    assert match is not None, line
    async with httpx.AsyncClient(base_url=match.group(1)) as http:
        reply = await http.post("/fast/v1/chat/completions", json=OPENAI_BODY)
    assert reply.status_code == 200
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0
