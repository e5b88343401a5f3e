"""Anthropic Messages on the wire, translated to and from the canonical model.

The same set as `providers.openai_wire`: `parse_request` (a client's body → `ChatRequest`,
raising `errors.InvalidRequest` that names the field and says what to do), `encode_request`
(→ the body for an Anthropic upstream), `decode_response` (an upstream message →
`ChatResponse`, `errors.ServerError` if it is not one), `encode_response` (→ the ``message``
object a client and the ``anthropic`` SDK expect), `StreamDecoder` / `StreamEncoder` for streams,
and `error_body`.

Inbound, routedeck accepts ``model``, ``max_tokens`` (required), ``messages`` (user and
assistant turns; text, image, tool_use and tool_result blocks), ``system``, ``tools``,
``tool_choice``, ``stop_sequences``, ``temperature``, ``top_p``, ``metadata.user_id`` (→
``user``) and ``stream``. ``top_k``, ``service_tier`` and every block's ``cache_control`` are
accepted and dropped. Extended thinking, server tools, containers, MCP servers, documents and
other block types are rejected by name. The blocks of one user turn become canonical ``tool``
messages for its tool_result blocks (in order), then one ``user`` message for the rest; each
``system`` text block becomes one canonical system message.

Outbound to an Anthropic upstream, what a caller may rely on:

- System messages, wherever they are in the conversation, become the top-level ``system``
  string, joined by a blank line.
- Consecutive ``tool`` messages become one user turn of tool_result blocks, and consecutive
  turns of the same role are merged into one (the API would merge them anyway); empty text
  is dropped, since the API rejects empty text blocks.
- An assistant tool call's JSON-text arguments are sent as the ``input`` object; arguments that
  are not a JSON object raise `errors.BadRequest` (an empty string counts as ``{}``). Tool-call
  ids pass through unchanged, except that characters the API does not allow in an id are
  replaced by ``_`` (the same way in a call and in its result, so they still match).
- Messages has no ``response_format``: ``json_object`` adds the system instruction "Respond
  with a single JSON object only.", and ``json_schema`` adds that plus the schema.
- ``temperature`` is clamped to 1.0 (Anthropic's maximum); ``seed``, ``presence_penalty`` and
  ``frequency_penalty`` have no Anthropic equivalent and are dropped; ``max_tokens`` defaults
  to the caller's ``default_max_tokens``, since Anthropic requires one.

Finish reasons: ``end_turn``, ``stop_sequence`` and ``pause_turn`` → ``stop``; ``max_tokens``
and ``model_context_window_exceeded`` → ``length``; ``tool_use`` → ``tool_calls``; ``refusal``
→ ``content_filter``; and the reverse when encoding for a client. Input token counts include
cache reads and writes (``input_tokens + cache_creation_input_tokens +
cache_read_input_tokens``), matching what OpenAI reports as ``prompt_tokens``.
"""

from __future__ import annotations

import re
from typing import Any

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
    "StreamDecoder",
    "StreamEncoder",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_body",
    "parse_request",
]

JSON_INSTRUCTION = "Respond with a single JSON object only."

# ---------------------------------------------------------------------------------------------
# Inbound requests
# ---------------------------------------------------------------------------------------------

_SUPPORTED = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "service_tier",
    }
)
_UNSUPPORTED = {
    "thinking": "extended thinking",
    "container": "code-execution containers",
    "mcp_servers": "MCP servers",
    "context_management": "context management",
    "output_format": "structured outputs",
    "output_config": "output configuration",
}
_UNSUPPORTED_BLOCKS = {
    "document": "document blocks",
    "search_result": "search result blocks",
    "thinking": "thinking blocks",
    "redacted_thinking": "thinking blocks",
    "server_tool_use": "server tools",
    "web_search_tool_result": "server tools",
    "container_upload": "container uploads",
}


def _str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{param}: must be a string, got {_type_name(value)}.", param)
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{param}: must be an object, got {_type_name(value)}.", param)
    return value


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{param}: must be an array, got {_type_name(value)}.", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid(f"{param}: must be a number, got {_type_name(value)}.", param)
    if not low <= value <= high:
        raise _invalid(f"{param}: must be between {low:g} and {high:g}, got {value:g}.", param)
    return float(value)


