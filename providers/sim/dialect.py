"""The seam between the HTTP server and the two wire protocols it speaks.

A `Dialect` turns a raw JSON request body into a protocol-neutral `Prompt`, and a `Reply` or an
error back into bytes in exactly the shape its official SDK parses. `openai_dialect` and
`anthropic_dialect` implement it; the server never looks at protocol-specific fields itself.

Errors are named by `ErrorKind`; `STATUS` gives each kind's HTTP status, the same in both
protocols, and each dialect renders the kind in its own error shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from providers.sim.replies import Prompt, Reply

ErrorKind = Literal[
    "invalid_request",
    "context_length",
    "authentication",
    "not_found",
    "method_not_allowed",
    "too_large",
    "rate_limit",
    "server_error",
    "bad_gateway",
    "unavailable",
    "gateway_timeout",
    "overloaded",
]

STATUS: Mapping[ErrorKind, int] = {
    "invalid_request": 400,
    "context_length": 400,
    "authentication": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "rate_limit": 429,
    "server_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "gateway_timeout": 504,
    "overloaded": 529,
}

# The statuses chaos may inject, and the kind each one is rendered as.
INJECTABLE: Mapping[int, ErrorKind] = {
    429: "rate_limit",
    500: "server_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
    529: "overloaded",
}


class InvalidRequest(Exception):
    """The body is not a request the protocol accepts; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A streamed reply as ready-to-send SSE bytes.

    ``head`` goes out with the first piece; ``pieces`` are paced by their token counts;
    ``tail`` (finish, usage and the terminating event) follows the last piece. A broken stream
    is simulated by sending ``head`` and some ``pieces`` but never ``tail``.
    """

    head: bytes
    pieces: Sequence[tuple[bytes, int]]
    tail: bytes


class Dialect(Protocol):
    """One wire protocol: parse requests, render replies, streams, errors and model lists."""

    name: str

    def parse(self, body: Mapping[str, Any], seed: int) -> Prompt:
        """The neutral prompt of ``body``; raises `InvalidRequest` on a body it rejects."""
        ...

    def completion(self, reply: Reply, prompt: Prompt, created: int) -> bytes:
        """The non-streaming response body."""
        ...

    def stream(self, reply: Reply, prompt: Prompt, created: int) -> StreamPlan:
        """The streaming response, as SSE events."""
        ...

    def error(self, kind: ErrorKind, message: str | None = None, param: str | None = None) -> bytes:
        """An error body in the protocol's shape; ``message`` defaults to a realistic one."""
        ...

    def context_error(self, tokens: int, window: int) -> bytes:
        """The protocol's own "prompt too long" error body."""
        ...

    def models(self, names: Sequence[str]) -> bytes:
        """The body of ``GET /v1/models``."""
        ...
