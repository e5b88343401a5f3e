"""Anthropic Messages, as the simulator speaks it.

Requests: ``model``, ``max_tokens`` (an integer >= 1) and a non-empty ``messages`` array are
required, as in the real API; ``system``, ``tools`` (client tools, those with an
``input_schema``), ``tool_choice`` (``auto`` / ``any`` / ``tool`` / ``none``),
``output_config.format`` (or the older ``output_format``) with a JSON schema, and ``stream`` are
honoured; anything else is accepted and ignored.

Responses have the shapes the ``anthropic`` SDK parses: a ``message`` object; or the event
stream ``message_start`` (with input usage) → ``content_block_start`` → ``ping`` → one
``content_block_delta`` per token (``text_delta``, or ``input_json_delta`` for a tool call) →
``content_block_stop`` → ``message_delta`` (stop reason and output usage) → ``message_stop``.
Errors are ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from providers.sim.dialect import ErrorKind, InvalidRequest, StreamPlan
from providers.sim.replies import (
    Prompt,
    Reply,
    Tool,
    count_value_tokens,
    request_digest,
    token_pieces,
)

_ERRORS: Mapping[ErrorKind, tuple[str, str]] = {
    # kind: (type, default message)
    "invalid_request": ("invalid_request_error", "Invalid request."),
    "context_length": ("invalid_request_error", ""),
    "authentication": ("authentication_error", "invalid x-api-key"),
    "not_found": ("not_found_error", "Not found."),
    "method_not_allowed": ("invalid_request_error", "Method not allowed."),
    "too_large": ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    "rate_limit": ("rate_limit_error", "Rate limit exceeded (simulated)."),
    "server_error": ("api_error", "Internal server error (simulated)."),
    "bad_gateway": ("api_error", "Bad gateway (simulated)."),
    "unavailable": ("api_error", "Service unavailable (simulated)."),
    "gateway_timeout": ("timeout_error", "Request timed out (simulated)."),
    "overloaded": ("overloaded_error", "Overloaded (simulated)."),
}

_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class AnthropicDialect:
    """`providers.sim.dialect.Dialect` for ``/v1/messages``."""

    name = "anthropic"

    def parse(self, body: Mapping[str, Any], seed: int) -> Prompt:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: Field required", "model")
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequest("max_tokens: an integer >= 1 is required", "max_tokens")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages: at least one message is required", "messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise InvalidRequest(
                    f"messages.{index}.role: must be 'user' or 'assistant'",
                    f"messages.{index}.role",
                )
        system = body.get("system")
        raw_tools = body.get("tools") or []
        if not isinstance(raw_tools, list):
            raise InvalidRequest("tools: must be an array", "tools")
        tools = _tools(raw_tools)
        stream = body.get("stream") is True
        return Prompt(
            model=model,
            input_tokens=count_value_tokens(system)
            + count_value_tokens(messages)
            + count_value_tokens(raw_tools),
            digest=request_digest(body, seed),
            stream=stream,
            include_usage=stream,
            max_tokens=max_tokens,
            tools=tools,
            tool_choice=_tool_choice(body.get("tool_choice"), tools),
            after_tool_result=_is_tool_result(messages[-1]),
            json_schema=_json_schema(body),
        )

    def completion(self, reply: Reply, prompt: Prompt, created: int) -> bytes:
        call = reply.tool_call
        content: list[dict[str, Any]]
        if call is None:
            content = [{"type": "text", "text": reply.text}]
        else:
            content = [
                {
                    "type": "tool_use",
                    "id": "toolu_" + call.id,
                    "name": call.name,
                    "input": call.input,
                }
            ]
        return orjson.dumps(
            {
                "id": "msg_" + reply.id,
                "type": "message",
                "role": "assistant",
                "model": prompt.model,
                "content": content,
                "stop_reason": _STOP_REASON[reply.finish],
                "stop_sequence": None,
                "usage": {
                    "input_tokens": reply.input_tokens,
                    "output_tokens": reply.output_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
        )

    def stream(self, reply: Reply, prompt: Prompt, created: int) -> StreamPlan:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_" + reply.id,
                "type": "message",
                "role": "assistant",
                "model": prompt.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": reply.input_tokens,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }
        call = reply.tool_call
        block: dict[str, Any]
        if call is None:
            block = {"type": "text", "text": ""}
            delta_open = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":'
            )
            source = reply.text
        else:
            block = {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": {}}
            delta_open = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"input_json_delta","partial_json":'
            )
            source = call.arguments
        head = (
            _event("message_start", start)
            + _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
            + b'event: ping\ndata: {"type":"ping"}\n\n'
        )
        pieces = [
            (delta_open + orjson.dumps(text) + b"}}\n\n", tokens)
            for text, tokens in token_pieces(source)
        ]
        tail = (
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
            + _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _STOP_REASON[reply.finish], "stop_sequence": None},
                    "usage": {"output_tokens": reply.output_tokens},
                },
            )
            + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
        return StreamPlan(head=head, pieces=pieces, tail=tail)

    def error(self, kind: ErrorKind, message: str | None = None, param: str | None = None) -> bytes:
        type_, default = _ERRORS[kind]
        return orjson.dumps(
            {"type": "error", "error": {"type": type_, "message": message or default}}
        )

    def context_error(self, tokens: int, window: int) -> bytes:
        return self.error(
            "context_length", f"prompt is too long: {tokens} tokens > {window} maximum"
        )

    def models(self, names: Sequence[str]) -> bytes:
        return orjson.dumps(
            {
                "data": [
                    {
                        "type": "model",
                        "id": name,
                        "display_name": name,
                        "created_at": "2025-01-01T00:00:00Z",
                    }
                    for name in names
                ],
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        )


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data))


def _tools(raw: list[Any]) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"tools.{index}.name: Field required", f"tools.{index}.name")
        schema = item.get("input_schema")
        if isinstance(schema, dict):
            tools.append(Tool(item["name"], schema))
        # Server tools (no input_schema) are accepted but never called.
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> str:
    if raw is None:
        return "auto"
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("auto", "any"):
        return "auto"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(raw, dict):
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.name: Field required", "tool_choice.name")
        if all(tool.name != name for tool in tools):
            raise InvalidRequest(
                f"tool_choice.name: '{name}' is not one of the request's tools", "tool_choice.name"
            )
        return name
    raise InvalidRequest(
        "tool_choice.type: must be 'auto', 'any', 'tool' or 'none'", "tool_choice.type"
    )


def _is_tool_result(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return (
        message.get("role") == "user"
        and isinstance(content, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    )


def _json_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    config = body.get("output_config")
    spec = config.get("format") if isinstance(config, dict) else None
    if spec is None:
        spec = body.get("output_format")
    if spec is None:
        return None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict) or spec.get("type") != "json_schema":
        raise InvalidRequest(
            "output_config.format: must be {'type': 'json_schema', 'schema': {...}}",
            "output_config.format",
        )
    return schema
