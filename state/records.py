"""Rows the engine writes to the request log: one per request, one per upstream attempt.

Times are Unix seconds (float); durations are milliseconds. A field that did not happen
(no first token, no cost because the price is unknown) is None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    request_id: str
    attempt: int
    """1-based position in the request's attempt sequence."""
    started_at: float
    deployment: str
    provider: str
    model: str
    """The upstream model id sent to the provider."""
    outcome: str
    """``ok`` or the failure's cause (``timeout``, ``429``, ``5xx``, ``connect``, ...)."""
    http_status: int | None
    latency_ms: float
    ttft_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    error: str | None = None
    """The failure's message, with secrets already removed."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    started_at: float
    tenant: str
    api: str
    """The inbound API: ``openai`` or ``anthropic``."""
    model_requested: str
    tier: str | None
    tier_reason: str | None
    arm: str
    deployment: str | None
    """The deployment that served the request, or None when every attempt failed."""
    provider: str | None
    stream: bool
    status: int
    """The HTTP status the client received."""
    outcome: str
    """``ok`` or the cause of the final failure."""
    attempts: int
    fallback: bool
    latency_ms: float
    ttft_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    cache: str
    """``miss``, ``hit`` or ``bypass``."""
    error: str | None = None
    task: str | None = None
    """The task type the client named (``x-routedeck-task`` or ``metadata.task``), if any."""
    trimmed_tokens: int | None = None
    """Input tokens removed by the tier's input cap, when it trimmed the conversation."""
    saved_usd: float | None = None
    """For a cache hit: what the answer cost when it was first made."""
    release: int | None = None
    """The release that routed the request (``arm`` says whether it was the candidate)."""
