"""OpenAI Chat Completions on the wire, translated to and from the canonical model.

Four directions, plus streaming:

- `parse_request`: a client's JSON body → `ChatRequest`. Anything malformed, unknown or
  unsupported raises `errors.InvalidRequest` whose message says what is wrong and what to do,
  with ``param`` naming the field (``messages[2].content[0].image_url.url``). Parameters are
  accepted exactly as documented below; ``null`` counts as absent, as it does for OpenAI.
- `encode_request`: `ChatRequest` → the body for an OpenAI-compatible upstream.
- `decode_response`: an upstream's JSON (bytes or already parsed) → `ChatResponse`; a body that
  is not a chat completion raises `errors.ServerError`.
- `encode_response`: `ChatResponse` → the body a client (and the ``openai`` SDK) expects.
- `StreamDecoder` turns upstream stream chunks into canonical `StreamEvent` values;
  `StreamEncoder` turns canonical events into the SSE bytes sent to a client.

What a caller may rely on:

- ``developer`` messages become ``system`` messages; ``max_completion_tokens`` and
  ``max_tokens`` both become ``max_tokens``; ``response_format: {"type": "text"}`` becomes
  ``None``. ``store``, ``service_tier``, ``prompt_cache_key`` and ``safety_identifier`` are
  accepted and dropped. ``image_url.detail`` and a function's ``strict`` flag are accepted and
  dropped (the canonical model has no place for them).
- Known OpenAI features routedeck cannot serve (``n`` > 1, ``logprobs``, audio, predicted
  outputs, the legacy ``functions`` API, ``logit_bias``, ``reasoning_effort``,
  ``web_search_options``) are rejected by name rather than silently ignored.
- Outbound, the token limit is sent as ``max_completion_tokens`` (OpenAI's current name, the
  only one its reasoning models accept) unless the caller asks for ``max_tokens``; a streaming
  request always asks for ``stream_options.include_usage`` so usage can be accounted;
  ``metadata`` is not forwarded (OpenAI only accepts it together with ``store``) and a tool
  result's ``is_error`` has no OpenAI equivalent and is dropped.
- A finish reason of ``stop`` on a turn that called tools is reported as ``tool_calls`` (some
  OpenAI-compatible servers get this wrong, and Anthropic clients loop on it); the legacy
  ``function_call`` reason is reported as ``tool_calls``; anything unknown as ``stop``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

from providers import errors
from providers._wire import invalid as _invalid
from providers._wire import plain as _plain
from providers._wire import type_name as _type_name
from providers.canonical import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    Part,
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

__all__ = [
    "MaxTokensField",
    "StreamDecoder",
    "StreamEncoder",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_body",
    "parse_request",
]

# ---------------------------------------------------------------------------------------------
# Inbound requests
# ---------------------------------------------------------------------------------------------

_SUPPORTED = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "user",
        "metadata",
        "n",
    }
)
_IGNORED = frozenset({"store", "service_tier", "prompt_cache_key", "safety_identifier"})


def _truthy(value: Any) -> bool:
    return bool(value)


def _not_none(value: Any) -> bool:
    return value is not None


def _nonzero(value: Any) -> bool:
    return value is not None and value != 0


def _has_audio(value: Any) -> bool:
    return isinstance(value, list) and "audio" in value


# Parameters OpenAI knows but routedeck cannot honour: the predicate says whether the value
# actually asks for the feature (``logprobs: false`` or ``functions: []`` are harmless).
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (_truthy, "token log probabilities"),
    "top_logprobs": (_nonzero, "token log probabilities"),
    "audio": (_not_none, "audio output"),
    "modalities": (_has_audio, "audio output"),
    "prediction": (_not_none, "predicted outputs"),
    "functions": (_truthy, "the legacy functions API; send `tools` instead"),
    "function_call": (_not_none, "the legacy functions API; send `tool_choice` instead"),
    "logit_bias": (_truthy, "logit bias"),
    "reasoning_effort": (_not_none, "reasoning effort"),
    "web_search_options": (_not_none, "built-in web search"),
}

_ROLES = "system, developer, user, assistant or tool"


def _str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"`{param}` must be a string, got {_type_name(value)}.", param)
    return value


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"`{param}` must be true or false, got {_type_name(value)}.", param)
    return value


def _int(value: Any, param: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"`{param}` must be an integer, got {_type_name(value)}.", param)
    if minimum is not None and value < minimum:
        raise _invalid(f"`{param}` must be at least {minimum}, got {value}.", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid(f"`{param}` must be a number, got {_type_name(value)}.", param)
    if not low <= value <= high:
        raise _invalid(f"`{param}` must be between {low:g} and {high:g}, got {value:g}.", param)
    return float(value)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"`{param}` must be an object, got {_type_name(value)}.", param)
    return value


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"`{param}` must be an array, got {_type_name(value)}.", param)
    return value


def parse_request(body: Any) -> ChatRequest:
    """Parse an inbound Chat Completions body; raise `errors.InvalidRequest` if it is not one."""
    if not isinstance(body, dict):
        raise _invalid(
            f"The request body must be a JSON object, got {_type_name(body)}. "
            'Send {"model": ..., "messages": [...]}.',
            None,
        )
    for key, value in body.items():
        if key in _SUPPORTED or key in _IGNORED:
            continue
        unsupported = _UNSUPPORTED.get(key)
        if unsupported is None:
            raise _invalid(
                f"Unrecognized request argument supplied: {key}. Remove it from the request.",
                key,
            )
        asks_for_it, feature = unsupported
        if asks_for_it(value):
            raise _invalid(
                f"routedeck does not support `{key}` ({feature}). Remove it from the request.",
                key,
            )

    get = body.get
    model = get("model")
    if model is None:
        raise _invalid("Missing required parameter: `model`. Name a model or an alias.", "model")
    if not isinstance(model, str) or not model:
        raise _invalid("`model` must be a non-empty string naming a model or an alias.", "model")

    raw_messages = get("messages")
    if raw_messages is None:
        raise _invalid(
            "Missing required parameter: `messages`. Send the conversation as an array of "
            '{"role": ..., "content": ...} objects.',
            "messages",
        )
    _list(raw_messages, "messages")
    if not raw_messages:
        raise _invalid(
            "`messages` must contain at least one message. Add the user's message.", "messages"
        )
    messages = tuple(_parse_message(m, i) for i, m in enumerate(raw_messages))

    n = get("n")
    if n is not None and _int(n, "n") != 1:
        raise _invalid(
            "routedeck does not support `n` other than 1 (several choices per request). "
            "Omit `n` and send separate requests instead.",
            "n",
        )

    tools = _parse_tools(get("tools"))
    tool_choice = _parse_tool_choice(get("tool_choice"), tools)
    parallel = get("parallel_tool_calls")
    if parallel is not None:
        _bool(parallel, "parallel_tool_calls")

    stream = get("stream")
    stream = False if stream is None else _bool(stream, "stream")
    include_usage = False
    stream_options = get("stream_options")
    if stream_options is not None:
        for key, value in _object(stream_options, "stream_options").items():
            if key == "include_usage":
                if value is not None:
                    include_usage = _bool(value, "stream_options.include_usage")
            elif key == "include_obfuscation":
                if value is not None:
                    _bool(value, "stream_options.include_obfuscation")
            else:
                raise _invalid(
                    f"Unrecognized argument supplied in `stream_options`: {key}. "
                    "Only include_usage and include_obfuscation are accepted.",
                    f"stream_options.{key}",
                )

    max_tokens = get("max_tokens")
    if max_tokens is not None:
        max_tokens = _int(max_tokens, "max_tokens", 1)
    max_completion = get("max_completion_tokens")
    if max_completion is not None:
        max_completion = _int(max_completion, "max_completion_tokens", 1)
        if max_tokens is not None and max_tokens != max_completion:
            raise _invalid(
                "`max_tokens` and `max_completion_tokens` disagree. Send only "
                "`max_completion_tokens`.",
                "max_tokens",
            )
        max_tokens = max_completion

    temperature = get("temperature")
    if temperature is not None:
        temperature = _number(temperature, "temperature", 0.0, 2.0)
    top_p = get("top_p")
    if top_p is not None:
        top_p = _number(top_p, "top_p", 0.0, 1.0)
    presence = get("presence_penalty")
    if presence is not None:
        presence = _number(presence, "presence_penalty", -2.0, 2.0)
    frequency = get("frequency_penalty")
    if frequency is not None:
        frequency = _number(frequency, "frequency_penalty", -2.0, 2.0)
    seed = get("seed")
    if seed is not None:
        seed = _int(seed, "seed")
    user = get("user")
    if user is not None:
        user = _str(user, "user")

    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=_parse_stop(get("stop")),
        seed=seed,
        presence_penalty=presence,
        frequency_penalty=frequency,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=_parse_response_format(get("response_format")),
        stream=stream,
        include_usage=include_usage,
        user=user,
        metadata=_parse_metadata(get("metadata")),
    )


def _parse_message(raw: Any, i: int) -> Message:
    param = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _invalid(
            f"`{param}` must be an object with a `role` and `content`, got {_type_name(raw)}.",
            param,
        )
    role = raw.get("role")
    if role is None:
        raise _invalid(f"`{param}.role` is missing. Use one of {_ROLES}.", f"{param}.role")
    name = raw.get("name")
    if name is not None:
        name = _str(name, f"{param}.name")
    content = raw.get("content")
    cparam = f"{param}.content"

    if role == "user":
        if content is None:
            raise _invalid(f"`{cparam}` is required for a user message.", cparam)
        return Message("user", _parse_content(content, cparam, _USER_PARTS), name=name)
    if role in ("system", "developer"):
        if content is None:
            raise _invalid(f"`{cparam}` is required for a {role} message.", cparam)
        return Message("system", _parse_content(content, cparam, _TEXT_PARTS), name=name)
    if role == "assistant":
        return _parse_assistant(raw, param, name)
    if role == "tool":
        call_id = raw.get("tool_call_id")
        if call_id is None:
            raise _invalid(
                f"`{param}.tool_call_id` is required for a tool message: name the assistant "
                "tool call this message answers.",
                f"{param}.tool_call_id",
            )
        _str(call_id, f"{param}.tool_call_id")
        if content is None:
            raise _invalid(f"`{cparam}` is required for a tool message.", cparam)
        return Message("tool", _parse_content(content, cparam, _TEXT_PARTS), tool_call_id=call_id)
    if role == "function":
        raise _invalid(
            f"routedeck does not support `function` messages (the legacy functions API) in "
            f"`{param}`. Send a `tool` message with a `tool_call_id` instead.",
            f"{param}.role",
        )
    raise _invalid(
        f"`{param}.role` is {role!r}, which is not a valid role. Use one of {_ROLES}.",
        f"{param}.role",
    )


def _parse_assistant(raw: dict[str, Any], param: str, name: str | None) -> Message:
    if raw.get("function_call") is not None:
        raise _invalid(
            f"routedeck does not support `function_call` in `{param}` (the legacy functions "
            "API). Send `tool_calls` instead.",
            f"{param}.function_call",
        )
    if raw.get("audio") is not None:
        raise _invalid(
            f"routedeck does not support audio in `{param}`. Remove `audio`.", f"{param}.audio"
        )
    tool_calls: tuple[ToolCall, ...] = ()
    raw_calls = raw.get("tool_calls")
    if raw_calls is not None:
        tparam = f"{param}.tool_calls"
        tool_calls = tuple(
            _parse_tool_call(c, f"{tparam}[{j}]") for j, c in enumerate(_list(raw_calls, tparam))
        )
    content = raw.get("content")
    cparam = f"{param}.content"
    if content is None:
        if not tool_calls:
            raise _invalid(
                f"`{cparam}` is required for an assistant message without `tool_calls`.", cparam
            )
        parts: tuple[Part, ...] = ()
    else:
        parts = _parse_content(content, cparam, _ASSISTANT_PARTS)
    return Message("assistant", parts, tool_calls=tool_calls, name=name)


def _parse_tool_call(raw: Any, param: str) -> ToolCall:
    call = _object(raw, param)
    kind = call.get("type", "function")
    if kind != "function":
        raise _invalid(
            f"routedeck does not support tool calls of type {kind!r} in `{param}`; only "
            "`function` tool calls are supported.",
            f"{param}.type",
        )
    call_id = _str(call.get("id"), f"{param}.id")
    function = _object(call.get("function"), f"{param}.function")
    name = _str(function.get("name"), f"{param}.function.name")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    elif isinstance(arguments, dict):
        # Some clients send the arguments object itself; keep it as the JSON text it stands for.
        arguments = orjson.dumps(arguments).decode()
    else:
        arguments = _str(arguments, f"{param}.function.arguments")
    return ToolCall(call_id, name, arguments)


_TEXT_PARTS = frozenset({"text"})
_USER_PARTS = frozenset({"text", "image_url"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})
_UNSUPPORTED_PARTS = {"input_audio": "audio input", "file": "file inputs"}


def _parse_content(content: Any, param: str, allowed: frozenset[str]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    if not isinstance(content, list):
        raise _invalid(
            f"`{param}` must be a string or an array of content parts, got {_type_name(content)}.",
            param,
        )
    parts: list[Part] = []
    for k, raw in enumerate(content):
        pparam = f"{param}[{k}]"
        part = _object(raw, pparam)
        kind = part.get("type")
        if kind in allowed:
            if kind == "text":
                parts.append(TextPart(_str(part.get("text"), f"{pparam}.text")))
            elif kind == "refusal":
                parts.append(TextPart(_str(part.get("refusal"), f"{pparam}.refusal")))
            else:
                parts.append(ImagePart(_parse_image_url(part.get("image_url"), pparam)))
        elif kind in _UNSUPPORTED_PARTS:
            raise _invalid(
                f"routedeck does not support `{kind}` content parts ({_UNSUPPORTED_PARTS[kind]}) "
                f"in `{pparam}`. Send text or images instead.",
                f"{pparam}.type",
            )
        else:
            raise _invalid(
                f"`{pparam}.type` is {kind!r}, which this message cannot contain. Use one of: "
                f"{', '.join(sorted(allowed))}.",
                f"{pparam}.type",
            )
    return tuple(parts)


def _parse_image_url(raw: Any, param: str) -> str:
    uparam = f"{param}.image_url.url"
    url = raw if isinstance(raw, str) else _object(raw, f"{param}.image_url").get("url")
    url = _str(url, uparam)
    if url.startswith(("https://", "http://")) or (
        url.startswith("data:") and ";base64," in url[:100]
    ):
        return url
    raise _invalid(
        f"`{uparam}` must be an http(s) URL or a base64 data URL (data:image/png;base64,...).",
        uparam,
    )


def _parse_tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(_list(raw, "tools")):
        param = f"tools[{i}]"
        tool = _object(item, param)
        kind = tool.get("type")
        if kind != "function":
            raise _invalid(
                f"`{param}.type` is {kind!r}; routedeck supports only `function` tools.",
                f"{param}.type",
            )
        function = _object(tool.get("function"), f"{param}.function")
        name = _str(function.get("name"), f"{param}.function.name")
        if not name:
            raise _invalid(f"`{param}.function.name` must not be empty.", f"{param}.function.name")
        description = function.get("description")
        if description is not None:
            description = _str(description, f"{param}.function.description")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {}
        else:
            _object(parameters, f"{param}.function.parameters")
        tools.append(Tool(name, description, parameters))
    return tuple(tools)


def _parse_tool_choice(raw: Any, tools: tuple[Tool, ...]) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        if raw == "required" and not tools:
            raise _invalid(
                '`tool_choice` is "required" but no `tools` were given. Add `tools` or drop '
                "`tool_choice`.",
                "tool_choice",
            )
        mode: Literal["auto", "none", "required"] = raw
        return ToolChoice(mode)
    if isinstance(raw, dict) and raw.get("type") == "function":
        function = _object(raw.get("function"), "tool_choice.function")
        name = _str(function.get("name"), "tool_choice.function.name")
        if not any(t.name == name for t in tools):
            raise _invalid(
                f"`tool_choice` names the function {name!r}, which is not in `tools`. Add it to "
                "`tools` or name one that is.",
                "tool_choice",
            )
        return ToolChoice("tool", name)
    if isinstance(raw, dict) and raw.get("type") in ("allowed_tools", "custom"):
        raise _invalid(
            f"routedeck does not support `tool_choice` of type {raw['type']!r}. Use "
            '"auto", "none", "required" or {"type": "function", "function": {"name": ...}}.',
            "tool_choice",
        )
    raise _invalid(
        '`tool_choice` must be "auto", "none", "required" or '
        '{"type": "function", "function": {"name": ...}}.',
        "tool_choice",
    )


def _parse_response_format(raw: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    fmt = _object(raw, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = _object(fmt.get("json_schema"), "response_format.json_schema")
        _str(schema.get("name"), "response_format.json_schema.name")
        if schema.get("schema") is not None:
            _object(schema["schema"], "response_format.json_schema.schema")
        return {"type": "json_schema", "json_schema": schema}
    raise _invalid(
        f"`response_format.type` is {kind!r}. Use text, json_object or json_schema.",
        "response_format.type",
    )


def _parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return tuple(s for s in raw if s)
    raise _invalid("`stop` must be a string or an array of strings.", "stop")


def _parse_metadata(raw: Any) -> Mapping[str, str]:
    if raw is None:
        return {}
    metadata = _object(raw, "metadata")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _invalid(
                f"`metadata.{key}` must be a string, got {_type_name(value)}. Metadata maps "
                "strings to strings.",
                f"metadata.{key}",
            )
    return metadata


# ---------------------------------------------------------------------------------------------
# Outbound requests
# ---------------------------------------------------------------------------------------------

MaxTokensField = Literal["max_completion_tokens", "max_tokens"]
"""The name an upstream takes its output token limit under."""


def encode_request(
    req: ChatRequest,
    model: str,
    *,
    max_tokens_field: MaxTokensField = "max_completion_tokens",
) -> dict[str, Any]:
    """The body to POST to an OpenAI-compatible ``/chat/completions`` for ``req`` on ``model``.

    ``max_tokens_field`` picks the name of the token limit for upstreams that only know the
    older ``max_tokens``.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [_encode_message(m) for m in req.messages],
    }
    if req.max_tokens is not None:
        body[max_tokens_field] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = list(req.stop)
    if req.seed is not None:
        body["seed"] = req.seed
    if req.presence_penalty is not None:
        body["presence_penalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        body["frequency_penalty"] = req.frequency_penalty
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
        if req.parallel_tool_calls is not None:
            # OpenAI rejects parallel_tool_calls when no tools are given.
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.tool_choice is not None:
        choice = req.tool_choice
        if choice.mode == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = choice.mode
    if req.response_format is not None:
        body["response_format"] = _plain(req.response_format)
    if req.user is not None:
        body["user"] = req.user
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _encode_parts(parts: tuple[Part, ...]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    return [
        {"type": "text", "text": p.text}
        if isinstance(p, TextPart)
        else {"type": "image_url", "image_url": {"url": p.url}}
        for p in parts
    ]


def _encode_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.role == "assistant":
        out["content"] = _encode_parts(m.content) if m.content else None
        if m.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        elif out["content"] is None:
            out["content"] = ""
    else:
        out["content"] = _encode_parts(m.content) if m.content else ""
        if m.role == "tool":
            out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _encode_tool(t: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": t.name}
    if t.description is not None:
        function["description"] = t.description
    if t.parameters:
        function["parameters"] = _plain(t.parameters)
    return {"type": "function", "function": function}


# ---------------------------------------------------------------------------------------------
# Upstream responses
# ---------------------------------------------------------------------------------------------

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}


def _finish_reason(raw: Any, called_tools: bool) -> FinishReason:
    reason = _FINISH.get(raw, "stop") if isinstance(raw, str) else "stop"
    if reason == "stop" and called_tools:
        return "tool_calls"
    return reason


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _upstream_error_message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(error, str) and error:
        return error
    return orjson.dumps(error).decode()[:300]


def decode_response(body: Any) -> ChatResponse:
    """Decode an upstream chat completion (bytes, text or parsed JSON) into a `ChatResponse`.

    Only the first choice is read (routedeck always asks for one). Missing usage counts as
    zero tokens; present usage is kept as reported.
    """
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise errors.ServerError(f"upstream returned a body that is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.ServerError(
            f"upstream returned {_type_name(body)} where a chat completion object was expected"
        )
    if body.get("error"):
        raise errors.ServerError(
            f"upstream returned an error in a successful response: "
            f"{_upstream_error_message(body['error'])[:300]}"
        )
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise errors.ServerError("upstream returned a chat completion without choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise errors.ServerError("upstream returned a chat completion choice without a message")

    content = message.get("content")
    if isinstance(content, list):
        # A few compatible servers answer with content parts.
        text = "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    elif isinstance(content, str):
        text = content
    else:
        text = ""
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]

    calls: list[ToolCall] = []
    for raw in message.get("tool_calls") or ():
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict):
            raise errors.ServerError("upstream returned a tool call without a function")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        calls.append(
            ToolCall(
                id=raw.get("id") or _new_call_id(),
                name=function.get("name") or "",
                arguments=arguments,
            )
        )

    model = body.get("model")
    return ChatResponse(
        text=text,
        tool_calls=tuple(calls),
        finish_reason=_finish_reason(choices[0].get("finish_reason"), bool(calls)),
        usage=_usage(body.get("usage")) or Usage(),
        model=model if isinstance(model, str) else "",
    )


# ---------------------------------------------------------------------------------------------
# Responses to clients
# ---------------------------------------------------------------------------------------------


def encode_response(resp: ChatResponse, *, id: str, model: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object for ``resp``, as OpenAI (and its SDK) shape it."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": resp.text if resp.text or not resp.tool_calls else None,
        "refusal": None,
    }
    if resp.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in resp.tool_calls
        ]
    usage = resp.usage
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": resp.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error response body in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


