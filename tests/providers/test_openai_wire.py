"""OpenAI Chat Completions codec: inbound parsing, outbound encoding, responses and streams.

What clients receive is checked against the real ``openai`` SDK: its response models, its stream
accumulator, and the client itself talking to a mock transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers import errors
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
from providers.openai_wire import (
    StreamDecoder,
    StreamEncoder,
    decode_response,
    encode_request,
    encode_response,
    error_body,
    parse_request,
)
from providers.sse import aiter_sse

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}

FULL_BODY: dict[str, Any] = {
    "model": "tier-high",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "name": "ana",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "assistant", "content": "It rains."},
    ],
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_completion_tokens": 100,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["END"],
    "seed": 7,
    "presence_penalty": 0.1,
    "frequency_penalty": -0.2,
    "user": "u-1",
    "metadata": {"team": "search"},
    "n": 1,
    "store": False,
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "safety_identifier": "s",
}


# --- parse_request ---------------------------------------------------------------------------


def test_parse_full_request() -> None:
    req = parse_request(FULL_BODY)
    assert req.model == "tier-high"
    assert [m.role for m in req.messages] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert req.messages[0].content == (TextPart("Be brief."),)
    user = req.messages[2]
    assert user.name == "ana"
    assert user.content == (
        TextPart("Weather here?"),
        ImagePart("https://x.test/a.png"),
        ImagePart("data:image/png;base64,AAAA"),
    )
    assert req.messages[3].content == ()
    assert req.messages[3].tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)
    assert req.messages[4].tool_call_id == "call_1"
    assert req.messages[4].text == "rain"
    assert req.tools == (
        Tool(
            "get_weather",
            "Current weather",
            {"type": "object", "properties": {"city": {"type": "string"}}},
        ),
    )
    assert req.tool_choice == ToolChoice("tool", "get_weather")
    assert req.parallel_tool_calls is False
    assert req.response_format == {"type": "json_object"}
    assert req.stream is True and req.include_usage is True
    assert req.max_tokens == 100
    assert (req.temperature, req.top_p, req.seed) == (0.5, 0.9, 7)
    assert (req.presence_penalty, req.frequency_penalty) == (0.1, -0.2)
    assert req.stop == ("END",)
    assert req.user == "u-1"
    assert req.metadata == {"team": "search"}


def test_parse_minimal_request_has_defaults() -> None:
    req = parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert req == ChatRequest(model="m", messages=(Message("user", (TextPart("hi"),)),))


def test_nulls_count_as_absent() -> None:
    req = parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": None,
            "max_tokens": None,
            "stop": None,
            "tools": None,
            "logprobs": None,
            "functions": None,
            "n": None,
        }
    )
    assert req.temperature is None and req.max_tokens is None and req.stop == ()


def test_max_tokens_and_stop_string_forms() -> None:
    req = parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stop": "Z"}
    )
    assert req.max_tokens == 5
    assert req.stop == ("Z",)


def test_response_format_text_is_none_and_json_schema_is_kept() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert parse_request({**base, "response_format": {"type": "text"}}).response_format is None
    schema = {"name": "out", "schema": {"type": "object"}, "strict": True}
    req = parse_request({**base, "response_format": {"type": "json_schema", "json_schema": schema}})
    assert req.response_format == {"type": "json_schema", "json_schema": schema}


def test_harmless_values_of_unsupported_parameters_are_accepted() -> None:
    req = parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "logprobs": False,
            "top_logprobs": 0,
            "modalities": ["text"],
            "functions": [],
            "logit_bias": {},
            "n": 1,
        }
    )
    assert req.model == "m"


def _msgs(*messages: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages)}


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ([1], None, "must be a JSON object"),
        ({"messages": [USER]}, "model", "Missing required parameter: `model`"),
        ({"model": "", "messages": [USER]}, "model", "non-empty string"),
        ({"model": "m"}, "messages", "Missing required parameter: `messages`"),
        ({"model": "m", "messages": []}, "messages", "at least one message"),
        ({"model": "m", "messages": "hi"}, "messages", "must be an array"),
        (_msgs("hi"), "messages[0]", "must be an object"),
        (_msgs({"content": "x"}), "messages[0].role", "is missing"),
        (_msgs({"role": "robot", "content": "x"}), "messages[0].role", "not a valid role"),
        (_msgs({"role": "function", "content": "x"}), "messages[0].role", "tool"),
        (_msgs({"role": "user"}), "messages[0].content", "required"),
        (_msgs({"role": "user", "content": 5}), "messages[0].content", "string or an array"),
        (
            _msgs({"role": "user", "content": [{"type": "video"}]}),
            "messages[0].content[0].type",
            "Use one of: image_url, text",
        ),
        (
            _msgs({"role": "user", "content": [{"type": "text", "text": 3}]}),
            "messages[0].content[0].text",
            "must be a string",
        ),
        (
            _msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
            "messages[0].content[0].type",
            "does not support `input_audio`",
        ),
        (
            _msgs(
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}],
                }
            ),
            "messages[0].content[0].image_url.url",
            "base64 data URL",
        ),
        (
            _msgs({"role": "system", "content": [{"type": "image_url", "image_url": {}}]}),
            "messages[0].content[0].type",
            "Use one of: text",
        ),
        (_msgs({"role": "assistant"}), "messages[0].content", "without `tool_calls`"),
        (
            _msgs({"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}),
            "messages[0].tool_calls[0].id",
            "must be a string",
        ),
        (
            _msgs({"role": "assistant", "content": "x", "function_call": {"name": "f"}}),
            "messages[0].function_call",
            "does not support",
        ),
        (_msgs({"role": "tool", "content": "x"}), "messages[0].tool_call_id", "is required"),
        ({**_msgs(USER), "tools": [{"type": "custom"}]}, "tools[0].type", "only `function`"),
        ({**_msgs(USER), "tools": {}}, "tools", "must be an array"),
        ({**_msgs(USER), "tool_choice": "always"}, "tool_choice", '"auto", "none"'),
        ({**_msgs(USER), "tool_choice": "required"}, "tool_choice", "no `tools`"),
        (
            {
                **_msgs(USER),
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
            "not in `tools`",
        ),
        ({**_msgs(USER), "response_format": {"type": "xml"}}, "response_format.type", "json"),
        ({**_msgs(USER), "temperature": 2.5}, "temperature", "between 0 and 2"),
        ({**_msgs(USER), "temperature": -0.1}, "temperature", "between 0 and 2"),
        ({**_msgs(USER), "temperature": True}, "temperature", "must be a number"),
        ({**_msgs(USER), "top_p": 1.5}, "top_p", "between 0 and 1"),
        ({**_msgs(USER), "max_tokens": 0}, "max_tokens", "at least 1"),
        ({**_msgs(USER), "max_tokens": 1.5}, "max_tokens", "integer"),
        (
            {**_msgs(USER), "max_tokens": 5, "max_completion_tokens": 6},
            "max_tokens",
            "disagree",
        ),
        ({**_msgs(USER), "presence_penalty": 3}, "presence_penalty", "between -2 and 2"),
        ({**_msgs(USER), "stop": [1]}, "stop", "array of strings"),
        ({**_msgs(USER), "stream": "yes"}, "stream", "true or false"),
        ({**_msgs(USER), "stream_options": {"x": 1}}, "stream_options.x", "Unrecognized"),
        ({**_msgs(USER), "metadata": {"a": 1}}, "metadata.a", "must be a string"),
        ({**_msgs(USER), "user": 5}, "user", "must be a string"),
        ({**_msgs(USER), "n": 2}, "n", "does not support `n`"),
        ({**_msgs(USER), "verbosity": "low"}, "verbosity", "Unrecognized request argument"),
    ],
)
def test_invalid_requests_name_the_field(body: Any, param: str | None, fragment: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_request(body)
    assert info.value.param == param
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("logit_bias", {"50256": -100}),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
    ],
)
def test_known_but_unsupported_parameters_are_rejected_by_name(key: str, value: Any) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_request({**_msgs(USER), key: value})
    assert info.value.param == key
    assert f"routedeck does not support `{key}`" in info.value.message
    assert "Remove it" in info.value.message


def test_unknown_argument_uses_openai_wording() -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse_request({**_msgs(USER), "temprature": 1})
    assert info.value.message.startswith("Unrecognized request argument supplied: temprature")


# --- encode_request --------------------------------------------------------------------------


def test_encode_request_shapes_every_field() -> None:
    req = parse_request(FULL_BODY)
    body = encode_request(req, "gpt-4o-mini")
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][2] == {
        "role": "user",
        "name": "ana",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    assert body["messages"][3] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert body["messages"][4] == {"role": "tool", "content": "rain", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_object"}
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body
    assert body["stop"] == ["END"]
    assert (body["seed"], body["user"]) == (7, "u-1")
    assert body["stream"] is True
    assert "metadata" not in body
    orjson.dumps(body)  # serialisable as is


def test_streaming_request_always_asks_for_usage() -> None:
    req = ChatRequest(model="m", messages=(Message("user", (TextPart("x"),)),), stream=True)
    assert req.include_usage is False
    assert encode_request(req, "up")["stream_options"] == {"include_usage": True}
    plain = encode_request(ChatRequest(model="m", messages=req.messages), "up")
    assert "stream" not in plain and "stream_options" not in plain


def test_legacy_max_tokens_field_on_request() -> None:
    req = ChatRequest(model="m", messages=(Message("user", (TextPart("x"),)),), max_tokens=9)
    assert encode_request(req, "up", max_tokens_field="max_tokens")["max_tokens"] == 9


def test_parallel_tool_calls_only_sent_with_tools() -> None:
    msgs = (Message("user", (TextPart("x"),)),)
    body = encode_request(ChatRequest(model="m", messages=msgs, parallel_tool_calls=True), "u")
    assert "parallel_tool_calls" not in body


def test_tool_choice_modes() -> None:
    msgs = (Message("user", (TextPart("x"),)),)
    for mode in ("auto", "none", "required"):
        req = ChatRequest(model="m", messages=msgs, tool_choice=ToolChoice(mode))
        assert encode_request(req, "u")["tool_choice"] == mode


def test_openai_request_round_trips_through_canonical() -> None:
    first = parse_request(FULL_BODY)
    again = parse_request(encode_request(first, "tier-high"))
    # Only what OpenAI does not carry upstream differs: metadata, the include_usage choice.
    assert again.messages == first.messages
    assert again.tools == first.tools
    assert again.tool_choice == first.tool_choice
    assert (again.temperature, again.stop, again.max_tokens) == (
        first.temperature,
        first.stop,
        first.max_tokens,
    )


# --- decode_response -------------------------------------------------------------------------

UPSTREAM_RESPONSE = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}


def test_decode_response_from_bytes() -> None:
    resp = decode_response(orjson.dumps(UPSTREAM_RESPONSE))
    assert resp == ChatResponse(
        text="Checking.",
        tool_calls=(ToolCall("call_a", "get_weather", '{"city":"Rome"}'),),
        finish_reason="tool_calls",
        usage=Usage(12, 5),
        model="gpt-4o-mini-2024-07-18",
    )


def test_decode_response_without_usage_counts_zero() -> None:
    body = {**UPSTREAM_RESPONSE}
    del body["usage"]
    assert decode_response(body).usage == Usage(0, 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("function_call", "tool_calls"),
        ("eos", "stop"),
        (None, "stop"),
    ],
)
def test_decode_finish_reasons(raw: str | None, expected: str) -> None:
    body = {
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": raw}],
    }
    assert decode_response(body).finish_reason == expected


def test_stop_with_tool_calls_is_reported_as_tool_calls() -> None:
    body = orjson.loads(orjson.dumps(UPSTREAM_RESPONSE))
    body["choices"][0]["finish_reason"] = "stop"
    assert decode_response(body).finish_reason == "tool_calls"


def test_refusal_is_returned_as_text() -> None:
    body = {"choices": [{"message": {"content": None, "refusal": "No."}, "finish_reason": "stop"}]}
    assert decode_response(body).text == "No."


@pytest.mark.parametrize(
    "body",
    [b"<html>502</html>", b"[]", {"choices": []}, {"choices": [{}]}, {"error": {"message": "x"}}],
)
def test_unparseable_response_is_a_server_error(body: Any) -> None:
    with pytest.raises(errors.ServerError):
        decode_response(body)


# --- encode_response -------------------------------------------------------------------------


def test_encode_response_is_a_valid_chat_completion() -> None:
    resp = ChatResponse(
        text="",
        tool_calls=(ToolCall("call_1", "f", '{"a":1}'),),
        finish_reason="tool_calls",
        usage=Usage(10, 3),
        model="up",
    )
    body = encode_response(resp, id="chatcmpl-x", model="tier-high", created=1700000000)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == "chatcmpl-x" and parsed.model == "tier-high"
    choice = parsed.choices[0]
    assert choice.message.content is None
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.arguments == '{"a":1}'
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (10, 3)
    assert parsed.usage.total_tokens == 13


def test_encode_response_text_answer() -> None:
    body = encode_response(ChatResponse(text="Hi"), id="c", model="m", created=1)
    message = ChatCompletion.model_validate(body).choices[0].message
    assert message.content == "Hi" and message.tool_calls is None


def test_error_body_shape() -> None:
    assert error_body("bad", "invalid_request_error", param="model", code="x") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": "x"}
    }


def _sdk(handler: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="test",
        base_url="http://upstream.test/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


async def test_openai_sdk_reads_encoded_response() -> None:
    body = encode_response(
        ChatResponse(text="Hello", usage=Usage(4, 1)), id="chatcmpl-1", model="m", created=5
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    async with _sdk(handler) as client:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "Hello"
    assert completion.usage is not None and completion.usage.total_tokens == 5


# --- streams ---------------------------------------------------------------------------------

UPSTREAM_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
    {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                },
            }
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
]

EXPECTED_EVENTS: list[StreamEvent] = [
    TextDelta("Hel"),
    TextDelta("lo"),
    ToolCallDelta(0, "", id="call_1", name="f"),
    ToolCallDelta(0, '{"a"'),
    ToolCallDelta(0, ":1}"),
]


def _feed_all(decoder: StreamDecoder, chunks: list[dict[str, Any]]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(orjson.dumps(chunk).decode()))
    return events


def test_decoder_yields_deltas_then_one_end_with_usage() -> None:
    decoder = StreamDecoder()
    assert _feed_all(decoder, UPSTREAM_CHUNKS) == EXPECTED_EVENTS
    assert decoder.feed("[DONE]") == []
    assert decoder.done
    assert decoder.feed('{"choices":[{"delta":{"content":"late"}}]}') == []
    assert decoder.finish() == StreamEnd("tool_calls", Usage(9, 4))


def test_decoder_without_usage_chunk_ends_with_no_usage() -> None:
    decoder = StreamDecoder()
    decoder.feed('{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}')
    assert decoder.finish() == StreamEnd("length", None)


def test_decoder_requires_a_finish_reason() -> None:
    decoder = StreamDecoder()
    decoder.feed('{"choices":[{"delta":{"content":"x"}}]}')
    decoder.feed("[DONE]")
    with pytest.raises(errors.StreamBroken, match="finish_reason"):
        decoder.finish()


def test_decoder_error_chunk_breaks_the_stream_and_keeps_the_error() -> None:
    decoder = StreamDecoder()
    with pytest.raises(errors.StreamBroken, match="server had an error"):
        decoder.feed('{"error":{"message":"The server had an error","type":"server_error"}}')
    assert decoder.error == {"message": "The server had an error", "type": "server_error"}


def test_decoder_rejects_non_json_chunk() -> None:
    with pytest.raises(errors.StreamBroken, match="not JSON"):
        StreamDecoder().feed("{truncated")


def test_decoder_only_first_delta_of_a_call_carries_id_and_name() -> None:
    # Some compatible servers repeat the id and name on every chunk of a call.
    chunk = {
        "choices": [
            {
                "delta": {
                    "tool_calls": [
                        {"index": 1, "id": "call_z", "function": {"name": "g", "arguments": "{}"}}
                    ]
                }
            }
        ]
    }
    decoder = StreamDecoder()
    assert _feed_all(decoder, [chunk, chunk]) == [
        ToolCallDelta(1, "{}", id="call_z", name="g"),
        ToolCallDelta(1, "{}"),
    ]


def test_decoder_makes_up_a_missing_call_id() -> None:
    chunk = {"choices": [{"delta": {"tool_calls": [{"function": {"name": "g"}}]}}]}
    (event,) = _feed_all(StreamDecoder(), [chunk])
    assert isinstance(event, ToolCallDelta)
    assert event.index == 0 and event.name == "g"
    assert event.id is not None and event.id.startswith("call_")


def test_decoder_stop_after_tool_calls_is_tool_calls() -> None:
    decoder = StreamDecoder()
    _feed_all(
        decoder, [*UPSTREAM_CHUNKS[3:6], {"choices": [{"delta": {}, "finish_reason": "stop"}]}]
    )
    assert decoder.finish().finish_reason == "tool_calls"


def _encode_all(encoder: StreamEncoder, events: list[StreamEvent]) -> bytes:
    return encoder.start() + b"".join(encoder.event(e) for e in events)


ALL_EVENTS: list[StreamEvent] = [*EXPECTED_EVENTS, StreamEnd("tool_calls", Usage(9, 4))]


async def _sse_data(raw: bytes) -> list[str]:
    async def one() -> AsyncIterator[bytes]:
        yield raw

    return [data async for _, data in aiter_sse(one())]


async def test_encoded_chunks_are_valid_and_accumulate_in_the_sdk() -> None:
    encoder = StreamEncoder(id="chatcmpl-s", model="tier-high", created=7, include_usage=True)
    datas = await _sse_data(_encode_all(encoder, ALL_EVENTS))
    assert datas[-1] == "[DONE]"
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(d)) for d in datas[:-1]]
    assert all(c.id == "chatcmpl-s" and c.model == "tier-high" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Hello"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", '{"a":1}')
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens == 13


async def test_usage_chunk_only_when_asked() -> None:
    encoder = StreamEncoder(id="c", model="m", created=1, include_usage=False)
    datas = await _sse_data(_encode_all(encoder, ALL_EVENTS))
    assert all("usage" not in orjson.loads(d) for d in datas[:-1])
    assert datas[-1] == "[DONE]"


async def test_encoder_output_decodes_back_to_the_same_events() -> None:
    encoder = StreamEncoder(id="c", model="m", created=1, include_usage=True)
    decoder = StreamDecoder()
    events: list[StreamEvent] = []
    for data in await _sse_data(_encode_all(encoder, ALL_EVENTS)):
        events.extend(decoder.feed(data))
    assert [*events, decoder.finish()] == ALL_EVENTS


async def test_openai_sdk_streams_encoded_bytes() -> None:
    encoder = StreamEncoder(id="chatcmpl-s", model="m", created=1, include_usage=True)
    raw = _encode_all(encoder, ALL_EVENTS)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    async with (
        _sdk(handler) as client,
        client.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Hello"
    assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_sdk_raises_on_encoded_error() -> None:
    encoder = StreamEncoder(id="c", model="m", created=1, include_usage=False)
    raw = (
        encoder.start()
        + encoder.event(TextDelta("par"))
        + encoder.error("upstream went away", "server_error", "stream_broken")
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    received: list[str] = []
    async with _sdk(handler) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="upstream went away"):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert received == ["par"]
