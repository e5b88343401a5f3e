"""OpenAI Chat Completions, as the simulator speaks it.

Requests: ``model`` and a non-empty ``messages`` array are required; ``tools`` (function tools),
``tool_choice``, ``max_completion_tokens`` (else ``max_tokens``), ``response_format``
(``json_object`` / ``json_schema``), ``stream`` and ``stream_options.include_usage`` are
honoured; anything else is accepted and ignored (one choice is returned whatever ``n`` says).

Responses have the shapes the ``openai`` SDK parses: a ``chat.completion`` object; or
``chat.completion.chunk`` events: a role chunk, one content (or tool-call argument) delta per
token — the first tool-call delta carries the call's id, type and name —, a finish chunk, a
usage chunk with empty ``choices`` when ``include_usage`` was asked, then ``data: [DONE]``.
Errors are ``{"error": {"message", "type", "param", "code"}}``.
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

_ERRORS: Mapping[ErrorKind, tuple[str, str | None, str]] = {
    # kind: (type, code, default message)
    "invalid_request": ("invalid_request_error", None, "Invalid request."),
    "context_length": ("invalid_request_error", "context_length_exceeded", ""),
    "authentication": (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. Use the key this simulated provider's profile requires.",
    ),
    "not_found": ("invalid_request_error", "unknown_url", "Unknown request URL."),
    "method_not_allowed": ("invalid_request_error", "method_not_supported", "Method not allowed."),
    "too_large": ("invalid_request_error", "request_too_large", "Request body too large."),
    "rate_limit": (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (simulated). Please try again later.",
    ),
    "server_error": (
        "server_error",
        None,
        "The server had an error while processing your request (simulated).",
    ),
    "bad_gateway": ("server_error", None, "Bad gateway (simulated)."),
    "unavailable": ("server_error", None, "The server is overloaded or not ready yet (simulated)."),
    "gateway_timeout": ("server_error", None, "Gateway timeout (simulated)."),
    "overloaded": ("server_error", "overloaded", "The server is overloaded (simulated)."),
}

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}


class OpenAIDialect:
    """`providers.sim.dialect.Dialect` for ``/v1/chat/completions``."""

    name = "openai"

    def parse(self, body: Mapping[str, Any], seed: int) -> Prompt:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", "messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(
                    f"messages[{index}] must be an object with a string 'role'",
                    f"messages[{index}]",
                )
        raw_tools = body.get("tools") or []
        if not isinstance(raw_tools, list):
            raise InvalidRequest("'tools' must be an array", "tools")
        tools = _tools(raw_tools)
        json_object, json_schema = _response_format(body.get("response_format"))
        stream = body.get("stream") is True
        options = body.get("stream_options")
        return Prompt(
            model=model,
            input_tokens=count_value_tokens(messages) + count_value_tokens(raw_tools),
            digest=request_digest(body, seed),
            stream=stream,
            include_usage=stream
            and isinstance(options, dict)
            and options.get("include_usage") is True,
            max_tokens=_max_tokens(body),
            tools=tools,
            tool_choice=_tool_choice(body.get("tool_choice"), tools),
            after_tool_result=messages[-1].get("role") in ("tool", "function"),
            json_object=json_object,
            json_schema=json_schema,
        )

    def completion(self, reply: Reply, prompt: Prompt, created: int) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": "call_" + reply.tool_call.id,
                    "type": "function",
                    "function": {
                        "name": reply.tool_call.name,
                        "arguments": reply.tool_call.arguments,
                    },
                }
            ]
        return orjson.dumps(
            {
                "id": "chatcmpl-" + reply.id,
                "object": "chat.completion",
                "created": created,
                "model": prompt.model,
                "system_fingerprint": "fp_sim",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _FINISH[reply.finish],
                    }
                ],
                "usage": _usage(reply),
            }
        )

    def stream(self, reply: Reply, prompt: Prompt, created: int) -> StreamPlan:
        # Every chunk shares the same envelope; only the delta and finish reason change, so
        # the envelope is serialised once and each token costs one small dumps.
        envelope = (
            b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,'
            b'"model":%s,"system_fingerprint":"fp_sim","choices":'
            % (reply.id.encode(), created, orjson.dumps(prompt.model))
        )
        open_delta = envelope + b'[{"index":0,"delta":'
        close_delta = b',"logprobs":null,"finish_reason":null}]}\n\n'
        pieces: list[tuple[bytes, int]] = []
        call = reply.tool_call
        if call is None:
            head = open_delta + b'{"role":"assistant","content":""}' + close_delta
            for text, tokens in token_pieces(reply.text):
                delta = b'{"content":%s}' % orjson.dumps(text)
                pieces.append((open_delta + delta + close_delta, tokens))
        else:
            head = open_delta + b'{"role":"assistant","content":null}' + close_delta
            first = {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_" + call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            pieces.append((open_delta + orjson.dumps(first) + close_delta, 0))
            for text, tokens in token_pieces(call.arguments):
                delta = b'{"tool_calls":[{"index":0,"function":{"arguments":%s}}]}' % orjson.dumps(
                    text
                )
                pieces.append((open_delta + delta + close_delta, tokens))
        tail = (
            open_delta
            + b'{},"logprobs":null,"finish_reason":"%s"}]}\n\n' % _FINISH[reply.finish].encode()
        )
        if prompt.include_usage:
            tail += envelope + b'[],"usage":%s}\n\n' % orjson.dumps(_usage(reply))
        tail += b"data: [DONE]\n\n"
        return StreamPlan(head=head, pieces=pieces, tail=tail)

    def error(self, kind: ErrorKind, message: str | None = None, param: str | None = None) -> bytes:
        type_, code, default = _ERRORS[kind]
        return orjson.dumps(
            {
                "error": {
                    "message": message or default,
                    "type": type_,
                    "param": param,
                    "code": code,
                }
            }
        )

    def context_error(self, tokens: int, window: int) -> bytes:
        return self.error(
            "context_length",
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages.",
            "messages",
        )

    def models(self, names: Sequence[str]) -> bytes:
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "routedeck-sim"}
                    for name in names
                ],
            }
        )


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _tools(raw: list[Any]) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"tools[{index}] must be an object", f"tools[{index}]")
        if item.get("type", "function") != "function":
            continue  # custom and hosted tools are accepted but never called
        function = item.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"tools[{index}].function.name is required", f"tools[{index}].function.name"
            )
        parameters = function.get("parameters")
        tools.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> str:
    if raw is None or raw in ("auto", "required"):
        return "auto"
    if raw == "none":
        return "none"
    if isinstance(raw, dict) and raw.get("type") == "function":
        function = raw.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.function.name is required", "tool_choice")
        if all(tool.name != name for tool in tools):
            raise InvalidRequest(
                f"tool_choice names '{name}', which is not one of the request's tools",
                "tool_choice",
            )
        return name
    if isinstance(raw, dict):
        return "auto"  # e.g. allowed_tools: the simulator calls the first tool
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or a function object", "tool_choice"
    )


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{field}' must be an integer >= 1", field)
        return value
    return None


def _response_format(raw: Any) -> tuple[bool, Mapping[str, Any] | None]:
    if raw is None:
        return False, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be an object",
                "response_format.json_schema.schema",
            )
        return False, schema
    raise InvalidRequest(
        "response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format"
    )
