"""An open-loop, fixed-rate HTTP/1.1 load generator for one POST endpoint on loopback.

    result = await run_window(spec, rate=300, duration_s=3.0)
    summary = summarize(result.latency_ms)

What a caller may rely on:

- **Open loop, no coordinated omission.** Request ``i`` of a window is due at
  ``t0 + i / rate`` whatever happened to earlier requests. When no keep-alive connection is free
  it waits in a queue (and a new connection is opened, up to ``max_connections``); that wait is
  part of its latency, because its latency is measured from the time it was *due*.
- **Two clocks per request.** ``latency_ms`` runs from the due time to the last byte of the
  response body; ``send_latency_ms`` runs from the moment the request was written to the socket
  to the same last byte (what a closed-loop client would report). ``send_lag_ms`` is the
  difference: the generator's own lateness plus any wait for a connection. For streamed
  answers ``ttfb_ms`` runs from the due time to the first byte of the body (the first SSE
  event), which is the time to first token a client sees.
- **Bounded.** A window sends exactly ``round(rate * duration_s)`` requests and stops waiting
  ``drain_s`` seconds after the last one was due; what has not finished by then is counted as
  an error of kind ``timeout`` and its connection is aborted. Nothing outlives the call.
- **Errors** are counted by kind: ``http_<status>`` for a non-200 status, ``incomplete`` for a
  stream whose body does not end with ``data: [DONE]`` (OpenAI) or ``message_stop``
  (Anthropic), ``closed`` for a connection lost mid-response, ``connect`` for a failed connect,
  ``parse`` for a response that is not HTTP/1.1, ``timeout`` as above. Latencies are kept for
  successful requests only.
- **The generator's own cost** is reported as ``cpu_s``: user + system CPU of this process from
  the first due time to the end of the window. The garbage collector is disabled during the
  window (and run after it), so a collection pause does not land on a measured request.

The client is a few hundred lines on purpose: an `asyncio.Protocol` per connection with the
``httptools`` response parser, no per-request task, and one timestamp per ``data_received``
call, so that it costs a small fraction of what the servers it measures cost per request.
All times are `time.perf_counter` seconds (CLOCK_MONOTONIC on Linux, nanosecond resolution).
"""

from __future__ import annotations

import asyncio
import gc
import math
import resource
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httptools

__all__ = [
    "RequestSpec",
    "WindowResult",
    "percentile",
    "run_window",
    "summarize",
]

