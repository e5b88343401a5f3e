"""Estimating a request's size before it is sent, for context-window routing and rules.

The estimate is about four characters a token over every text the model will read (messages,
tool calls and tool schemas), plus a few tokens of framing per message. It errs high on purpose:
a request that would not fit must not be sent to a window it overflows.
"""

from __future__ import annotations

import orjson

from providers.canonical import ChatRequest, TextPart

_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4


def estimate_input_tokens(request: ChatRequest) -> int:
    chars = 0
    for message in request.messages:
        for part in message.content:
            chars += len(part.text) if isinstance(part, TextPart) else 1024  # an image
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    for tool in request.tools:
        chars += (
            len(tool.name) + len(tool.description or "") + len(orjson.dumps(dict(tool.parameters)))
        )
    return chars // _CHARS_PER_TOKEN + 1 + _PER_MESSAGE * len(request.messages)
