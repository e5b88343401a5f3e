"""A small asyncio HTTP/1.1 client for the one call routedeck makes upstream.

A `Pool` talks to one origin (scheme, host, port). ``await pool.post(...)`` sends a POST and
returns the whole `Response`; ``await pool.stream(...)`` returns a `StreamResponse` once the
status and headers arrived, whose body is read by iterating it. Nothing else is supported: no
redirects, cookies, proxies, compression, HTTP/2 or other methods.

What a caller may rely on:

- Bodies framed by ``Content-Length``, chunked transfer encoding or the connection closing are
  all read; 1xx responses before the real one are skipped.
- Connections are kept alive and reused most-recent-first; one that the server closed, that
  answered ``Connection: close`` or HTTP/1.0, that sat idle ``idle_timeout_s`` or longer, or
  whose response was not read to the end is never reused. At most ``max_connections`` are open;
  further requests queue in arrival order.
- ``Timeouts.connect`` bounds getting a connection, including the wait for a free one;
  ``Timeouts.read`` bounds the wait for the response head and each gap between body bytes.
  A timeout closes the connection.
- Every failure is an `UpstreamError` whose message is one line naming ``host:port`` and never
  contains a header value. A request whose reused connection turns out to have been closed by
  the server before answering is retried once, on a new connection (see `Pool.post`).
- A cancelled caller closes its connection; the pool's counts stay exact.

Errors::

    UpstreamError        any failure, including use of a closed pool
    ├── ConnectError     refused, DNS failure, TLS failure, closed or reset before any response
    ├── ConnectTimeout   no connection within the connect timeout
    ├── ReadTimeout      no (more) response bytes within the read timeout
    └── ProtocolError    a malformed response, or the connection closed mid-body
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Pool",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "StreamResponse",
    "Timeouts",
    "UpstreamError",
]

# Bytes are read into one buffer per pool and parsed at once (httptools copies what it keeps),
# which spares asyncio's per-read allocation of a fresh 256 KiB bytes object.
_READ_SIZE = 64 * 1024

# A stream's unread body is bounded: reading from the socket pauses above the high-water mark
# and resumes once the consumer has taken what was buffered.
_HIGH_WATER = 256 * 1024

# What a connection is waiting for before it wakes its caller.
_WANT_HEAD = 0
_WANT_DATA = 1
_WANT_END = 2

# Headers the client writes itself; a caller sending them would corrupt the framing.
_RESERVED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_USER_AGENT = b"User-Agent: routedeck\r\n"
_CONTENT_TYPE = b"Content-Type: application/json\r\n"
_MAX_CACHED_PATHS = 64


class UpstreamError(Exception):
    """Talking to the upstream failed; ``str()`` is one line naming ``host:port``."""


class ConnectError(UpstreamError):
    """No usable connection: refused, DNS or TLS failure, closed or reset before a response."""


class ConnectTimeout(UpstreamError):
    """No connection within the connect timeout (including the wait for a free one)."""


class ReadTimeout(UpstreamError):
    """No response bytes arrived within the read timeout."""


class ProtocolError(UpstreamError):
    """The response was malformed, or the connection closed before its end."""


class _ClosedBeforeResponse(ConnectError):
    """A reused connection was closed by the server before any byte of a response."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: ``connect`` to get a connection, ``read`` for each wait on response bytes."""

    connect: float
    read: float


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response; header names are lower-case, the last of duplicates wins."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Headers(Mapping[str, str]):
    """Response headers, decoded on first use: the success path never looks at them."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = {
                name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self._raw
            }
        return decoded

    def __getitem__(self, name: str) -> str:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection: parser callbacks, read timer, and one exchange at a time.

    The pool owns the bookkeeping; the connection reports to it exactly once, through
    `Pool._forget`, when it closes.
    """

    __slots__ = (
        "_active",
        "_body",
        "_buffered",
        "_complete",
        "_deadline",
        "_eof",
        "_error",
        "_got_bytes",
        "_head_done",
        "_keep_alive",
        "_loop",
        "_lost_waiter",
        "_parser",
        "_paused",
        "_pool",
        "_raw_headers",
        "_read_timeout",
        "_streaming",
        "_timer",
        "_timer_at",
        "_transport",
        "_waiter",
        "_want",
        "counted",
        "headers",
        "idle_since",
        "lost",
        "reused",
        "status",
    )

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._lost_waiter: asyncio.Future[None] | None = None
        self.counted = True  # holds one of the pool's slots until `Pool._forget`
        self.lost = False
        self.reused = False
        self.idle_since = 0.0
        self._eof = False
        self._active = False
        self._streaming = False
        self._got_bytes = False
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._error: UpstreamError | None = None
        self._paused = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._buffered = 0
        self.status = 0
        self.headers = _Headers([])
        self._waiter: asyncio.Future[None] | None = None
        self._want = _WANT_END
        self._read_timeout = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its interface.
        self._transport = cast(asyncio.Transport, transport)
        if not self.counted:
            # Given up on (cancelled, timed out, pool closed) while connecting.
            self._transport.abort()
            return
        self._pool._opened += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._pool._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if not self._active:
            # Nobody asked for these bytes: the connection's framing can no longer be trusted.
            self.close()
            return
        self._got_bytes = True
        self._deadline = self._loop.time() + self._read_timeout
        try:
            self._parser.feed_data(self._pool._read_buffer[:nbytes])
        except httptools.HttpParserUpgrade:
            self.fail(ProtocolError(f"{self._pool.origin}: the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self._complete:
                # Bytes after a complete response: keep the answer, drop the connection.
                self._keep_alive = False
                self.close()
            else:
                self.fail(ProtocolError(f"{self._pool.origin}: malformed response ({exc})"))

    def eof_received(self) -> bool | None:
        self._eof = True
        if not self._active:
            # The server closed an idle keep-alive connection: give its slot back now.
            self.close()
        return None  # let the transport close; `connection_lost` settles an open exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._active and not self._complete and self._error is None:
            origin = self._pool.origin
            detail = f"{type(exc).__name__}: {exc}" if exc is not None else "EOF"
            if self._head_done and exc is None and self._until_eof():
                # A body without Content-Length or chunking ends when the connection does.
                self._complete = True
                self._keep_alive = False
            elif not self._got_bytes:
                kind = _ClosedBeforeResponse if self.reused else ConnectError
                self._error = kind(f"{origin}: the connection closed before a response ({detail})")
            else:
                self._error = ProtocolError(
                    f"{origin}: the connection closed before the response ended ({detail})"
                )
            self._wake()
        self._pool._forget(self)
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # Raising stops the parser; `buffer_updated` sees the error after a complete answer.
            raise ValueError("a second response without a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        raw = self._raw_headers
        status = self._parser.get_status_code()
        if status < 200:
            # An informational response (100 Continue, 103 Early Hints): the real one follows.
            raw.clear()
            return
        self.status = status
        self.headers = _Headers(raw)
        self._raw_headers = []  # trailers of a chunked body land here, unused
        self._head_done = True
        if self._want == _WANT_HEAD:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if self._streaming:
            self._buffered += len(body)
            if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
            if self._want == _WANT_DATA:
                self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an informational response
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    def _until_eof(self) -> bool:
        """Whether the body is delimited by the connection closing (no length, no chunking)."""
        return "content-length" not in self.headers and "transfer-encoding" not in self.headers

    # -- one exchange ----------------------------------------------------------------------

    def send(self, data: bytes, read_timeout: float, streaming: bool) -> None:
        """Start an exchange: reset the response state and write the request."""
        self._active = True
        self._streaming = streaming
        self._got_bytes = False
        self._head_done = False
        self._complete = False
        self._error = None
        self._raw_headers = []
        self._body = []
        self._buffered = 0
        self._read_timeout = read_timeout
        if self.lost or self._transport is None or self._transport.is_closing():
            # Closed between being handed out and now; nothing was sent.
            kind = _ClosedBeforeResponse if self.reused else ConnectError
            self._error = kind(f"{self._pool.origin}: the connection closed before the request")
            return
        self._transport.write(data)

    def wait(self, want: int) -> asyncio.Future[None]:
        """A future resolved when ``want`` happened, an error was recorded, or the end came."""
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._want = want
        deadline = loop.time() + self._read_timeout
        self._deadline = deadline
        # One timer per connection, moved lazily: arrivals only push `_deadline` forward and the
        # timer re-arms itself when it fires early, so a busy stream costs no timer churn.
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody is waiting; the next wait arms a new timer
        if self._deadline > self._timer_at:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        what = "more response bytes" if self._got_bytes else "response"
        self.fail(
            ReadTimeout(
                f"{self._pool.origin}: no {what} within the read timeout ({self._read_timeout:g}s)"
            )
        )

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        """The buffered body bytes, which the caller now owns."""
        body = self._body
        chunk = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the connection may carry another."""
        return (
            self._complete
            and self._keep_alive
            and self._error is None
            and not self.lost
            and not self._eof
            and self._transport is not None
            and not self._transport.is_closing()
        )

    def fail(self, error: UpstreamError) -> None:
        """Record ``error`` for the waiting caller and close the connection."""
        if self._error is None:
            self._error = error
        self._wake()
        self.close()

    def close(self) -> None:
        """Drop the connection (unsent and unread bytes are worthless) and free its slot."""
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self.lost:
            self._transport.abort()
        self._pool._forget(self)

    def lost_future(self) -> asyncio.Future[None]:
        if self._lost_waiter is None:
            self._lost_waiter = self._loop.create_future()
            if self.lost:
                self._lost_waiter.set_result(None)
        return self._lost_waiter


class StreamResponse:
    """A response whose status and headers arrived; iterate it for the body.

    Each chunk is what arrived since the previous one (de-chunked, possibly several network
    reads joined); each wait for one is bounded by ``Timeouts.read``. Reading to the end gives
    the connection back to the pool. Always `aclose` it (it is idempotent and never waits, so
    it is safe in a ``finally`` after cancellation): a connection whose body was not read to
    the end is closed, not reused. A stream dropped without either holds its connection, and
    a slot of the pool, until the server closes it.
    """

    __slots__ = ("_conn", "_state", "headers", "status")

    _OPEN = 0
    _ENDED = 1
    _CLOSED = 2

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._state = self._OPEN
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    def __aiter__(self) -> StreamResponse:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if self._state != self._OPEN:
            if self._state == self._ENDED:
                raise StopAsyncIteration
            raise UpstreamError(f"{conn._pool.origin}: the stream was closed before its end")
        try:
            while True:
                if conn._body:
                    return conn.take()
                if conn._complete:
                    self._state = self._ENDED
                    conn._pool._release(conn)
                    raise StopAsyncIteration
                if conn._error is not None:
                    raise conn._error
                await conn.wait(_WANT_DATA)
        except StopAsyncIteration:
            raise
        except BaseException:
            # An error, or the caller was cancelled mid-wait: the body can no longer be read.
            self._state = self._CLOSED
            conn.close()
            raise

    async def aread(self) -> bytes:
        """The rest of the body."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body ended cleanly, else closed."""
        if self._state != self._OPEN:
            return
        self._state = self._CLOSED
        conn = self._conn
        if conn._complete and conn._error is None:
            # The whole response is in memory; unread bytes do not hold the connection.
            conn._pool._release(conn)
        else:
            conn.close()


class Pool:
    """Keep-alive connections to one origin, and the POSTs made on them; see the module doc.

    ``base_url`` is ``http://`` or ``https://`` with an optional path prefix, e.g.
    ``https://api.openai.com/v1``: ``post("/chat/completions", ...)`` targets
    ``/v1/chat/completions``. For ``https`` the connection uses ``ssl_context`` (as given) or
    a default verifying context offering ALPN ``http/1.1``. ``idle_timeout_s=0`` never reuses
    a connection. ``async with Pool(...) as pool:`` closes it on exit. A pool belongs to the
    event loop it is first used on.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 200,
        idle_timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        host = parts.hostname
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        netloc = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        self.origin = f"{netloc}:{port}"
        """``host:port``, as error messages name the upstream."""
        self._host = host
        self._port = port
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            if ssl_context is None:
                ssl_context = ssl.create_default_context()
                ssl_context.set_alpn_protocols(["http/1.1"])
            self._ssl = ssl_context
        self._max = max_connections
        self._idle_timeout = idle_timeout_s
        host_header = netloc if port == default_port else self.origin
        self._base_path = parts.path.rstrip("/").encode("ascii")
        self._head_rest = b" HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n" % (
            host_header.encode("ascii")
        )
        self._starts: dict[str, bytes] = {}
        self._read_buffer = memoryview(bytearray(_READ_SIZE))
        # Idle connections, most recently released last: a dict is an ordered set with O(1)
        # LIFO `popitem`, O(1) removal of one the server closed, and the oldest first.
        self._idle: dict[_Connection, None] = {}
        self._conns: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._slots = 0  # connections open, opening, or granted to a waiter about to open one
        self._closed = False
        self._opened = 0
        self._reused = 0
        self._closed_count = 0

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- requests --------------------------------------------------------------------------

    async def post(
        self, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]], timeouts: Timeouts
    ) -> Response:
        """POST ``body`` to the base path + ``path`` and read the whole response."""
        data = self._request(path, body, headers)
        conn = self._idle_connection() or await self._acquire(timeouts.connect, fresh=False)
        try:
            return await self._exchange(conn, data, timeouts.read)
        except _ClosedBeforeResponse:
            # The server closed a kept-alive connection as we reused it: it sent nothing, and a
            # server closing an idle connection does so without reading what we sent, so one
            # retry on a new connection is safe. (A server that crashed after reading the
            # request looks the same; for an LLM call that costs at most a duplicate answer.)
            pass
        conn = await self._acquire(timeouts.connect, fresh=True)
        return await self._exchange(conn, data, timeouts.read)

    async def stream(
        self, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]], timeouts: Timeouts
    ) -> StreamResponse:
        """POST ``body`` and return once the status and headers arrived; see `StreamResponse`."""
        data = self._request(path, body, headers)
        conn = self._idle_connection() or await self._acquire(timeouts.connect, fresh=False)
        try:
            return await self._start_stream(conn, data, timeouts.read)
        except _ClosedBeforeResponse:
            pass  # the same single safe retry as in `post`
        conn = await self._acquire(timeouts.connect, fresh=True)
        return await self._start_stream(conn, data, timeouts.read)

    async def aclose(self) -> None:
        """Close every connection and fail queued requests; later calls raise `UpstreamError`."""
        self._closed = True
        error = UpstreamError(f"{self.origin}: the connection pool is closed")
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        conns = list(self._conns)
        lost = [conn.lost_future() for conn in conns if conn._transport is not None]
        for conn in conns:
            conn.fail(error)
        if lost:
            # Wait for the transports to be gone, so none outlives the pool.
            await asyncio.wait(lost)

    @property
    def stats(self) -> dict[str, int]:
        """Connections ``opened``, ``reused`` (requests on an existing connection), now
        ``idle`` and ``in_use`` (busy or opening), and ``closed``."""
        idle = len(self._idle)
        return {
            "opened": self._opened,
            "reused": self._reused,
            "idle": idle,
            "in_use": self._slots - idle,
            "closed": self._closed_count,
        }

    # -- exchanges -------------------------------------------------------------------------

    async def _exchange(self, conn: _Connection, data: bytes, read_timeout: float) -> Response:
        try:
            conn.send(data, read_timeout, streaming=False)
            while not conn._complete:
                if conn._error is not None:
                    raise conn._error
                await conn.wait(_WANT_END)
        except BaseException:
            conn.close()
            raise
        body = conn._body
        response = Response(
            conn.status, conn.headers, body[0] if len(body) == 1 else b"".join(body)
        )
        self._release(conn)
        return response

    async def _start_stream(
        self, conn: _Connection, data: bytes, read_timeout: float
    ) -> StreamResponse:
        try:
            conn.send(data, read_timeout, streaming=True)
            while not conn._head_done:
                if conn._error is not None:
                    raise conn._error
                await conn.wait(_WANT_HEAD)
        except BaseException:
            conn.close()
            raise
        return StreamResponse(conn)

    def _request(self, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        start = self._starts.get(path)
        if start is None:
            start = b"POST " + self._base_path + path.encode("ascii") + self._head_rest
            if len(self._starts) < _MAX_CACHED_PATHS:
                self._starts[path] = start
        parts = [start]
        user_agent = content_type = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                content_type = True
            elif lowered == b"user-agent":
                user_agent = True
            elif lowered in _RESERVED:
                raise ValueError(f"the {lowered.decode('latin-1')} header is set by the client")
            parts += (name, b": ", value, b"\r\n")
        if not user_agent:
            parts.append(_USER_AGENT)
        if not content_type:
            parts.append(_CONTENT_TYPE)
        parts += (b"Content-Length: %d\r\n\r\n" % len(body), body)
        return b"".join(parts)

    # -- connections -----------------------------------------------------------------------

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection that is still good, if any (no waiting)."""
        idle = self._idle
        if not idle or self._closed:
            return None
        now = next(iter(idle))._loop.time()
        while idle:
            conn = idle.popitem()[0]
            transport = conn._transport
            if conn.lost or conn._eof or transport is None or transport.is_closing():
                conn.close()
                continue
            if now - conn.idle_since >= self._idle_timeout:
                # Last in, first out: every other idle connection is older still.
                conn.close()
                for other in list(idle):
                    other.close()
                return None
            conn.reused = True
            self._reused += 1
            return conn
        return None

    async def _acquire(self, connect_timeout: float, *, fresh: bool) -> _Connection:
        """A new connection, or a released one after queueing; `_idle_connection` goes first."""
        if self._closed:
            raise UpstreamError(f"{self.origin}: the connection pool is closed")
        loop = asyncio.get_running_loop()
        idle = self._idle
        if idle and self._slots >= self._max:
            # A new connection is wanted and idle ones hold every slot: retire the oldest.
            next(iter(idle)).close()
        deadline = loop.time() + connect_timeout
        if self._slots < self._max:
            self._slots += 1
            return await self._connect(loop, deadline)
        return await self._queue(loop, deadline)

    async def _queue(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """Wait for a released connection, or for a free slot to open one in."""
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                granted = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection or slot just as we gave up: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._slots -= 1
                    self._grant_slot()
                else:
                    self._release(handed)
            else:
                waiter.cancel()  # `_release` and `_grant_slot` skip it
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(
                    f"{self.origin}: no free connection within the connect timeout "
                    f"({self._max} in use)"
                ) from None
            raise
        if granted is not None:
            return granted
        return await self._connect(loop, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """Open a connection in a slot already counted in `_slots`."""
        conn = _Connection(self, loop)
        self._conns.add(conn)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            conn.close()
            raise ConnectTimeout(
                f"{self.origin}: no connection within the connect timeout"
            ) from None
        except ssl.SSLError as exc:
            conn.close()
            raise ConnectError(f"{self.origin}: TLS handshake failed ({exc})") from exc
        except OSError as exc:
            conn.close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectError(
                f"{self.origin}: connection failed ({type(exc).__name__}: {reason})"
            ) from exc
        except BaseException:
            conn.close()
            raise
        if self._ssl is not None:
            ssl_object = cast(asyncio.Transport, conn._transport).get_extra_info("ssl_object")
            protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if protocol not in (None, "http/1.1"):
                conn.close()
                raise ConnectError(f"{self.origin}: the server chose ALPN {protocol!r}")
        if self._closed:
            conn.close()
            raise UpstreamError(f"{self.origin}: the connection pool is closed")
        return conn

    def _release(self, conn: _Connection) -> None:
        """Take back a connection whose exchange is over: reuse it, or close it."""
        conn._active = False
        if self._closed or not conn.reusable():
            conn.close()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                conn.reused = True
                self._reused += 1
                waiter.set_result(conn)
                return
        idle = self._idle
        now = conn._loop.time()
        conn.idle_since = now
        idle[conn] = None
        # Reap from the old end, O(1) per release: LIFO reuse leaves surplus connections there.
        while True:
            oldest = next(iter(idle))
            if oldest is conn or now - oldest.idle_since < self._idle_timeout:
                break
            oldest.close()

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: free its slot, once, and let a queued request open one."""
        if not conn.counted:
            return
        conn.counted = False
        self._conns.discard(conn)
        self._idle.pop(conn, None)
        self._slots -= 1
        if conn._transport is not None:
            self._closed_count += 1
        self._grant_slot()

    def _grant_slot(self) -> None:
        if self._closed:
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self._slots += 1
                waiter.set_result(None)
                return