def parse_request(body: Any) -> ChatRequest:
    """Parse an inbound Messages body; raise `errors.InvalidRequest` if it is not one."""
    if not isinstance(body, dict):
        raise _invalid(
            f"The request body must be a JSON object, got {_type_name(body)}. "
            'Send {"model": ..., "max_tokens": ..., "messages": [...]}.',
            None,
        )
    for key, value in body.items():
        if key in _SUPPORTED:
            continue
        if key in _UNSUPPORTED:
            if value is None or (key == "thinking" and value == {"type": "disabled"}):
                continue
            raise _invalid(
                f"{key}: routedeck does not support {_UNSUPPORTED[key]}. Remove `{key}` from "
                "the request.",
                key,
            )
        raise _invalid(f"{key}: Extra inputs are not permitted. Remove `{key}`.", key)

    get = body.get
    model = get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required: a non-empty model name or alias.", "model")
    max_tokens = get("max_tokens")
    if max_tokens is None:
        raise _invalid(
            "max_tokens: Field required. Set the maximum number of tokens to generate.",
            "max_tokens",
        )
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid("max_tokens: must be an integer of at least 1.", "max_tokens")

    raw_messages = get("messages")
    if raw_messages is None:
        raise _invalid(
            "messages: Field required. Send the conversation as an array of "
            '{"role": ..., "content": ...} messages.',
            "messages",
        )
    _list(raw_messages, "messages")
    if not raw_messages:
        raise _invalid("messages: at least one message is required.", "messages")

    messages: list[Message] = []
    system = get("system")
    if system is not None:
        if isinstance(system, str):
            if system:
                messages.append(Message("system", (TextPart(system),)))
        else:
            for i, block in enumerate(_list(system, "system")):
                part = _text_block(block, f"system.{i}")
                messages.append(Message("system", (part,)))
    for i, raw in enumerate(raw_messages):
        messages.extend(_parse_message(raw, i))

    tools = _parse_tools(get("tools"))
    tool_choice, parallel = _parse_tool_choice(get("tool_choice"), tools)

    stop = get("stop_sequences")
    stop_sequences: tuple[str, ...] = ()
    if stop is not None:
        stop_sequences = tuple(
            _str(s, f"stop_sequences.{i}") for i, s in enumerate(_list(stop, "stop_sequences"))
        )

    temperature = get("temperature")
    if temperature is not None:
        temperature = _number(temperature, "temperature", 0.0, 1.0)
    top_p = get("top_p")
    if top_p is not None:
        top_p = _number(top_p, "top_p", 0.0, 1.0)
    top_k = get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _invalid("top_k: must be a non-negative integer.", "top_k")

    user = None
    metadata = get("metadata")
    if metadata is not None:
        for key, value in _object(metadata, "metadata").items():
            if key != "user_id":
                raise _invalid(
                    f"metadata.{key}: Extra inputs are not permitted. Only metadata.user_id is "
                    "accepted.",
                    f"metadata.{key}",
                )
            if value is not None:
                user = _str(value, "metadata.user_id")

    stream = get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise _invalid("stream: must be true or false.", "stream")

    return ChatRequest(
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop_sequences,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        stream=stream,
        user=user,
    )


def _text_block(raw: Any, param: str) -> TextPart:
    block = _object(raw, param)
    if block.get("type") != "text":
        raise _invalid(
            f"{param}.type: expected a text block, got {block.get('type')!r}.", f"{param}.type"
        )
    return TextPart(_str(block.get("text"), f"{param}.text"))


def _parse_message(raw: Any, i: int) -> list[Message]:
    param = f"messages.{i}"
    message = _object(raw, param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _invalid(
            f"{param}.role: {role!r} is not a valid role. Use user or assistant, and put "
            "system prompts in the top-level `system` field.",
            f"{param}.role",
        )
    content = message.get("content")
    cparam = f"{param}.content"
    if isinstance(content, str):
        return [Message(role, (TextPart(content),))]
    blocks = _list(content, cparam)

    parts: list[Part] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, raw_block in enumerate(blocks):
        bparam = f"{cparam}.{j}"
        block = _object(raw_block, bparam)
        kind = block.get("type")
        if kind == "text":
            parts.append(TextPart(_str(block.get("text"), f"{bparam}.text")))
        elif kind == "image" and role == "user":
            parts.append(ImagePart(_image_url(block.get("source"), f"{bparam}.source")))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_parse_tool_use(block, bparam))
        elif kind == "tool_result" and role == "user":
            results.append(_parse_tool_result(block, bparam))
        elif kind in _UNSUPPORTED_BLOCKS:
            raise _invalid(
                f"{bparam}.type: routedeck does not support {_UNSUPPORTED_BLOCKS[kind]} "
                f"({kind!r}). Remove the block.",
                f"{bparam}.type",
            )
        else:
            allowed = "text, image or tool_result" if role == "user" else "text or tool_use"
            raise _invalid(
                f"{bparam}.type: {kind!r} blocks are not valid in a {role} message. Use {allowed}.",
                f"{bparam}.type",
            )
    if role == "assistant":
        return [Message("assistant", tuple(parts), tool_calls=tuple(calls))]
    if parts or not results:
        results.append(Message("user", tuple(parts)))
    return results


