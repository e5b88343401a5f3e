"""`providers.http1` against a raw loopback server that writes exact bytes, and against the real
simulator: framing, keep-alive and the pool, timeouts, cancellation, backpressure and TLS.

``python -m tests.providers.test_http1`` runs a CPU-per-request comparison with httpx instead
(figures only; nothing here asserts timings).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from providers import http1
from providers.http1 import (
    ConnectError,
    ConnectTimeout,
    Pool,
    ProtocolError,
    ReadTimeout,
    Response,
    Timeouts,
    UpstreamError,
)
from providers.sim import SimServer
from providers.sse import aiter_sse

T = Timeouts(connect=2.0, read=2.0)
BODY = b'{"model":"m","messages":[]}'
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def eventually(check: Callable[[], bool], what: str, within: float = 3.0) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# -- a raw server ----------------------------------------------------------------------------


class Peer:
    """The server side of one accepted connection."""

    def __init__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = server.accepted
        self.requests = 0

    async def request(self) -> bytes | None:
        """The next request (head and body), or None once the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.requests += 1
        self.server.requests.append(head + body)
        return head + body

    async def send(self, *pieces: bytes) -> None:
        """Write each piece, and wait until the client has received it before the next."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await self.server.delivered(len(piece))

    def reset(self) -> None:
        """Drop the connection with a TCP RST."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def until_closed(self) -> None:
        """Wait for the client to close the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.server.client_closed += 1


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A loopback server whose handler writes exact bytes; it counts connections.

    `delivered` waits until the client connection has *received* the bytes sent so far, using a
    probe on the client's ``buffer_updated``: that is how a test gets its chosen read boundaries.
    """

    def __init__(self, handler: Handler, probe: Probe) -> None:
        self.handler = handler
        self.probe = probe
        self.accepted = 0
        self.active = 0
        self.peak = 0
        self.client_closed = 0
        self.requests: list[bytes] = []
        self.sent = 0
        self.peers: list[Peer] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def delivered(self, size: int) -> None:
        self.sent += size
        await self.probe.until(self.sent)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        peer = Peer(self, reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.transport.abort()
            self._tasks.discard(task)


class Probe:
    """Counts the bytes client connections received, and lets a test wait for a total."""

    def __init__(self) -> None:
        self.received = 0
        self.boundaries: list[int] = []
        self._event = asyncio.Event()

    def saw(self, size: int) -> None:
        self.received += size
        self.boundaries.append(self.received)
        self._event.set()

    async def until(self, total: int) -> None:
        async with asyncio.timeout(3):
            while self.received < total:
                self._event.clear()
                await self._event.wait()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    probe = Probe()
    received = http1._Connection.buffer_updated

    def spy(self: http1._Connection, nbytes: int) -> None:
        received(self, nbytes)
        probe.saw(nbytes)

    monkeypatch.setattr(http1._Connection, "buffer_updated", spy)
    return probe


@pytest.fixture
async def serve(probe: Probe) -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(handler: Handler) -> RawServer:
            return await stack.enter_async_context(RawServer(handler, probe))

        yield start


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Pool]]:
    made: list[Pool] = []

    def make(base_url: str, **kwargs: Any) -> Pool:
        pool = Pool(base_url, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.aclose()


def answer(response: bytes) -> Handler:
    """A handler that answers every request on the connection with ``response``."""

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            peer.writer.write(response)

    return handle


def held(peer_started: asyncio.Event | None = None) -> Handler:
    """A handler that reads the request and never answers, until the client leaves."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        if peer_started is not None:
            peer_started.set()
        await peer.until_closed()

    return handle


async def first_chunk_then_held(peer: Peer) -> None:
    """A handler that starts a chunked answer with ``first`` and sends nothing more until the
    client leaves."""
    await peer.request()
    await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await peer.until_closed()


def settled(pool: Pool, *, opened: int, idle: int) -> dict[str, int]:
    """The pool's stats, checked for consistency: nothing in use, opened = idle + closed."""
    stats = pool.stats
    assert stats["in_use"] == 0, stats
    assert stats["opened"] == opened, stats
    assert stats["idle"] == idle, stats
    assert stats["closed"] == opened - idle, stats
    return stats


# -- requests and framing ---------------------------------------------------------------------


async def test_post_sends_the_request_head_and_reads_a_content_length_body(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(
        answer(
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Thing: A\r\nx-thing: B\r\n\r\nhello"
        )
    )
    pool = pools(server.url + "/v1/")
    response = await pool.post(
        "/chat/completions", BODY, [(b"Authorization", b"Bearer k"), (b"x-extra", b"1")], T
    )
    assert response == Response(201, {"content-length": "5", "x-thing": "B"}, b"hello")
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert sorted(lines[1:]) == sorted(
        [
            f"Host: 127.0.0.1:{server.port}".encode(),
            b"Connection: keep-alive",
            b"Authorization: Bearer k",
            b"x-extra: 1",
            b"User-Agent: routedeck",
            b"Content-Type: application/json",
            f"Content-Length: {len(BODY)}".encode(),
        ]
    )
    assert body == BODY


async def test_caller_content_type_and_user_agent_replace_the_defaults(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(OK))
    pool = pools(server.url)
    await pool.post("/x", b"a=1", [(b"content-type", b"text/plain"), (b"user-agent", b"me")], T)
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.count(b"content-type") == 1 and b"content-type: text/plain" in head
    assert head.count(b"user-agent") == 1 and b"user-agent: me" in head
    assert head.startswith(b"post /x http/1.1\r\n")
    with pytest.raises(ValueError, match="content-length"):
        await pool.post("/x", b"", [(b"Content-Length", b"0")], T)


async def test_chunked_body_split_inside_size_lines_and_crlfs(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool], probe: Probe
) -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chu",
        b"nked\r\n\r",
        b"\n1",  # inside the first chunk-size line ("1a")
        b"a\r",  # inside its CRLF
        b"\nabcdefghijklmnopqrstuvwxyz\r",
        b"\n3;ext=1\r\nxyz",  # a chunk extension
        b"\r",
        b"\n0\r\nTrailer: t\r\n",  # a trailer
        b"\r\n",
    ]

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*pieces)

    server = await serve(handle)
    pool = pools(server.url)
    response = await pool.post("/x", BODY, (), T)
    assert response.status == 200
    assert response.body == b"abcdefghijklmnopqrstuvwxyzxyz"
    assert response.headers == {"transfer-encoding": "chunked"}
    # Every chosen split really was a read boundary on the client.
    cuts = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    assert set(cuts) <= set(probe.boundaries)

    # The same bytes as a stream: the body arrives de-chunked, in order.
    stream = await pool.stream("/x", BODY, (), T)
    assert await stream.aread() == b"abcdefghijklmnopqrstuvwxyzxyz"
    await stream.aclose()
    settled(pool, opened=1, idle=1)
    assert server.accepted == 1