class StreamDecoder:
    """Turns the ``data`` of an upstream's stream events into canonical events.

    `feed` returns text and tool-call deltas only; the finish reason and the usage chunk (which
    OpenAI sends after the finish chunk) are accumulated, and `finish` returns the single
    `StreamEnd` once the stream is over. ``done`` turns true at ``[DONE]``; later data is
    ignored. An ``{"error": ...}`` chunk raises `errors.StreamBroken` after storing the error
    object in ``error``, so a caller that has sent nothing yet can classify it.

    The first `ToolCallDelta` of each call carries its id (one is made up if the upstream sent
    none) and name, even from upstreams that repeat them on every chunk.
    """

    __slots__ = ("_calls", "_finish", "_usage", "done", "error")

    def __init__(self) -> None:
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._calls: set[int] = set()
        self.done = False
        self.error: dict[str, Any] | None = None

    def feed(self, data: str) -> list[StreamEvent]:
        if self.done:
            return []
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.StreamBroken(
                f"upstream sent a stream chunk that is not JSON: {data[:120]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise errors.StreamBroken(
                f"upstream sent a stream chunk that is not an object: {data[:120]!r}"
            )
        error = chunk.get("error")
        if error:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            raise errors.StreamBroken(
                f"upstream reported an error mid-stream: {_upstream_error_message(error)[:300]}"
            )
        usage = chunk.get("usage")
        if usage:
            self._usage = _usage(usage)
        choices = chunk.get("choices")
        if not choices:
            return []
        choice = choices[0]
        events: list[StreamEvent] = []
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                events.append(TextDelta(content))
            refusal = delta.get("refusal")
            if refusal:
                events.append(TextDelta(refusal))
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                for position, call in enumerate(tool_calls):
                    events.extend(self._tool_delta(position, call))
        reason = choice.get("finish_reason")
        if reason:
            self._finish = reason
        return events

    def _tool_delta(self, position: int, call: dict[str, Any]) -> list[StreamEvent]:
        index = call.get("index")
        if not isinstance(index, int):
            index = position
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        if index in self._calls:
            return [ToolCallDelta(index, arguments)] if arguments else []
        self._calls.add(index)
        return [
            ToolCallDelta(
                index,
                arguments,
                id=call.get("id") or _new_call_id(),
                name=function.get("name") or "",
            )
        ]

    def finish(self) -> StreamEnd:
        """The stream's `StreamEnd`; `errors.StreamBroken` if no finish reason ever came."""
        if self._finish is None:
            raise errors.StreamBroken("upstream stream ended before it sent a finish_reason")
        return StreamEnd(_finish_reason(self._finish, bool(self._calls)), self._usage)


