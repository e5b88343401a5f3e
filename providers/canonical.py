"""The canonical chat model every wire protocol is translated to and from.

The request layer parses an inbound OpenAI Chat Completions or Anthropic Messages body into a
`ChatRequest`; a provider adapter encodes that request into its own wire protocol, and decodes
the upstream answer back into a `ChatResponse` (or a stream of `StreamEvent`). Because both
sides meet here, an OpenAI-format request can be served by an Anthropic deployment and the
reverse.

Conventions a caller may rely on:

- Values are frozen and slotted; a request is never mutated, only replaced
  (`dataclasses.replace`).
- System prompts are messages with role ``"system"``. Encoders for protocols with a separate
  system field (Anthropic) lift them out, joined by a blank line, in order.
- Tool results are messages with role ``"tool"`` and a ``tool_call_id``. Encoders for protocols
  that carry results inside a user turn (Anthropic) group consecutive tool messages into one.
- `ToolCall.arguments` is JSON text exactly as the model produced it, never re-serialised.
- Finish reasons use OpenAI's vocabulary: ``stop``, ``length``, ``tool_calls``,
  ``content_filter``.
- A stream is zero or more `TextDelta`/`ToolCallDelta` events followed by exactly one
  `StreamEnd`. The first `ToolCallDelta` of a call carries its ``id`` and ``name``; later ones
  for the same ``index`` carry only argument text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
ToolChoiceMode = Literal["auto", "none", "required", "tool"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image, as an ``http(s)://`` URL or a ``data:<media type>;base64,...`` URL."""

    url: str


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """JSON text of the arguments, as produced by the model."""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    """Calls the assistant made in this turn (role ``assistant`` only)."""
    tool_call_id: str | None = None
    """The call this message answers (role ``tool`` only)."""
    is_error: bool = False
    """A tool result that reports a failure (Anthropic's ``is_error``)."""
    name: str | None = None

    @property
    def text(self) -> str:
        """The concatenated text parts of the message."""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """A JSON Schema object for the arguments."""


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None
    """The tool to call, when ``mode == "tool"``."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    """The model name the client asked for: an alias, a tier or a deployment."""
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: Mapping[str, Any] | None = None
    """OpenAI's shape: ``{"type": "json_object"}`` or ``{"type": "json_schema", ...}``."""
    stream: bool = False
    include_usage: bool = False
    """OpenAI's ``stream_options.include_usage``: send a final usage chunk."""
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResponse:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    model: str = ""
    """The upstream model that answered, as the upstream named it."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    finish_reason: FinishReason
    usage: Usage | None = None
    """None when the upstream reported no usage for the stream."""


StreamEvent = TextDelta | ToolCallDelta | StreamEnd
