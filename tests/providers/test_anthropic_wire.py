"""Anthropic Messages codec: inbound parsing, outbound encoding, responses, streams, and the
translation between the OpenAI and Anthropic shapes through the canonical model.

What clients receive is checked against the real ``anthropic`` SDK: its response and event
models, its stream accumulator, and the client itself talking to a mock transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as AnthropicMessage
from anthropic.types import RawMessageStreamEvent

from providers import errors, openai_wire
from providers.anthropic_wire import (
    JSON_INSTRUCTION,
    StreamDecoder,
    StreamEncoder,
    decode_response,
    encode_request,
    encode_response,
    error_body,
    parse_request,
)
from providers.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from providers.sse import aiter_sse

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}

FULL_BODY: dict[str, Any] = {
    "model": "claude-tier",
    "max_tokens": 256,
    "system": [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools."},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no data"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [WEATHER],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.3,
    "top_p": 0.8,
    "top_k": 40,
    "metadata": {"user_id": "u-9"},
    "stream": True,
}


# --- parse_request ---------------------------------------------------------------------------


def test_parse_full_request() -> None:
    req = parse_request(FULL_BODY)
    assert req.model == "claude-tier" and req.max_tokens == 256
    assert req.messages[:2] == (
        Message("system", (TextPart("Be brief."),)),
        Message("system", (TextPart("Use tools."),)),
    )
    assert req.messages[2] == Message(
        "user",
        (
            TextPart("Weather?"),
            ImagePart("data:image/png;base64,AAAA"),
            ImagePart("https://x.test/a.jpg"),
        ),
    )
    assert req.messages[3] == Message(
        "assistant",
        (TextPart("Checking."),),
        tool_calls=(
            ToolCall("toolu_1", "get_weather", '{"city":"Oslo"}'),
            ToolCall("toolu_2", "get_weather", '{"city":"Rome"}'),
        ),
    )
    # One user turn with results and text: the results first, in order, then the text.
    assert req.messages[4:] == (
        Message("tool", (TextPart("rain"),), tool_call_id="toolu_1"),
        Message("tool", (TextPart("no data"),), tool_call_id="toolu_2", is_error=True),
        Message("user", (TextPart("And tomorrow?"),)),
    )
    assert req.tools == (Tool("get_weather", "Current weather", WEATHER["input_schema"]),)
    assert req.tool_choice == ToolChoice("required")
    assert req.parallel_tool_calls is False
    assert req.stop == ("END",)
    assert (req.temperature, req.top_p) == (0.3, 0.8)
    assert req.user == "u-9"
    assert req.stream is True


def test_string_system_and_content() -> None:
    req = parse_request(
        {
            "model": "m",
            "max_tokens": 5,
            "system": "S",
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert req.messages == (
        Message("system", (TextPart("S"),)),
        Message("user", (TextPart("hi"),)),
    )


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, ToolChoice("auto"), None),
        ({"type": "any"}, ToolChoice("required"), None),
        ({"type": "none"}, ToolChoice("none"), None),
        ({"type": "tool", "name": "get_weather"}, ToolChoice("tool", "get_weather"), None),
        ({"type": "auto", "disable_parallel_tool_use": False}, ToolChoice("auto"), True),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: ToolChoice, parallel: bool | None) -> None:
    req = parse_request(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER],
            "tool_choice": choice,
        }
    )
    assert req.tool_choice == expected
    assert req.parallel_tool_calls is parallel


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}


def _one(*blocks: Any, role: str = "user") -> dict[str, Any]:
    return {"model": "m", "max_tokens": 5, "messages": [{"role": role, "content": list(blocks)}]}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ("text", None, "must be a JSON object"),
        ({"max_tokens": 5, "messages": []}, "model", "Field required"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens", "required"),
        ({**_body(), "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages", "at least one"),
        ({"model": "m", "max_tokens": 5}, "messages", "Field required"),
        ({"model": "m", "max_tokens": 5, "messages": {}}, "messages", "must be an array"),
        (_body(thinking={"type": "enabled", "budget_tokens": 1024}), "thinking", "thinking"),
        (_body(mcp_servers=[{"url": "x"}]), "mcp_servers", "MCP"),
        (_body(container="c"), "container", "containers"),
        (_body(frobnicate=1), "frobnicate", "Extra inputs are not permitted"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
            "top-level `system`",
        ),
        (_one({"type": "document", "source": {}}), "messages.0.content.0.type", "document"),
        (
            _one({"type": "thinking", "thinking": "x"}, role="assistant"),
            "messages.0.content.0.type",
            "thinking",
        ),
        (
            _one({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
            "messages.0.content.0.type",
            "not valid in a user",
        ),
        (
            _one({"type": "image", "source": {"type": "file", "file_id": "f"}}),
            "messages.0.content.0.source.type",
            "base64 and url",
        ),
        (
            _one(
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "image", "source": {}}],
                }
            ),
            "messages.0.content.0.content.0.type",
            "only text in tool results",
        ),
        (_one({"type": "text"}), "messages.0.content.0.text", "must be a string"),
        (_body(temperature=1.5), "temperature", "between 0 and 1"),
        (_body(top_k=-1), "top_k", "non-negative"),
        (_body(tools=[{"type": "bash_20250124", "name": "bash"}]), "tools.0.type", "bash_20250124"),
        (_body(tools=[{"name": "f"}]), "tools.0.input_schema", "must be an object"),
        (_body(tool_choice={"type": "sometimes"}), "tool_choice.type", "auto, any, tool or none"),
        (_body(tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name", "not one of"),
        (_body(metadata={"session": "x"}), "metadata.session", "Only metadata.user_id"),
        (_body(stream="yes"), "stream", "true or false"),
        (_body(stop_sequences="END"), "stop_sequences", "must be an array"),
    ],
)
def test_invalid_requests_name_the_field(body: Any, param: str | None, fragment: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_request(body)
    assert info.value.param == param
    assert fragment in info.value.message


def test_disabled_thinking_and_service_tier_are_accepted() -> None:
    req = parse_request(_body(thinking={"type": "disabled"}, service_tier="auto", top_k=5))
    assert req.model == "m"


# --- encode_request --------------------------------------------------------------------------


def test_anthropic_request_round_trips_to_the_same_wire_body() -> None:
    body = encode_request(parse_request(FULL_BODY), "claude-x", default_max_tokens=1)
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "no data",
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER["input_schema"],
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["max_tokens"] == 256
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["stream"] is True
    assert "top_k" not in body


OPENAI_BODY: dict[str, Any] = {
    "model": "tier",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "developer", "content": "Prefer Celsius."},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "toolu_01Abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "toolu_01Abc", "content": "sun"},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "temperature": 1.7,
    "seed": 3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
}


def test_openai_request_encodes_to_anthropic() -> None:
    body = encode_request(openai_wire.parse_request(OPENAI_BODY), "claude", default_max_tokens=4096)
    assert body["system"] == "Be brief.\n\nPrefer Celsius."
    assert body["max_tokens"] == 4096
    assert body["temperature"] == 1.0
    assert not {"seed", "presence_penalty", "frequency_penalty"} & body.keys()
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1:] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_01Abc", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    # Both tool messages became one user turn, and the next user message joined it.
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
        {"type": "tool_result", "tool_use_id": "toolu_01Abc", "content": "sun"},
        {"type": "text", "text": "Thanks"},
    ]


def test_openai_to_anthropic_and_back_keeps_the_conversation() -> None:
    first = openai_wire.parse_request(OPENAI_BODY)
    wire = orjson.loads(orjson.dumps(encode_request(first, "claude", default_max_tokens=99)))
    wire["model"] = "tier"
    back = parse_request(wire)
    assert back.tools == first.tools
    assert back.tool_choice == first.tool_choice
    assert back.parallel_tool_calls is False
    # The system prompts are lifted into one, in order.
    assert [m.text for m in back.messages if m.role == "system"] == ["Be brief.\n\nPrefer Celsius."]
    first_rest = [m for m in first.messages if m.role != "system"]
    back_rest = [m for m in back.messages if m.role != "system"]
    assert len(back_rest) == len(first_rest)
    for before, after in zip(first_rest, back_rest, strict=True):
        assert (after.role, after.text, after.tool_call_id) == (
            before.role,
            before.text,
            before.tool_call_id,
        )
        assert [(c.id, c.name, orjson.loads(c.arguments)) for c in after.tool_calls] == [
            (c.id, c.name, orjson.loads(c.arguments)) for c in before.tool_calls
        ]


def test_anthropic_to_openai_and_back_keeps_the_conversation() -> None:
    first = parse_request(FULL_BODY)
    wire = openai_wire.encode_request(first, "claude-tier")
    back = parse_request(
        encode_request(openai_wire.parse_request(wire), "claude-tier", default_max_tokens=1)
    )
    # is_error has no OpenAI equivalent; everything else survives both hops.
    expected = tuple(
        Message(m.role, m.content, m.tool_calls, m.tool_call_id) if m.role == "tool" else m
        for m in first.messages
        if m.role != "system"
    )
    assert tuple(m for m in back.messages if m.role != "system") == expected
    assert back.tools == first.tools and back.stop == first.stop


def test_invalid_tool_arguments_are_a_bad_request() -> None:
    req = ChatRequest(
        model="m",
        messages=(Message("assistant", (), tool_calls=(ToolCall("call_1", "f", "{oops"),)),),
    )
    with pytest.raises(errors.BadRequest, match="not a JSON object") as info:
        encode_request(req, "claude", default_max_tokens=1)
    assert "call_1" in info.value.message


def test_empty_tool_arguments_are_an_empty_input() -> None:
    req = ChatRequest(
        model="m", messages=(Message("assistant", (), tool_calls=(ToolCall("c", "f", ""),)),)
    )
    body = encode_request(req, "claude", default_max_tokens=1)
    assert body["messages"][0]["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}
    ]


def test_tool_ids_the_api_would_reject_are_made_safe_consistently() -> None:
    req = ChatRequest(
        model="m",
        messages=(
            Message("assistant", (), tool_calls=(ToolCall("functions.get:0", "get", "{}"),)),
            Message("tool", (TextPart("ok"),), tool_call_id="functions.get:0"),
        ),
    )
    body = encode_request(req, "claude", default_max_tokens=1)
    assert body["messages"][0]["content"][0]["id"] == "functions_get_0"
    assert body["messages"][1]["content"][0]["tool_use_id"] == "functions_get_0"


@pytest.mark.parametrize(
    ("fmt", "schema_in_prompt"),
    [
        ({"type": "json_object"}, False),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "o", "schema": {"type": "object", "required": ["a"]}},
            },
            True,
        ),
    ],
)
def test_response_format_becomes_a_system_instruction(
    fmt: dict[str, Any], schema_in_prompt: bool
) -> None:
    req = ChatRequest(
        model="m",
        messages=(Message("system", (TextPart("S"),)), Message("user", (TextPart("x"),))),
        response_format=fmt,
    )
    system = encode_request(req, "claude", default_max_tokens=1)["system"]
    assert system.startswith("S\n\n" + JSON_INSTRUCTION)
    assert ('"required":["a"]' in system) is schema_in_prompt


def test_empty_text_is_dropped_and_empty_messages_skipped() -> None:
    req = ChatRequest(
        model="m",
        messages=(
            Message("user", (TextPart("hi"),)),
            Message("assistant", (TextPart(""),)),
            Message("user", (TextPart("again"),)),
        ),
    )
    assert encode_request(req, "c", default_max_tokens=1)["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}],
        }
    ]


def test_non_base64_data_url_is_a_bad_request() -> None:
    req = ChatRequest(model="m", messages=(Message("user", (ImagePart("data:image/png,AAAA"),)),))
    with pytest.raises(errors.BadRequest, match="base64"):
        encode_request(req, "c", default_max_tokens=1)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice("auto"), {"type": "auto"}),
        (ToolChoice("required"), {"type": "any"}),
        (ToolChoice("none"), {"type": "none"}),
        (ToolChoice("tool", "f"), {"type": "tool", "name": "f"}),
    ],
)
def test_encode_tool_choice(choice: ToolChoice, expected: dict[str, Any]) -> None:
    req = ChatRequest(
        model="m",
        messages=(Message("user", (TextPart("x"),)),),
        tools=(Tool("f"),),
        tool_choice=choice,
    )
    body = encode_request(req, "c", default_max_tokens=1)
    assert body["tool_choice"] == expected
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


# --- decode_response -------------------------------------------------------------------------

UPSTREAM_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check. "},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "text", "text": "Done."},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 7,
    },
}


def test_decode_response() -> None:
    assert decode_response(orjson.dumps(UPSTREAM_MESSAGE)) == ChatResponse(
        text="Let me check. Done.",
        tool_calls=(ToolCall("toolu_9", "get_weather", '{"city":"Oslo"}'),),
        finish_reason="tool_calls",
        usage=Usage(1110, 7),
        model="claude-sonnet-4-5",
    )


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_decode_stop_reasons(stop_reason: str, expected: str) -> None:
    body = {**UPSTREAM_MESSAGE, "stop_reason": stop_reason}
    assert decode_response(body).finish_reason == expected


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", {"type": "message"}, {"type": "error", "error": {"message": "x"}}],
)
def test_unparseable_response_is_a_server_error(body: Any) -> None:
    with pytest.raises(errors.ServerError):
        decode_response(body)


# --- encode_response -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_encode_response_is_a_valid_message(finish: Any, stop_reason: str) -> None:
    resp = ChatResponse(
        text="Hi",
        tool_calls=(ToolCall("call_1", "f", '{"a": [1]}'),),
        finish_reason=finish,
        usage=Usage(3, 2),
    )
    message = AnthropicMessage.model_validate(encode_response(resp, id="msg_x", model="tier"))
    assert (message.id, message.model, message.stop_reason) == ("msg_x", "tier", stop_reason)
    text, tool = message.content
    assert text.type == "text" and text.text == "Hi"
    assert tool.type == "tool_use" and tool.input == {"a": [1]} and tool.id == "call_1"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 2)


def test_encode_response_rejects_tool_arguments_that_are_not_an_object() -> None:
    resp = ChatResponse(
        text="", tool_calls=(ToolCall("c", "f", "[1, 2]"),), finish_reason="tool_calls"
    )
    with pytest.raises(errors.ServerError, match="not a JSON object"):
        encode_response(resp, id="m", model="m")


def test_error_body_shape() -> None:
    assert error_body("slow down", "rate_limit_error") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def _sdk(handler: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="test",
        base_url="http://upstream.test",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


async def test_anthropic_sdk_reads_encoded_response() -> None:
    body = encode_response(ChatResponse(text="Hello", usage=Usage(4, 1)), id="msg_1", model="m")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    async with _sdk(handler) as client:
        message = await client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.stop_reason == "end_turn"


# --- streams ---------------------------------------------------------------------------------

UPSTREAM_STREAM: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
            },
        },
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 12},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def _feed_all(
    decoder: StreamDecoder, events: list[tuple[str, dict[str, Any]]]
) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for name, payload in events:
        out.extend(decoder.feed(name, orjson.dumps(payload).decode()))
    return out


def test_decoder_yields_deltas_and_one_end() -> None:
    decoder = StreamDecoder()
    assert _feed_all(decoder, UPSTREAM_STREAM) == [
        TextDelta("Hi"),
        # Tool calls are numbered from 0, not by content-block index.
        ToolCallDelta(0, "", id="toolu_1", name="f"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
    ]
    assert decoder.done
    assert decoder.finish() == StreamEnd("tool_calls", Usage(25, 12))


def test_decoder_takes_input_tokens_from_message_delta_when_present() -> None:
    decoder = StreamDecoder()
    events = [*UPSTREAM_STREAM[:1], UPSTREAM_STREAM[-2], UPSTREAM_STREAM[-1]]
    events[1] = (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 30, "output_tokens": 2},
        },
    )
    _feed_all(decoder, events)
    assert decoder.finish() == StreamEnd("stop", Usage(35, 2))


def test_decoder_skips_thinking_blocks() -> None:
    decoder = StreamDecoder()
    events = _feed_all(
        decoder,
        [
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "hm"},
                },
            ),
        ],
    )
    assert events == []


def test_decoder_error_event_breaks_and_keeps_the_error() -> None:
    decoder = StreamDecoder()
    with pytest.raises(errors.StreamBroken, match="Overloaded"):
        decoder.feed(
            "error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        )
    assert decoder.error == {"type": "overloaded_error", "message": "Overloaded"}


def test_decoder_requires_a_stop_reason() -> None:
    decoder = StreamDecoder()
    _feed_all(decoder, UPSTREAM_STREAM[:4])
    with pytest.raises(errors.StreamBroken, match="stop_reason"):
        decoder.finish()


def test_decoder_rejects_non_json() -> None:
    with pytest.raises(errors.StreamBroken, match="not JSON"):
        StreamDecoder().feed("message_start", "{")


CANONICAL_STREAM: list[StreamEvent] = [
    TextDelta("Let me "),
    TextDelta("check."),
    ToolCallDelta(0, "", id="toolu_a", name="f"),
    ToolCallDelta(0, '{"city":'),
    ToolCallDelta(0, '"Oslo"}'),
    ToolCallDelta(1, '{"city":"Rome"}', id="toolu_b", name="f"),
    StreamEnd("tool_calls", Usage(40, 9)),
]


def _encode_all(events: list[StreamEvent]) -> bytes:
    encoder = StreamEncoder(id="msg_s", model="tier", input_tokens=38)
    return encoder.start() + b"".join(encoder.event(e) for e in events)


async def _sse(raw: bytes) -> list[tuple[str | None, str]]:
    async def one() -> AsyncIterator[bytes]:
        yield raw

    return [item async for item in aiter_sse(one())]


async def test_encoded_events_validate_and_accumulate_in_the_sdk() -> None:
    adapter: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(
        RawMessageStreamEvent
    )
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    names = []
    for name, data in await _sse(_encode_all(CANONICAL_STREAM)):
        event = adapter.validate_json(data)
        assert event.type == name  # the SSE event name matches the payload type
        names.append(name)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert snapshot is not None
    text, first, second = snapshot.content
    assert text.type == "text" and text.text == "Let me check."
    assert first.type == "tool_use" and (first.id, first.input) == ("toolu_a", {"city": "Oslo"})
    assert second.type == "tool_use" and (second.id, second.input) == ("toolu_b", {"city": "Rome"})
    assert snapshot.stop_reason == "tool_use"
    # The upstream's own input count replaces the estimate sent in message_start.
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (40, 9)


async def test_blocks_are_opened_and_closed_in_order() -> None:
    indexes = []
    for name, data in await _sse(_encode_all(CANONICAL_STREAM)):
        payload = orjson.loads(data)
        if name in ("content_block_start", "content_block_stop"):
            indexes.append((name.split("_")[-1], payload["index"]))
    assert indexes == [
        ("start", 0),
        ("stop", 0),
        ("start", 1),
        ("stop", 1),
        ("start", 2),
        ("stop", 2),
    ]


async def test_encoder_output_decodes_back_to_the_same_events() -> None:
    decoder = StreamDecoder()
    events: list[StreamEvent] = []
    for name, data in await _sse(_encode_all(CANONICAL_STREAM)):
        events.extend(decoder.feed(name, data))
    # A call's first arguments travel in their own input_json_delta after the block start.
    assert [*events, decoder.finish()] == [
        *CANONICAL_STREAM[:5],
        ToolCallDelta(1, "", id="toolu_b", name="f"),
        ToolCallDelta(1, '{"city":"Rome"}'),
        CANONICAL_STREAM[6],
    ]


def test_interleaved_tool_calls_cannot_be_encoded() -> None:
    encoder = StreamEncoder(id="m", model="m", input_tokens=0)
    encoder.start()
    encoder.event(ToolCallDelta(0, "{", id="a", name="f"))
    encoder.event(ToolCallDelta(1, "{", id="b", name="f"))
    with pytest.raises(errors.StreamBroken, match="interleaved"):
        encoder.event(ToolCallDelta(0, "}"))


async def test_anthropic_sdk_streams_encoded_bytes() -> None:
    raw = _encode_all(CANONICAL_STREAM)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    async with (
        _sdk(handler) as client,
        client.messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "Let me check."
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]


async def test_anthropic_sdk_raises_on_encoded_error() -> None:
    encoder = StreamEncoder(id="m", model="m", input_tokens=1)
    raw = encoder.start() + encoder.event(TextDelta("par")) + encoder.error("gone", "api_error")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    async with _sdk(handler) as client:
        stream = await client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(anthropic.APIStatusError, match="gone"):
            async for _ in stream:
                pass