def _image_url(raw: Any, param: str) -> str:
    source = _object(raw, param)
    kind = source.get("type")
    if kind == "base64":
        media_type = _str(source.get("media_type"), f"{param}.media_type")
        data = _str(source.get("data"), f"{param}.data")
        return f"data:{media_type};base64,{data}"
    if kind == "url":
        url = _str(source.get("url"), f"{param}.url")
        if url.startswith(("https://", "http://")):
            return url
        raise _invalid(f"{param}.url: must be an http(s) URL.", f"{param}.url")
    raise _invalid(
        f"{param}.type: routedeck supports base64 and url image sources, got {kind!r}.",
        f"{param}.type",
    )


def _parse_tool_use(block: dict[str, Any], param: str) -> ToolCall:
    call_id = _str(block.get("id"), f"{param}.id")
    name = _str(block.get("name"), f"{param}.name")
    arguments = _object(block.get("input"), f"{param}.input")
    return ToolCall(call_id, name, orjson.dumps(arguments).decode())


def _parse_tool_result(block: dict[str, Any], param: str) -> Message:
    call_id = _str(block.get("tool_use_id"), f"{param}.tool_use_id")
    content = block.get("content")
    parts: tuple[Part, ...]
    if content is None:
        parts = ()
    elif isinstance(content, str):
        parts = (TextPart(content),)
    else:
        cparam = f"{param}.content"
        items: list[Part] = []
        for k, item in enumerate(_list(content, cparam)):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind != "text":
                raise _invalid(
                    f"{cparam}.{k}.type: routedeck supports only text in tool results, got "
                    f"{kind!r}. Send the result as text.",
                    f"{cparam}.{k}.type",
                )
            items.append(_text_block(item, f"{cparam}.{k}"))
        parts = tuple(items)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _invalid(f"{param}.is_error: must be true or false.", f"{param}.is_error")
    return Message("tool", parts, tool_call_id=call_id, is_error=bool(is_error))


def _parse_tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(_list(raw, "tools")):
        param = f"tools.{i}"
        tool = _object(item, param)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _invalid(
                f"{param}.type: routedeck does not support {kind!r} tools (built-in or server "
                "tools). Define the tool with name, description and input_schema.",
                f"{param}.type",
            )
        name = _str(tool.get("name"), f"{param}.name")
        if not name:
            raise _invalid(f"{param}.name: must not be empty.", f"{param}.name")
        description = tool.get("description")
        if description is not None:
            description = _str(description, f"{param}.description")
        schema = _object(tool.get("input_schema"), f"{param}.input_schema")
        tools.append(Tool(name, description, schema))
    return tuple(tools)