async def test_close_delimited_body_is_read_to_eof_and_not_reused(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ", b"second")
        peer.writer.close()

    server = await serve(handle)
    pool = pools(server.url)
    response = await pool.post("/x", BODY, (), T)
    assert response.body == b"first second"
    stream = await pool.stream("/x", BODY, (), T)
    assert [chunk async for chunk in stream] in ([b"first ", b"second"], [b"first second"])
    await stream.aclose()
    assert server.accepted == 2
    settled(pool, opened=2, idle=0)


async def test_informational_responses_are_skipped(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(
        answer(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    pool = pools(server.url)
    assert await pool.post("/x", BODY, (), T) == Response(200, {"content-length": "2"}, b"ok")
    assert (await pool.post("/x", BODY, (), T)).body == b"ok"
    settled(pool, opened=1, idle=1)


async def test_malformed_response_is_a_protocol_error_naming_the_origin(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(b"HTTP/1.1 2x0 Nope\r\n\r\n"))
    pool = pools(server.url)
    with pytest.raises(ProtocolError) as info:
        await pool.post("/x", BODY, [(b"authorization", b"Bearer sk-SECRET")], T)
    message = str(info.value)
    assert f"127.0.0.1:{server.port}" in message and "malformed" in message
    assert "SECRET" not in message and "\n" not in message
    settled(pool, opened=1, idle=0)


async def test_bytes_after_a_complete_response_keep_the_answer_but_not_the_connection(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(OK + b"HTTP/1.1 200 OK\r\n"))
    pool = pools(server.url)
    assert (await pool.post("/x", BODY, (), T)).body == b"hello"
    settled(pool, opened=1, idle=0)


# -- keep-alive and the pool ------------------------------------------------------------------


async def test_keep_alive_carries_sequential_requests_on_one_connection(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(OK))
    pool = pools(server.url)
    for _ in range(10):
        assert (await pool.post("/x", BODY, (), T)).body == b"hello"
    assert server.accepted == 1
    assert settled(pool, opened=1, idle=1)["reused"] == 9


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_and_http10_are_not_reused(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool], response: bytes
) -> None:
    # The server keeps the connection open: not reusing it is the client's own decision.
    server = await serve(answer(response))
    pool = pools(server.url)
    for _ in range(3):
        assert (await pool.post("/x", BODY, (), T)).body == b"hello"
    assert server.accepted == 3
    assert settled(pool, opened=3, idle=0)["reused"] == 0


async def test_an_idle_connection_the_server_closed_is_not_used(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        peer.writer.write(OK)
        peer.writer.close()

    server = await serve(handle)
    pool = pools(server.url)
    await pool.post("/x", BODY, (), T)
    await eventually(lambda: pool.stats["idle"] == 0, "the closed connection to leave the pool")
    assert (await pool.post("/x", BODY, (), T)).body == b"hello"
    assert len(server.requests) == 2  # nothing was sent on the closed connection
    await eventually(lambda: pool.stats["idle"] == 0, "the second connection to leave the pool")
    assert settled(pool, opened=2, idle=0)["reused"] == 0


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_reused_connection_dropped_before_answering_is_retried_once(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool], how: str
) -> None:
    """The keep-alive race: the server closes the connection as the next request arrives."""

    async def handle(peer: Peer) -> None:
        if peer.index == 1:
            await peer.request()
            peer.writer.write(OK)
            await peer.request()
            if how == "rst":
                peer.reset()
            return
        await answer(OK)(peer)

    server = await serve(handle)
    pool = pools(server.url)
    await pool.post("/x", BODY, (), T)
    assert (await pool.post("/x", b"second", (), T)).body == b"hello"
    assert server.accepted == 2
    assert [r.endswith(b"second") for r in server.requests] == [False, True, True]
    assert settled(pool, opened=2, idle=1)["reused"] == 1

    stream = await pool.stream("/x", BODY, (), T)
    assert await stream.aread() == b"hello"


async def test_the_retry_happens_once_and_never_for_a_fresh_connection(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        if len(peer.server.requests) == 1:
            peer.writer.write(OK)
            await peer.request()

    server = await serve(handle)
    pool = pools(server.url)
    await pool.post("/x", BODY, (), T)
    with pytest.raises(ConnectError, match="closed before a response"):
        await pool.post("/x", BODY, (), T)
    assert len(server.requests) == 3  # the first, then the second twice
    settled(pool, opened=2, idle=0)

    fresh = pools(server.url)
    with pytest.raises(ConnectError):
        await fresh.post("/x", BODY, (), T)
    assert len(server.requests) == 4
    settled(fresh, opened=1, idle=0)


async def test_idle_connections_older_than_the_idle_timeout_are_discarded(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(OK))
    pool = pools(server.url, idle_timeout_s=0)  # every idle connection is too old
    await pool.post("/x", BODY, (), T)
    await pool.post("/x", BODY, (), T)
    assert server.accepted == 2
    assert settled(pool, opened=2, idle=1)["reused"] == 0
    await eventually(lambda: server.active == 1, "the server to see the stale one close")


async def test_the_most_recently_used_idle_connection_is_reused_first(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % peer.index)

    server = await serve(handle)
    pool = pools(server.url)
    # Two requests at once: both connections are opened before either answers.
    first = await asyncio.gather(pool.post("/x", BODY, (), T), pool.post("/x", BODY, (), T))
    assert sorted(r.body for r in first) == [b"1", b"2"]
    later = {(await pool.post("/x", BODY, (), T)).body for _ in range(4)}
    assert len(later) == 1  # LIFO: one connection serves them all, the other ages out
    settled(pool, opened=2, idle=2)


async def test_max_connections_holds_under_50_concurrent_requests(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    limit = 5
    all_open = asyncio.Event()

    async def handle(peer: Peer) -> None:
        # Answer nothing until the pool has opened every connection it may.
        if peer.server.active == limit:
            all_open.set()
        await all_open.wait()
        await answer(OK)(peer)

    server = await serve(handle)
    pool = pools(server.url, max_connections=limit)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(pool.post("/x", BODY, (), T) for _ in range(50)))
    assert [r.body for r in results] == [b"hello"] * 50
    assert server.peak == limit and server.accepted == limit
    assert settled(pool, opened=limit, idle=limit)["reused"] == 50 - limit


async def test_aclose_closes_connections_and_fails_later_and_pending_calls(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    started = asyncio.Event()
    server = await serve(held(started))
    pool = pools(server.url, max_connections=1)
    pending = asyncio.create_task(pool.post("/x", BODY, (), T))
    await asyncio.wait_for(started.wait(), 3)
    queued = asyncio.create_task(pool.post("/x", BODY, (), T))
    await eventually(lambda: len(pool._waiters) == 1, "the second request to queue")
    await pool.aclose()
    for task in (pending, queued):
        with pytest.raises(UpstreamError, match="closed"):
            await task
    with pytest.raises(UpstreamError, match="pool is closed"):
        await pool.post("/x", BODY, (), T)
    await eventually(lambda: server.client_closed == 1, "the server to see the close")
    settled(pool, opened=1, idle=0)


# -- failures and timeouts --------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["rst", "fin"])
async def test_a_connection_cut_mid_body_is_a_protocol_error(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool], cut: str
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        if cut == "rst":
            peer.reset()

    server = await serve(handle)
    pool = pools(server.url)
    with pytest.raises(ProtocolError, match=f"127.0.0.1:{server.port}: .*before the response"):
        await pool.post("/x", BODY, (), T)
    stream = await pool.stream("/x", BODY, (), T)
    assert await anext(stream) == b"0123456789"
    with pytest.raises(ProtocolError):
        await anext(stream)
    await stream.aclose()
    settled(pool, opened=2, idle=0)


async def test_connect_refused_is_a_connect_error(pools: Callable[..., Pool]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = pools(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}: connection failed") as info:
        await pool.post("/x", BODY, [(b"authorization", b"Bearer sk-SECRET")], T)
    assert "SECRET" not in str(info.value)
    assert pool.stats == {"opened": 0, "reused": 0, "idle": 0, "in_use": 0, "closed": 0}


async def test_no_response_within_the_read_timeout(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(held())
    pool = pools(server.url)
    with pytest.raises(ReadTimeout, match=r"no response within the read timeout \(0.2s\)"):
        await pool.post("/x", BODY, (), Timeouts(connect=2, read=0.2))
    await eventually(lambda: server.client_closed == 1, "the timed-out connection to close")
    settled(pool, opened=1, idle=0)


async def test_read_timeout_between_stream_chunks(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(first_chunk_then_held)
    pool = pools(server.url)
    stream = await pool.stream("/x", BODY, (), Timeouts(connect=2, read=0.2))
    assert await anext(stream) == b"first"
    with pytest.raises(ReadTimeout, match="no more response bytes"):
        await anext(stream)
    await stream.aclose()
    await eventually(lambda: server.client_closed == 1, "the timed-out connection to close")
    settled(pool, opened=1, idle=0)


async def test_a_slow_but_steady_body_does_not_time_out(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    """The read timeout bounds each gap, not the whole body (the timer follows arrivals)."""

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
            for byte in b"abcdef":
                await asyncio.sleep(0.06)  # pacing: 6 x 0.06 s, well over the 0.2 s timeout
                await peer.send(bytes([byte]))

    server = await serve(handle)
    pool = pools(server.url)
    timeouts = Timeouts(connect=2, read=0.2)
    assert (await pool.post("/x", BODY, (), timeouts)).body == b"abcdef"
    stream = await pool.stream("/x", BODY, (), timeouts)
    assert await stream.aread() == b"abcdef"
    settled(pool, opened=1, idle=1)


async def test_waiting_for_a_free_connection_counts_against_the_connect_timeout(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    started = asyncio.Event()
    server = await serve(held(started))
    pool = pools(server.url, max_connections=1)
    holder = asyncio.create_task(pool.post("/x", BODY, (), T))
    await asyncio.wait_for(started.wait(), 3)
    with pytest.raises(ConnectTimeout, match="no free connection within the connect timeout"):
        await pool.post("/x", BODY, (), Timeouts(connect=0.1, read=2))
    assert not [w for w in pool._waiters if not w.done()]
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert server.accepted == 1
    settled(pool, opened=1, idle=0)


# -- cancellation -----------------------------------------------------------------------------


async def test_cancelling_mid_stream_closes_the_connection(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(first_chunk_then_held)
    pool = pools(server.url)
    got_first = asyncio.Event()

    async def consume() -> None:
        stream = await pool.stream("/x", BODY, (), T)
        try:
            async for _ in stream:
                got_first.set()
        finally:
            await stream.aclose()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    settled(pool, opened=1, idle=0)
    await eventually(lambda: server.client_closed == 1, "the server to see the close")


async def test_cancelling_a_post_in_flight_or_in_the_queue_keeps_the_counts(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    started = asyncio.Event()
    server = await serve(held(started))
    pool = pools(server.url, max_connections=1)
    in_flight = asyncio.create_task(pool.post("/x", BODY, (), T))
    await asyncio.wait_for(started.wait(), 3)
    queued = [asyncio.create_task(pool.post("/x", BODY, (), T)) for _ in range(3)]
    await eventually(lambda: len(pool._waiters) == 3, "three requests to queue")
    assert pool.stats["in_use"] == 1
    queued[1].cancel()
    in_flight.cancel()
    await asyncio.gather(in_flight, queued[1], return_exceptions=True)
    # The first queued request got the freed slot and now holds the server; cancel it too.
    await eventually(lambda: server.accepted == 2, "the next queued request to connect")
    for task in queued:
        task.cancel()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    settled(pool, opened=2, idle=0)
    assert not [w for w in pool._waiters if not w.done()]


async def test_a_connection_handed_to_a_cancelled_waiter_goes_back_to_the_pool(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(OK))
    pool = pools(server.url, max_connections=1)
    stream = await pool.stream("/x", BODY, (), T)
    assert await stream.aread() == b"hello"  # read to the end: the connection went back
    stream = await pool.stream("/x", BODY, (), T)
    await eventually(lambda: stream._conn._complete, "the second answer to arrive")
    waiter = asyncio.create_task(pool.post("/x", BODY, (), T))
    await eventually(lambda: len(pool._waiters) == 1, "the request to queue")
    await stream.aclose()  # hands the connection to the waiter...
    waiter.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    settled(pool, opened=1, idle=1)
    assert (await pool.post("/x", BODY, (), T)).body == b"hello"
    assert server.accepted == 1


async def test_stream_aclose_is_idempotent_and_reading_after_it_fails(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    server = await serve(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"))
    pool = pools(server.url)
    stream = await pool.stream("/x", BODY, (), T)
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(UpstreamError, match="closed before its end"):
        await anext(stream)
    settled(pool, opened=1, idle=0)


# -- backpressure -----------------------------------------------------------------------------


async def test_a_slow_stream_consumer_pauses_reading(
    serve: Callable[[Handler], Awaitable[RawServer]], pools: Callable[..., Pool]
) -> None:
    size = 32 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    writers: list[asyncio.StreamWriter] = []

    async def handle(peer: Peer) -> None:
        await peer.request()
        writers.append(peer.writer)
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
        await peer.writer.drain()
        await peer.request()

    server = await serve(handle)
    pool = pools(server.url)
    stream = await pool.stream("/x", BODY, (), T)
    conn = stream._conn
    await eventually(lambda: conn._paused, "reading to pause")
    # The rest waits at the sender, while the client holds about the high-water mark.
    await eventually(
        lambda: writers[0].transport.get_write_buffer_size() > 0, "the sender to block"
    )
    assert conn._buffered <= http1._HIGH_WATER + http1._READ_SIZE
    received = await stream.aread()
    assert len(received) == size and received == body
    await stream.aclose()
    assert server.accepted == 1
    settled(pool, opened=1, idle=1)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_verifies_the_server_and_speaks_http11_over_alpn(
    certificate: tuple[Path, Path], pools: Callable[..., Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    negotiated: list[str | None] = []
    handlers: list[asyncio.Task[Any]] = []

    async def serve_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        negotiated.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(len(BODY))
                writer.write(OK)
        writer.close()

    server = await asyncio.start_server(serve_tls, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    untrusted = pools(url)  # the default context, before the test CA is trusted
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the default context is made
    pool = pools(url + "/v1")
    h2_context = ssl.create_default_context(cafile=str(cert))
    h2_context.set_alpn_protocols(["h2"])
    h2_only = pools(url, ssl_context=h2_context)
    try:
        assert (await pool.post("/x", BODY, (), T)).body == b"hello"
        assert (await pool.post("/x", BODY, (), T)).body == b"hello"
        assert negotiated == ["http/1.1"]  # the server prefers h2; the client offered only 1.1
        settled(pool, opened=1, idle=1)

        with pytest.raises(ConnectError, match="TLS handshake failed"):
            await untrusted.post("/x", BODY, (), T)
        settled(untrusted, opened=0, idle=0)

        with pytest.raises(ConnectError, match="the server chose ALPN 'h2'"):
            await h2_only.post("/x", BODY, (), T)
        assert h2_only.stats["in_use"] == 0 and h2_only.stats["idle"] == 0
    finally:
        for made in (pool, untrusted, h2_only):
            await made.aclose()
        server.close()
        if handlers:
            await asyncio.wait(handlers, timeout=3)
        await server.wait_closed()


async def test_https_to_a_plain_http_server_is_a_connect_error(pools: Callable[..., Pool]) -> None:
    async with SimServer() as sim:
        pool = pools(f"https://127.0.0.1:{sim.port}")
        with pytest.raises(ConnectError, match=f"127.0.0.1:{sim.port}"):
            await pool.post("/v1/chat/completions", BODY, (), T)
        assert pool.stats["in_use"] == 0


# -- against the simulator --------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(seed=3) as server:
        yield server


def chat(stream: bool) -> bytes:
    return orjson.dumps(
        {"model": "sim-small", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )


async def test_simulator_json_answer(sim: SimServer) -> None:
    async with Pool(sim.base_url("p", "openai")) as pool:
        response = await pool.post("/chat/completions", chat(False), [(b"authorization", b"x")], T)
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        data = orjson.loads(response.body)
        assert data["object"] == "chat.completion" and data["choices"][0]["message"]["content"]

        sim.chaos.set("p", error_rate=1.0, error_status=429, retry_after=2)
        limited = await pool.post("/chat/completions", chat(False), (), T)
        assert limited.status == 429 and limited.headers["retry-after"] == "2"
        settled(pool, opened=1, idle=1)
    settled(pool, opened=1, idle=0)


async def test_simulator_sse_stream_end_to_end(sim: SimServer, pools: Callable[..., Pool]) -> None:
    pool = pools(sim.base_url("p", "openai"))
    texts: list[str] = []
    for _ in range(2):
        stream = await pool.stream("/chat/completions", chat(True), (), T)
        try:
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream"
            events = [data async for _, data in aiter_sse(aiter(stream))]
        finally:
            await stream.aclose()
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        texts.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))
    assert texts[0] and texts[0] == texts[1]
    assert settled(pool, opened=1, idle=1)["reused"] == 1


async def test_simulator_failures_map_to_the_error_types(
    sim: SimServer, pools: Callable[..., Pool]
) -> None:
    pool = pools(sim.base_url("p", "openai"))
    sim.chaos.set("p", reset_rate=1.0)
    with pytest.raises(ConnectError):
        await pool.post("/chat/completions", chat(False), (), T)
    sim.chaos.set("p", midstream_fail_rate=1.0)
    stream = await pool.stream("/chat/completions", chat(True), (), T)
    with pytest.raises(ProtocolError):
        async for _ in stream:
            pass
    await stream.aclose()
    sim.chaos.set("p", hang_rate=1.0)
    with pytest.raises(ReadTimeout):
        await pool.post("/chat/completions", chat(False), (), Timeouts(connect=2, read=0.1))
    sim.chaos.clear()
    assert (await pool.post("/chat/completions", chat(False), (), T)).status == 200
    settled(pool, opened=4, idle=1)


# -- benchmark (figures only) -----------------------------------------------------------------


class _Floor(asyncio.BufferedProtocol):
    """The least any client pays: write the request bytes, read until the answer is complete."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(64 * 1024))
        self.buffer = b""
        self.done: asyncio.Future[None] | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.buffer += self.view[:nbytes]
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        start = self.buffer.lower().find(b"content-length:")
        length = int(self.buffer[start + 15 : self.buffer.find(b"\r\n", start)])
        if len(self.buffer) >= head_end + 4 + length and self.done is not None:
            self.buffer = b""
            self.done.set_result(None)


def _bench(requests: int = 2000) -> None:
    """CPU per sequential POST against a simulator in another process: the floor (raw bytes on
    one connection: syscalls and event loop only), this client, and httpx."""
    import httpx

    sim = subprocess.Popen(
        [sys.executable, "-m", "providers.sim", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().split()[-1] + "/p/v1"
        body = chat(False)
        headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
        raw_headers = [(b"authorization", b"Bearer sk-bench")]

        async def measure(call: Callable[[], Awaitable[Any]]) -> float:
            for _ in range(200):
                await call()
            start = time.process_time()
            for _ in range(requests):
                await call()
            return (time.process_time() - start) / requests * 1e6

        async def run() -> tuple[float, float, float]:
            loop = asyncio.get_running_loop()
            pool = Pool(url)
            request = pool._request("/chat/completions", body, raw_headers)
            transport, floor_protocol = await loop.create_connection(
                _Floor, "127.0.0.1", int(url.split(":")[2].split("/")[0])
            )

            async def floor_post() -> None:
                floor_protocol.done = loop.create_future()
                transport.write(request)
                await floor_protocol.done

            try:
                floor = await measure(floor_post)
                ours = await measure(lambda: pool.post("/chat/completions", body, raw_headers, T))
            finally:
                transport.close()
                await pool.aclose()
            async with httpx.AsyncClient(timeout=2.0) as client:

                async def httpx_post() -> bytes:
                    response = await client.post(
                        url + "/chat/completions", content=body, headers=headers
                    )
                    return response.content

                theirs = await measure(httpx_post)
            return floor, ours, theirs

        runners: list[tuple[str, Callable[[Any], tuple[float, float, float]]]] = [
            ("asyncio", asyncio.run)
        ]
        with contextlib.suppress(ImportError):
            import uvloop

            runners.append(("uvloop", uvloop.run))
        print(f"{requests} sequential POSTs each, process CPU (us) per request:")
        for name, runner in runners:
            floor, ours, theirs = runner(run())
            print(
                f"  {name:8} floor {floor:6.1f}   http1 {ours:6.1f} (floor + {ours - floor:5.1f})"
                f"   httpx {theirs:6.1f} (floor + {theirs - floor:6.1f})"
            )
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    _bench()