_STREAM_ENDINGS = (b"data: [DONE]", b"message_stop")
_TAIL_BYTES = 64


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request, sent identically ``n`` times: ``POST path`` with a JSON ``body``.

    ``stream`` makes the generator time the first body byte and require a complete SSE stream.
    """

    host: str
    port: int
    path: str
    body: bytes
    stream: bool = False

    def wire(self) -> bytes:
        """The request as bytes on the wire (HTTP/1.1, keep-alive)."""
        head = (
            f"POST {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "User-Agent: routedeck-bench\r\n"
            "Accept: */*\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "\r\n"
        )
        return head.encode("ascii") + self.body


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What one fixed-rate window measured. Latency tuples hold successful requests only."""

    rate: float
    """Offered rate, requests per second."""
    duration_s: float
    """Planned length of the schedule: ``planned / rate``."""
    planned: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    achieved_rps: float
    """Successful responses divided by the time from the first due time to the last response."""
    latency_ms: tuple[float, ...]
    """Due time → last body byte."""
    send_latency_ms: tuple[float, ...]
    """Write to the socket → last body byte."""
    ttfb_ms: tuple[float, ...]
    """Due time → first body byte (streamed requests; empty otherwise)."""
    send_lag_ms: tuple[float, ...]
    """Due time → write to the socket, for every request that was written."""
    cpu_s: float
    """This process's user + system CPU over the window."""
    wall_s: float
    """First due time → end of the window (last response, or the drain deadline)."""
    connections: int
    """Connections used, pre-opened ones included."""
    connections_opened_late: int
    """Connections opened during the window because every open one was busy."""
    max_in_flight: int

    @property
    def error_ratio(self) -> float:
        return self.errors / self.planned if self.planned else 0.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted ``ordered``, interpolating linearly between
    closest ranks (numpy's default method); NaN for an empty sequence."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """``n``, ``mean``, ``p50``, ``p90``, ``p95``, ``p99``, ``max`` of ``values`` (NaN if none)."""
    ordered = sorted(values)
    n = len(ordered)
    return {
        "n": float(n),
        "mean": math.fsum(ordered) / n if n else math.nan,
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if n else math.nan,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Window:
    """The per-window bookkeeping shared by the pool's connections."""

    def __init__(self, n: int, stream: bool) -> None:
        nan = math.nan
        self.n = n
        self.stream = stream
        self.due = [nan] * n
        self.sent = [nan] * n
        self.first = [nan] * n
        self.done = [nan] * n
        self.error: list[str | None] = [None] * n
        self.finished = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.all_done = asyncio.Event()

    def finish(self, i: int, at: float, error: str | None) -> None:
        if not math.isnan(self.done[i]) or self.error[i] is not None:
            return
        if error is None:
            self.done[i] = at
        else:
            self.error[i] = error
        if not math.isnan(self.sent[i]):
            self.in_flight -= 1
        self.finished += 1
        if self.finished == self.n:
            self.all_done.set()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; at most one request in flight."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._window = pool.window
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._current: int | None = None
        self._now = 0.0
        self._status = 0
        self._got_body = False
        self._tail = b""
        self.closed = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Requests are one small write each: never hold one back waiting for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("parse")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("closed")
        self._pool.lost(self)

    # -- httptools callbacks --

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        i = self._current
        if i is None or not body:
            return
        if not self._got_body:
            self._got_body = True
            self._window.first[i] = self._now
        if self._window.stream:
            self._tail = (self._tail + body)[-_TAIL_BYTES:]

    def on_message_complete(self) -> None:
        i = self._current
        if i is None:
            return
        self._current = None
        error: str | None = None
        if self._status != 200:
            error = f"http_{self._status}"
        elif self._window.stream and not any(e in self._tail for e in _STREAM_ENDINGS):
            error = "incomplete"
        self._window.finish(i, self._now, error)
        if self._parser.should_keep_alive():
            self._pool.release(self)
        else:
            self.abort()

    # -- used by the pool --

    def send(self, i: int, payload: bytes) -> None:
        assert self._transport is not None
        self._current = i
        self._status = 0
        self._got_body = False
        self._tail = b""
        window = self._window
        window.sent[i] = time.perf_counter()
        window.in_flight += 1
        window.max_in_flight = max(window.max_in_flight, window.in_flight)
        self._transport.write(payload)

    def _fail(self, kind: str) -> None:
        i, self._current = self._current, None
        if i is not None:
            self._window.finish(i, time.perf_counter(), kind)

    def abort(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.abort()


class _Pool:
    """Keep-alive connections to one server; requests queue when all are busy."""

    def __init__(self, spec: RequestSpec, window: _Window, max_connections: int) -> None:
        self.window = window
        self._spec = spec
        self._payload = spec.wire()
        self._max = max_connections
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._waiting: deque[int] = deque()
        self._connecting = 0
        self.late_connects = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return len(self._all)

    async def open(self, count: int) -> None:
        """Open ``count`` connections before the window starts (raises if one fails)."""
        loop = asyncio.get_running_loop()
        made = await asyncio.gather(
            *(
                loop.create_connection(lambda: _Connection(self), self._spec.host, self._spec.port)
                for _ in range(count)
            )
        )
        for _, conn in made:
            self._all.add(conn)
            self._idle.append(conn)

    def submit(self, i: int) -> None:
        if self._idle:
            self._idle.pop().send(i, self._payload)
            return
        self._waiting.append(i)
        self._grow()

    def release(self, conn: _Connection) -> None:
        if self._waiting:
            conn.send(self._waiting.popleft(), self._payload)
        else:
            self._idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._grow()

    def _grow(self) -> None:
        while self._waiting and self._connecting < len(self._waiting):
            if len(self._all) + self._connecting >= self._max:
                return
            self._connecting += 1
            self.late_connects += 1
            task = asyncio.create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self._spec.host, self._spec.port
            )
        except OSError:
            self._connecting -= 1
            if self._waiting:
                self.window.finish(self._waiting.popleft(), time.perf_counter(), "connect")
            return
        self._connecting -= 1
        self._all.add(conn)
        self.release(conn)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let connection_lost callbacks run


async def run_window(
    spec: RequestSpec,
    *,
    rate: float,
    duration_s: float,
    connections: int | None = None,
    max_connections: int = 256,
    drain_s: float = 2.0,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> WindowResult:
    """Send ``round(rate * duration_s)`` requests at ``rate`` per second; return the figures.

    ``connections`` keep-alive connections are opened before the first due time (default:
    enough for the rate at 60 ms per request, plus 8); more are opened on demand up to
    ``max_connections``. ``on_start`` is called just before the first due time and ``on_stop``
    right after the window ends (to sample other processes' counters over the same span).
    Raises `OSError` if the pre-opened connections cannot be made.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be positive")
    n = max(1, round(rate * duration_s))
    if connections is None:
        connections = math.ceil(rate * 0.06) + 8
    connections = max(1, min(connections, max_connections))
    window = _Window(n, spec.stream)
    pool = _Pool(spec, window, max_connections)
    try:
        await pool.open(connections)
        gc.collect()
        gc.disable()
        interval = 1.0 / rate
        if on_start is not None:
            on_start()
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter() + 0.005
        due = window.due
        for i in range(n):
            at = t0 + i * interval
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due[i] = at
            pool.submit(i)
        deadline = t0 + (n - 1) * interval + drain_s
        if not window.all_done.is_set():
            try:
                async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                    await window.all_done.wait()
            except TimeoutError:
                pass
        end = time.perf_counter()
        cpu = _cpu_seconds() - cpu0
        if on_stop is not None:
            on_stop()
        for i in range(n):
            window.finish(i, end, "timeout")  # a no-op for requests already finished
        late = pool.late_connects
        size = pool.size
    finally:
        await pool.close()
        gc.enable()
    gc.collect()
    return _result(window, rate, n, t0, end, cpu, size, late)


def _result(
    window: _Window,
    rate: float,
    n: int,
    t0: float,
    end: float,
    cpu: float,
    connections: int,
    late: int,
) -> WindowResult:
    latency: list[float] = []
    send_latency: list[float] = []
    ttfb: list[float] = []
    lag: list[float] = []
    kinds: Counter[str] = Counter()
    last_done = t0
    for i in range(n):
        due, sent, done = window.due[i], window.sent[i], window.done[i]
        if not math.isnan(sent):
            lag.append((sent - due) * 1000.0)
        err = window.error[i]
        if err is not None:
            kinds[err] += 1
            continue
        latency.append((done - due) * 1000.0)
        send_latency.append((done - sent) * 1000.0)
        if window.stream:
            ttfb.append((window.first[i] - due) * 1000.0)
        last_done = max(last_done, done)
    ok = len(latency)
    span = last_done - t0
    return WindowResult(
        rate=rate,
        duration_s=n / rate,
        planned=n,
        ok=ok,
        errors=n - ok,
        error_kinds=dict(kinds),
        achieved_rps=ok / span if span > 0 else 0.0,
        latency_ms=tuple(latency),
        send_latency_ms=tuple(send_latency),
        ttfb_ms=tuple(ttfb),
        send_lag_ms=tuple(lag),
        cpu_s=cpu,
        wall_s=end - t0,
        connections=connections,
        connections_opened_late=late,
        max_in_flight=window.max_in_flight,
    )