def _parse_tool_choice(raw: Any, tools: tuple[Tool, ...]) -> tuple[ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    choice = _object(raw, "tool_choice")
    kind = choice.get("type")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _invalid(
            "tool_choice.disable_parallel_tool_use: must be true or false.",
            "tool_choice.disable_parallel_tool_use",
        )
    parallel = None if disable is None else not disable
    if kind == "auto":
        return ToolChoice("auto"), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "tool":
        name = _str(choice.get("name"), "tool_choice.name")
        if not any(t.name == name for t in tools):
            raise _invalid(
                f"tool_choice.name: {name!r} is not one of the request's tools. Add it to "
                "`tools` or name one that is.",
                "tool_choice.name",
            )
        return ToolChoice("tool", name), parallel
    raise _invalid(
        f"tool_choice.type: {kind!r} is not valid. Use auto, any, tool or none.",
        "tool_choice.type",
    )


# ---------------------------------------------------------------------------------------------
# Outbound requests
# ---------------------------------------------------------------------------------------------

_ID_OK = re.compile(r"[A-Za-z0-9_-]+")
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def _tool_id(call_id: str) -> str:
    # Anthropic requires ids matching ^[a-zA-Z0-9_-]+$; ids from other providers may not.
    if _ID_OK.fullmatch(call_id):
        return call_id
    return _ID_BAD_CHARS.sub("_", call_id) or "_"


def encode_request(req: ChatRequest, model: str, *, default_max_tokens: int) -> dict[str, Any]:
    """The body to POST to an Anthropic ``/v1/messages`` for ``req`` on ``model``.

    Raises `errors.BadRequest` when the conversation cannot be expressed in Messages (tool
    call arguments that are not a JSON object, an image URL that is neither http(s) nor a
    base64 data URL).
    """
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role == "system":
            text = m.text
            if text:
                system.append(text)
            continue
        if m.role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [_tool_result(m)]
        elif m.role == "assistant":
            role = "assistant"
            blocks = _content_blocks(m.content)
            blocks.extend(_tool_use(c) for c in m.tool_calls)
        else:
            role = "user"
            blocks = _content_blocks(m.content)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    fmt = req.response_format
    if fmt is not None and fmt.get("type") in ("json_object", "json_schema"):
        instruction = JSON_INSTRUCTION
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            instruction += " It must conform to this JSON Schema:\n" + orjson.dumps(schema).decode()
        system.append(instruction)

    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.max_tokens if req.max_tokens is not None else default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if req.temperature is not None:
        body["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.tools:
        body["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description is not None else {}),
                "input_schema": _plain(t.parameters)
                if t.parameters
                else {"type": "object", "properties": {}},
            }
            for t in req.tools
        ]
        tool_choice = _encode_tool_choice(req.tool_choice)
        if req.parallel_tool_calls is False:
            tool_choice = tool_choice or {"type": "auto"}
            if tool_choice["type"] != "none":
                tool_choice["disable_parallel_tool_use"] = True
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.stream:
        body["stream"] = True
    return body


def _encode_tool_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode == "required":
        return {"type": "any"}
    if choice.mode == "tool":
        return {"type": "tool", "name": choice.name}
    return {"type": choice.mode}


def _content_blocks(parts: tuple[Part, ...]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            if p.text:
                blocks.append({"type": "text", "text": p.text})
        else:
            blocks.append({"type": "image", "source": _image_source(p.url)})
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if sep and header.endswith(";base64"):
            return {"type": "base64", "media_type": header[5:-7], "data": data}
    elif url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise errors.BadRequest(
        f"cannot send the image {url[:60]!r} to Anthropic: it must be an http(s) URL or a "
        "base64 data URL"
    )


def _tool_use(call: ToolCall) -> dict[str, Any]:
    arguments = call.arguments
    if not arguments.strip():
        parsed: Any = {}
    else:
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
    if not isinstance(parsed, dict):
        raise errors.BadRequest(
            f"the arguments of tool call {call.id!r} ({call.name}) are not a JSON object, so "
            f"they cannot be sent to Anthropic as tool input: {arguments[:100]!r}. Fix the "
            "arguments in the conversation history."
        )
    return {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": parsed}


def _tool_result(m: Message) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(m.tool_call_id or "")}
    texts = [p.text for p in m.content if isinstance(p, TextPart) and p.text]
    if len(texts) == 1:
        block["content"] = texts[0]
    elif texts:
        block["content"] = [{"type": "text", "text": t} for t in texts]
    if m.is_error:
        block["is_error"] = True
    return block


# ---------------------------------------------------------------------------------------------
# Upstream responses
# ---------------------------------------------------------------------------------------------

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def _input_tokens(usage: dict[str, Any]) -> int:
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
    )


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    return orjson.dumps(error).decode()[:300]


def decode_response(body: Any) -> ChatResponse:
    """Decode an upstream message (bytes, text or parsed JSON) into a `ChatResponse`.

    Text blocks are concatenated; tool_use inputs become JSON-text arguments; thinking and
    other blocks are skipped.
    """
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise errors.ServerError(f"upstream returned a body that is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.ServerError(
            f"upstream returned {_type_name(body)} where a message object was expected"
        )
    if body.get("type") == "error":
        raise errors.ServerError(
            f"upstream returned an error in a successful response: "
            f"{_error_message(body.get('error'))[:300]}"
        )
    content = body.get("content")
    if not isinstance(content, list):
        raise errors.ServerError("upstream returned a message without content")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=block.get("id") or "",
                    name=block.get("name") or "",
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    usage = body.get("usage")
    model = body.get("model")
    reason = body.get("stop_reason")
    return ChatResponse(
        text="".join(texts),
        tool_calls=tuple(calls),
        finish_reason=_FINISH.get(reason, "stop") if isinstance(reason, str) else "stop",
        usage=Usage(_input_tokens(usage), int(usage.get("output_tokens") or 0))
        if isinstance(usage, dict)
        else Usage(),
        model=model if isinstance(model, str) else "",
    )


# ---------------------------------------------------------------------------------------------
# Responses to clients
# ---------------------------------------------------------------------------------------------


def _tool_input(call: ToolCall) -> dict[str, Any]:
    if not call.arguments.strip():
        return {}
    try:
        parsed = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # The model's own output is malformed: an upstream fault another attempt may not repeat.
        raise errors.ServerError(
            f"the upstream model produced tool call arguments that are not a JSON object, which "
            f"an Anthropic client cannot receive: {call.arguments[:100]!r}"
        )
    return parsed


def encode_response(resp: ChatResponse, *, id: str, model: str) -> dict[str, Any]:
    """The ``message`` object for ``resp``, as Anthropic (and its SDK) shape it.

    Raises `errors.ServerError` if a tool call's arguments are not a JSON object, since a
    Messages ``tool_use`` block can only carry an object.
    """
    content: list[dict[str, Any]] = []
    if resp.text:
        content.append({"type": "text", "text": resp.text})
    for call in resp.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call)}
        )
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASON[resp.finish_reason],
        "stop_sequence": None,
        "usage": {
            "input_tokens": resp.usage.input_tokens,
            "output_tokens": resp.usage.output_tokens,
        },
    }


