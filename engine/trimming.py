"""Input caps: trimming a conversation's history to a tier's input budget.

The system prompt is always kept, and so is the newest turn. Older turns are dropped oldest
first, in whole *units*, never splitting an assistant's tool calls from the tool results that
answer them (a unit starts at a user message and runs until the next one). If even the system
prompt and the newest unit are over the cap, nothing is trimmed and `TrimResult.fits` is
False: the caller rejects the request, saying by how much it is over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from providers.canonical import ChatRequest, Message, TextPart


@dataclass(frozen=True, slots=True)
class TrimResult:
    request: ChatRequest
    tokens_before: int
    tokens_after: int
    dropped: tuple[Message, ...]
    fits: bool

    @property
    def trimmed_tokens(self) -> int:
        return self.tokens_before - self.tokens_after


def _units(messages: tuple[Message, ...]) -> list[list[Message]]:
    units: list[list[Message]] = []
    for message in messages:
        if not units or (message.role == "user" and message.tool_call_id is None):
            units.append([message])
        else:
            units[-1].append(message)
    return units


def trim(request: ChatRequest, cap: int, count: Callable[[ChatRequest], int]) -> TrimResult:
    """Drop the oldest units until ``count(request) <= cap``."""
    before = count(request)
    if before <= cap:
        return TrimResult(request, before, before, (), True)
    system = tuple(m for m in request.messages if m.role == "system")
    units = _units(tuple(m for m in request.messages if m.role != "system"))
    dropped: list[Message] = []
    current = request
    tokens = before
    while len(units) > 1 and tokens > cap:
        dropped.extend(units.pop(0))
        current = dataclasses.replace(
            request, messages=system + tuple(m for unit in units for m in unit)
        )
        tokens = count(current)
    if tokens > cap:
        return TrimResult(request, before, before, (), False)
    return TrimResult(current, before, tokens, tuple(dropped), True)


def with_summary(result: TrimResult, summary: str) -> ChatRequest:
    """The trimmed request with the dropped turns replaced by ``summary`` as a system note."""
    note = Message(
        role="system", content=(TextPart(f"Summary of earlier conversation: {summary}"),)
    )
    messages = result.request.messages
    first_other = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    return dataclasses.replace(
        result.request, messages=(*messages[:first_other], note, *messages[first_other:])
    )


def transcript(messages: tuple[Message, ...]) -> str:
    """Dropped turns as plain text, for the summarising model."""
    lines = []
    for m in messages:
        text = m.text
        if m.tool_calls:
            text += " " + "; ".join(f"called {c.name}({c.arguments})" for c in m.tool_calls)
        lines.append(f"{m.role}: {text.strip()}")
    return "\n".join(lines)
