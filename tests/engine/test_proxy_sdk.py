"""The real openai and anthropic SDKs against the proxy on a loopback port.

Each answer goes SDK -> proxy -> adapter -> simulated upstream and back, so these tests cover
parsing, routing, translation both ways (OpenAI clients served by an Anthropic deployment and
the reverse), streaming and the x-routedeck-* headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from tests.engine.conftest import Proxy

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
async def oai(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="local", max_retries=0) as c:
        yield c


@pytest.fixture
async def claude(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="local", max_retries=0) as c:
        yield c


@pytest.mark.parametrize(
    ("model", "deployment", "provider"),
    [("gpt-4o-mini", "a-mini", "sim-a"), ("claude-sonnet", "b-mid", "sim-b")],
)
async def test_openai_sdk_non_streaming(
    oai: openai.AsyncOpenAI, model: str, deployment: str, provider: str
) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-routedeck-deployment"] == deployment
    assert raw.headers["x-routedeck-provider"] == provider
    assert raw.headers["x-routedeck-tier-reason"] == "alias"
    assert raw.headers["x-routedeck-attempts"] == "1"
    assert raw.headers["x-routedeck-fallback"] == "none"
    assert raw.headers["x-routedeck-arm"] == "baseline"
    assert raw.headers["x-routedeck-request-id"].startswith("rd-")
    cost = float(raw.headers["x-routedeck-cost"])
    assert cost > 0


async def test_openai_sdk_answers_are_deterministic_and_translated(oai: openai.AsyncOpenAI) -> None:
    """The same request through an OpenAI and an Anthropic deployment gets equal text back."""
    messages = [{"role": "user", "content": "Summarise the incident in one line."}]
    first = await oai.chat.completions.create(model="a-mini", messages=messages, temperature=0)
    again = await oai.chat.completions.create(model="a-mini", messages=messages, temperature=0)
    assert first.choices[0].message.content == again.choices[0].message.content


async def test_openai_sdk_streaming_with_usage(oai: openai.AsyncOpenAI) -> None:
    for model in ("gpt-4o-mini", "claude-sonnet"):
        stream = await oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Stream me something"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert text.strip(), model
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


async def test_openai_sdk_stream_matches_non_stream(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Same answer both ways"}]
    whole = await oai.chat.completions.create(model="b-mid", messages=messages)
    stream = await oai.chat.completions.create(model="b-mid", messages=messages, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content


@pytest.mark.parametrize("model", ["a-mini", "b-mid"])
async def test_openai_sdk_tool_call_round_trip(oai: openai.AsyncOpenAI, model: str) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type,list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample", "days": 1}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'})
    second = await oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


async def test_openai_sdk_streamed_tool_call(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="claude-sonnet",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    names, args, finish = [], "", None
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            args += (delta.function.arguments or "") if delta.function else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert names == ["get_weather"]
    assert json.loads(args) == {"city": "sample", "days": 1}
    assert finish == "tool_calls"


async def test_openai_sdk_json_mode(oai: openai.AsyncOpenAI) -> None:
    # Anthropic deployments get JSON mode as a system instruction (Messages has no such field),
    # which the simulator does not interpret; the codec tests cover that translation.
    completion = await oai.chat.completions.create(
        model="a-mini",
        messages=[{"role": "user", "content": "Give me JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o-mini"])
async def test_anthropic_sdk_non_streaming(claude: anthropic.AsyncAnthropic, model: str) -> None:
    raw = await claude.messages.with_raw_response.create(
        model=model,
        max_tokens=200,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    assert raw.headers["x-routedeck-tier"] in ("low", "medium")


async def test_anthropic_sdk_streaming(claude: anthropic.AsyncAnthropic) -> None:
    for model in ("claude-sonnet", "gpt-4o-mini"):
        async with claude.messages.stream(
            model=model, max_tokens=200, messages=[{"role": "user", "content": "Stream please"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text.strip()
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o-mini"])
async def test_anthropic_sdk_tool_use_round_trip(
    claude: anthropic.AsyncAnthropic, model: str
) -> None:
    tool = {
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    first = await claude.messages.create(
        model=model,
        max_tokens=200,
        tools=[tool],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "sample"}
    second = await claude.messages.create(
        model=model,
        max_tokens=200,
        tools=[tool],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "4 degrees"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"


async def test_anthropic_sdk_streamed_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    tool = {
        "name": "lookup",
        "input_schema": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    }
    async with claude.messages.stream(
        model="gpt-4o-mini",
        max_tokens=200,
        tools=[tool],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "find it"}],
    ) as stream:
        final = await stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.input == {"q": "sample"}
    assert final.stop_reason == "tool_use"


async def test_anthropic_accepts_bearer_auth(proxy: Proxy) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=proxy.url, auth_token="local", max_retries=0
    ) as client:
        message = await client.messages.create(
            model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content


async def test_models_are_listed_for_both_sdks(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    openai_ids = [m.id async for m in oai.models.list()]
    anthropic_ids = [m.id async for m in claude.models.list()]
    assert openai_ids == anthropic_ids
    assert {"low", "medium", "high", "a-mini", "gpt-4o-mini", "claude-sonnet"} <= set(openai_ids)