def error_body(message: str, type: str) -> dict[str, Any]:
    """An error response body in Anthropic's shape."""
    return {"type": "error", "error": {"type": type, "message": message}}


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


class StreamDecoder:
    """Turns an upstream's ``(event, data)`` stream pairs into canonical events.

    `feed` returns text and tool-call deltas; the stop reason and usage (from
    ``message_start`` and the cumulative ``message_delta``) are accumulated, and `finish`
    returns the single `StreamEnd`. ``done`` turns true at ``message_stop``. An ``error``
    event raises `errors.StreamBroken` after storing the error object in ``error``, so a caller
    that has sent nothing yet can classify it. Tool calls are numbered 0, 1, ... in the order
    they start, whatever their content-block index. Thinking blocks, pings and unknown events
    are skipped.
    """

    __slots__ = (
        "_cache_read",
        "_cache_write",
        "_input",
        "_output",
        "_stop",
        "_tools",
        "_usage_seen",
        "done",
        "error",
    )

    def __init__(self) -> None:
        self._stop: str | None = None
        self._input = 0
        self._cache_write = 0
        self._cache_read = 0
        self._output = 0
        self._usage_seen = False
        self._tools: dict[int, int] = {}  # content-block index → tool call index
        self.done = False
        self.error: dict[str, Any] | None = None

    def _take_usage(self, usage: Any) -> None:
        # message_delta counts are cumulative and optional: overwrite only what is present.
        if not isinstance(usage, dict):
            return
        self._usage_seen = True
        value = usage.get("input_tokens")
        if value is not None:
            self._input = int(value)
        value = usage.get("cache_creation_input_tokens")
        if value is not None:
            self._cache_write = int(value)
        value = usage.get("cache_read_input_tokens")
        if value is not None:
            self._cache_read = int(value)
        value = usage.get("output_tokens")
        if value is not None:
            self._output = int(value)

    def feed(self, event: str | None, data: str) -> list[StreamEvent]:
        if self.done:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.StreamBroken(
                f"upstream sent a stream event that is not JSON: {data[:120]!r}"
            ) from exc
        if not isinstance(payload, dict):
            raise errors.StreamBroken(
                f"upstream sent a stream event that is not an object: {data[:120]!r}"
            )
        kind = payload.get("type") or event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            dkind = delta.get("type")
            if dkind == "text_delta":
                text = delta.get("text")
                return [TextDelta(text)] if text else []
            if dkind == "input_json_delta":
                tool = self._tools.get(payload.get("index", -1))
                partial = delta.get("partial_json")
                if tool is None or not partial:
                    return []
                return [ToolCallDelta(tool, partial)]
            return []
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            btype = block.get("type")
            if btype == "text":
                text = block.get("text")
                return [TextDelta(text)] if text else []
            if btype == "tool_use":
                tool = len(self._tools)
                self._tools[payload.get("index", -1)] = tool
                initial = block.get("input")
                # The API sends an empty input here and the arguments as deltas; a non-empty
                # input would be a complete call, so keep it.
                arguments = orjson.dumps(initial).decode() if initial else ""
                return [
                    ToolCallDelta(
                        tool, arguments, id=block.get("id") or "", name=block.get("name") or ""
                    )
                ]
            return []
        if kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self._stop = reason
            self._take_usage(payload.get("usage"))
            return []
        if kind == "message_start":
            self._take_usage((payload.get("message") or {}).get("usage"))
            return []
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            error = payload.get("error")
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            raise errors.StreamBroken(
                f"upstream reported an error mid-stream: {_error_message(error)[:300]}"
            )
        return []

    def finish(self) -> StreamEnd:
        """The stream's `StreamEnd`; `errors.StreamBroken` if no stop reason ever came."""
        if self._stop is None:
            raise errors.StreamBroken("upstream stream ended before it sent a stop_reason")
        usage = (
            Usage(self._input + self._cache_write + self._cache_read, self._output)
            if self._usage_seen
            else None
        )
        return StreamEnd(_FINISH.get(self._stop, "stop"), usage)


