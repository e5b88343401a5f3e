"""What can go wrong talking to an upstream, as types the control layer decides on.

Adapters map every upstream failure (transport errors, HTTP status codes, error bodies and
broken streams) onto exactly one of these; the control layer never looks at strings or raw
status codes. Each class has a short, stable ``cause`` used in logs, metrics and headers.

    ProviderError                 any upstream failure
    ├── ConnectFailed             "connect"        no connection, or it was reset before a response
    ├── ProviderTimeout           "timeout"        connect, first-token or total deadline passed
    ├── RateLimited               "429"            HTTP 429; ``retry_after`` seconds when sent
    ├── Overloaded                "overloaded"     HTTP 529, or a 503 whose body says overloaded
    ├── ServerError               "5xx"            any other 5xx
    ├── StreamBroken              "stream"         the stream failed after it had started
    ├── ContextTooLong            "context_length" the prompt does not fit the model's window
    ├── BadRequest                "bad_request"    any other 4xx the upstream blamed on the request
    └── AuthFailed                "auth"           HTTP 401/403: key missing, wrong or not allowed

``retryable`` says whether the same request could succeed elsewhere or later: true for the first
six, false for the last three (a bad request or a bad key fails everywhere; a context-length
error can only succeed on a larger window, which the routing layer decides).

`InvalidRequest` is not an upstream failure: the wire codecs raise it while parsing an inbound
body that is malformed, misses a field or uses a parameter routedeck does not support. Its
message says what is wrong and what to do; ``param`` names the offending field.
"""

from __future__ import annotations


class ProviderError(Exception):
    cause = "error"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ConnectFailed(ProviderError):
    cause = "connect"
    retryable = True


class ProviderTimeout(ProviderError):
    cause = "timeout"
    retryable = True

    def __init__(self, message: str, *, phase: str = "total", status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.phase = phase
        """``connect``, ``read`` (between bytes), ``first_token`` or ``total``."""


class RateLimited(ProviderError):
    cause = "429"
    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Overloaded(ProviderError):
    cause = "overloaded"
    retryable = True


class ServerError(ProviderError):
    cause = "5xx"
    retryable = True


class StreamBroken(ProviderError):
    cause = "stream"
    retryable = True


class ContextTooLong(ProviderError):
    cause = "context_length"


class BadRequest(ProviderError):
    cause = "bad_request"


class AuthFailed(ProviderError):
    cause = "auth"


class InvalidRequest(Exception):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