_DONE = b"data: [DONE]\n\n"
_CHUNK_END = b"]}\n\n"


class StreamEncoder:
    """Encodes canonical stream events as the SSE bytes of an OpenAI chat completion stream.

    Call `start` once (the chunk announcing the assistant role), `event` for each canonical
    event, ending with the `StreamEnd`, which writes the finish chunk, the usage chunk (with
    empty ``choices``, only when ``include_usage`` and the usage is known) and ``[DONE]``. If the
    stream fails midway, send `error` instead: the ``openai`` SDK raises on it.
    """

    __slots__ = ("_head", "include_usage")

    def __init__(self, *, id: str, model: str, created: int, include_usage: bool) -> None:
        # Every chunk shares this prefix; building it once keeps each event to one small dumps.
        self._head = (
            b'data: {"id":'
            + orjson.dumps(id)
            + b',"object":"chat.completion.chunk","created":'
            + str(int(created)).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":['
        )
        self.include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._head + orjson.dumps(choice) + _CHUNK_END

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, TextDelta):
            return self._chunk({"content": ev.text})
        if isinstance(ev, ToolCallDelta):
            call: dict[str, Any]
            if ev.id is not None:
                call = {
                    "index": ev.index,
                    "id": ev.id,
                    "type": "function",
                    "function": {"name": ev.name or "", "arguments": ev.arguments},
                }
            else:
                call = {"index": ev.index, "function": {"arguments": ev.arguments}}
            return self._chunk({"tool_calls": [call]})
        out = self._chunk({}, ev.finish_reason)
        if self.include_usage and ev.usage is not None:
            usage = ev.usage
            out += (
                self._head
                + b'],"usage":'
                + orjson.dumps(
                    {
                        "prompt_tokens": usage.input_tokens,
                        "completion_tokens": usage.output_tokens,
                        "total_tokens": usage.input_tokens + usage.output_tokens,
                    }
                )
                + b"}\n\n"
            )
        return out + _DONE

    def error(self, message: str, type: str, code: str | None = None) -> bytes:
        return b"data: " + orjson.dumps(error_body(message, type, code=code)) + b"\n\n"