class StreamEncoder:
    """Encodes canonical stream events as the SSE bytes of an Anthropic message stream.

    `start` writes ``message_start`` (with ``input_tokens``, the count known before the
    upstream answered). Each `event` writes what the Messages protocol needs around it: a
    ``content_block_start`` when a text block or a new tool call begins, closing the previous
    block first, then a ``text_delta`` or ``input_json_delta``; the `StreamEnd` closes the open
    block and writes ``message_delta`` (stop reason and usage, including the upstream's input
    count when it reported one) and ``message_stop``. Tool-call arguments are forwarded as the
    upstream produced them. If the stream fails midway, send `error`: the ``anthropic`` SDK
    raises on it.
    """

    __slots__ = ("_block", "_id", "_index", "_input_tokens", "_model", "_open_tool", "_tools")

    def __init__(self, *, id: str, model: str, input_tokens: int) -> None:
        self._id = id
        self._model = model
        self._input_tokens = input_tokens
        self._index = -1  # content-block index of the open block, -1 before the first
        self._block: str | None = None  # "text", "tool" or None when no block is open
        self._open_tool: int | None = None
        self._tools: set[int] = set()

    def start(self) -> bytes:
        return _sse(
            b"message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self._id,
                    "type": "message",
                    "role": "assistant",
                    "model": self._model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
                },
            },
        )

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        self._open_tool = None
        return _sse(b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self._index += 1
        self._block = kind
        return out + _sse(
            b"content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _sse(
            b"content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def event(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, TextDelta):
            out = b"" if self._block == "text" else self._open({"type": "text", "text": ""}, "text")
            return out + self._delta({"type": "text_delta", "text": ev.text})
        if isinstance(ev, ToolCallDelta):
            out = b""
            if self._open_tool != ev.index:
                if ev.index in self._tools:
                    # Messages cannot reopen a closed block, so interleaved calls cannot be sent.
                    raise errors.StreamBroken(
                        f"upstream interleaved tool call {ev.index} with other content, which "
                        "an Anthropic stream cannot express"
                    )
                self._tools.add(ev.index)
                out = self._open(
                    {"type": "tool_use", "id": ev.id or "", "name": ev.name or "", "input": {}},
                    "tool",
                )
                self._open_tool = ev.index
            if ev.arguments:
                out += self._delta({"type": "input_json_delta", "partial_json": ev.arguments})
            return out
        usage: dict[str, int] = {"output_tokens": ev.usage.output_tokens if ev.usage else 0}
        if ev.usage is not None and ev.usage.input_tokens != self._input_tokens:
            usage["input_tokens"] = ev.usage.input_tokens
        return (
            self._close()
            + _sse(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _STOP_REASON[ev.finish_reason], "stop_sequence": None},
                    "usage": usage,
                },
            )
            + _MESSAGE_STOP
        )

    def error(self, message: str, type: str) -> bytes:
        return _sse(b"error", error_body(message, type))


def _sse(event: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


_MESSAGE_STOP = _sse(b"message_stop", {"type": "message_stop"})
