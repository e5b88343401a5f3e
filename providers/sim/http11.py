"""A small HTTP/1.1 server on ``httptools``, with the socket control chaos needs.

One `HttpConnection` per TCP connection parses requests with ``httptools`` and hands each
complete `Request` to an async handler, one at a time (pipelined requests wait their turn, and
reading pauses when too many are queued). The handler answers through the connection:
`HttpConnection.respond` (a ``Content-Length`` body), `start_stream` / `send_chunk` /
`end_stream` (chunked ``Transfer-Encoding``), or one of the failure modes: `reset` (TCP RST
before any byte), `respond_broken` / `close` (a body cut short), `hold_until_closed` (hold
the request until the client leaves).

Guarantees a handler may rely on:

- a request's body is at most ``max_body_bytes``; a larger one is read and discarded and the
  request arrives with ``too_large`` set and an empty body (the handler answers 413, and the
  connection closes after it);
- headers larger than ``max_header_bytes`` or unparsable requests get a 431 / 400 and a close,
  without reaching the handler;
- when the client disconnects, the running handler task is cancelled, so nothing outlives its
  connection;
- a handler that returns without answering, or raises before answering, gets a 500 sent for
  it; one that raises partway through a response has its connection closed.

Keep-alive follows the request (HTTP/1.1 default, ``Connection: close``, HTTP/1.0); idle
keep-alive connections close after ``keep_alive_timeout`` seconds. `shutdown` closes an idle
connection at once and a busy one after its current response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

log = logging.getLogger(__name__)

Handler = Callable[["Request", "HttpConnection"], Awaitable[None]]
Headers = Sequence[tuple[str, str]]

_MAX_QUEUED = 16
_LINGER_RESET = struct.pack("ii", 1, 0)
_REASONS = {529: "Overloaded"}


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = _REASONS.get(status, "Unknown")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())


_STATUS_LINES = {s: _status_line(s) for s in (*(int(s) for s in HTTPStatus), *_REASONS)}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; header names are lower-case, the last of duplicates wins."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool
    http11: bool
    too_large: bool = False


class HttpConnection(asyncio.Protocol):
    """One client connection: parser callbacks, the request queue and the response writers."""

    def __init__(
        self,
        handler: Handler,
        registry: set[HttpConnection],
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        keep_alive_timeout: float,
    ) -> None:
        self._handler = handler
        self._registry = registry
        self._max_body = max_body_bytes
        self._max_header = max_header_bytes
        self._keep_alive_timeout = keep_alive_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._write_ready: asyncio.Future[None] | None = None
        self._shutting_down = False
        self._parked = False
        self._eof = False
        # Per-message parser state.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._too_large = False
        self._head_overflow = False
        # Per-response state.
        self._keep_alive = True
        self._chunked = True
        self._responded = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its interface.
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError:
            if self._head_overflow:
                self._reject(431, b"request headers too large")
            else:
                self._reject(400, b"malformed HTTP request")

    def eof_received(self) -> bool | None:
        # EOF is how a client that gave up shows itself, so a held request ends here. Requests
        # already received still get their responses (the client may only have half-closed),
        # and the connection closes after the last.
        self._eof = True
        if self._task is None or self._parked:
            return None
        self._wind_down()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        if not self._closed.done():
            self._closed.set_result(None)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._queue.clear()

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._head_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            self._too_large = True
        elif self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive() and not self._too_large,
            http11=self._parser.get_http_version() == "1.1",
            too_large=self._too_large,
        )
        self._body = []
        if self._task is None:
            self._task = self._loop.create_task(self._serve(request))
            self._task.add_done_callback(_log_crash)
        else:
            self._queue.append(request)
            if len(self._queue) >= _MAX_QUEUED and self._transport is not None:
                self._transport.pause_reading()
                self._reading_paused = True

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_header:
            self._head_overflow = True
            # Raising from a callback makes httptools stop parsing with HttpParserError.
            raise ValueError("request head too large")

    # -- request loop ----------------------------------------------------------------------

    async def _serve(self, request: Request) -> None:
        try:
            while True:
                self._keep_alive = request.keep_alive and not (
                    self._shutting_down and not self._queue
                )
                self._chunked = request.http11
                self._responded = False
                try:
                    await self._handler(request, self)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("sim handler failed on %s %s", request.method, request.path)
                    if self._responded:
                        # A response was under way; its framing can no longer be trusted.
                        self.close()
                if self.closed:
                    return
                if not self._responded:
                    self._keep_alive = False
                    self.respond(500, b'{"error":{"message":"the simulator failed to answer"}}')
                    return
                if not self._queue or self.closed:
                    break
                request = self._queue.popleft()
                if self._reading_paused and self._transport is not None:
                    self._transport.resume_reading()
                    self._reading_paused = False
        finally:
            self._task = None
        if self._shutting_down:
            self.close()
        else:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._keep_alive_timeout > 0:
            self._idle_timer = self._loop.call_later(self._keep_alive_timeout, self._idle_close)

    def _idle_close(self) -> None:
        if self._task is None:
            self.close()

    def _reject(self, status: int, message: bytes) -> None:
        """Answer a request the parser refused, then close; the handler never sees it."""
        if self._transport is None or self._transport.is_closing():
            return
        if self._task is not None:
            # A request is being answered: let it finish, then close instead of reading on.
            self._wind_down()
            return
        body = b'{"type":"error","error":{"type":"invalid_request_error","message":"%s"}}' % (
            message
        )
        self._keep_alive = False
        self._chunked = True
        self.respond(status, body)

    # -- what a handler may call -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is gone or going (no more bytes can be sent)."""
        return self._transport is None or self._transport.is_closing()

    @property
    def peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Headers = (),
    ) -> None:
        """Send a complete response with a ``Content-Length`` body."""
        self._responded = True
        if self.closed:
            return
        assert self._transport is not None
        self._transport.write(self._head(status, content_type, headers, len(body)) + body)
        if not self._keep_alive:
            self._transport.close()

    def respond_broken(
        self,
        status: int,
        body: bytes,
        sent: int,
        *,
        content_type: str = "application/json",
        headers: Headers = (),
    ) -> None:
        """Announce the full ``Content-Length`` but send only ``sent`` bytes, then close."""
        self._responded = True
        if self.closed:
            return
        assert self._transport is not None
        self._transport.write(self._head(status, content_type, headers, len(body)) + body[:sent])
        self._transport.close()

    def start_stream(
        self,
        status: int,
        first: bytes = b"",
        *,
        content_type: str = "text/event-stream",
        headers: Headers = (),
    ) -> None:
        """Send the head of a chunked response, and ``first`` as its first chunk if given.

        To an HTTP/1.0 client the body is sent unframed and the connection closes after it.
        """
        self._responded = True
        if not self._chunked:
            self._keep_alive = False
        if self.closed:
            return
        assert self._transport is not None
        head = self._head(status, content_type, headers, None)
        self._transport.write(head + self._frame(first) if first else head)

    def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a streamed body (an empty ``data`` sends nothing)."""
        if data and not self.closed:
            assert self._transport is not None
            self._transport.write(self._frame(data))

    def end_stream(self, last: bytes = b"") -> None:
        """Send ``last`` as a final chunk and the terminating zero-length chunk."""
        if self.closed:
            return
        assert self._transport is not None
        tail = (self._frame(last) if last else b"") + (b"0\r\n\r\n" if self._chunked else b"")
        if tail:
            self._transport.write(tail)
        if not self._keep_alive:
            self._transport.close()

    async def drain(self) -> None:
        """Wait until the client has read enough that writing more is reasonable."""
        waiter = self._write_ready
        if waiter is not None and not waiter.done():
            await waiter

    def reset(self) -> None:
        """Reset the connection: an RST, not a FIN, and nothing of a response."""
        self._responded = True
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._transport.abort()

    def close(self) -> None:
        """Close after the bytes already written have been sent (a FIN)."""
        self._responded = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent bytes."""
        if self._transport is not None:
            self._transport.abort()

    async def hold_until_closed(self) -> None:
        """Hold the request, unanswered, until the client disconnects or the server stops."""
        self._responded = True
        self._parked = True
        if self._eof:
            self.close()
        await asyncio.shield(self._closed)

    # -- server lifecycle ------------------------------------------------------------------

    @property
    def lost(self) -> asyncio.Future[None]:
        """Resolved once the connection is gone."""
        return self._closed

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task serving this connection's current request, if one is running."""
        return self._task

    def shutdown(self) -> None:
        """Close when idle: at once if nothing is running, else after the requests received.

        A parked request is dropped at once: it would otherwise wait for its client forever.
        """
        self._wind_down()
        if self._task is None or self._parked:
            self.close()

    def _wind_down(self) -> None:
        """Answer what has been received, then close: the last response says so."""
        self._shutting_down = True
        if not self._queue:
            self._keep_alive = False

    # -- framing ---------------------------------------------------------------------------

    def _head(self, status: int, content_type: str, headers: Headers, length: int | None) -> bytes:
        parts = [
            _STATUS_LINES.get(status) or _status_line(status),
            b"server: routedeck-sim\r\ncontent-type: ",
            content_type.encode("latin-1"),
            b"\r\n",
        ]
        for name, value in headers:
            parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif self._chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self._keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _frame(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sim connection task crashed", exc_info=task.exception())
