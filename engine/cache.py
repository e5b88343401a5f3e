"""The deterministic response cache: answers to repeated requests, served without an upstream call.

The control layer asks `ResponseCache.decide` whether a request may be answered from cache and
whether its answer may be stored, looks the answer up with `ResponseCache.get` under the key
from `ResponseCache.key`, and after a successful upstream call stores it with
`ResponseCache.put`. A streaming request answered from cache is sent the events of `replay`.

**When a request is cached** (`decide`). The client's ``x-routedeck-cache`` header, if sent, is
``on``, ``off`` or ``refresh`` (case and surrounding blanks ignored); any other value is a
``ValueError`` whose message lists the allowed values.

- ``[cache] enabled = false`` or header ``off``: bypass (no lookup, no store).
- header ``refresh``: no lookup, but the fresh answer is stored, replacing any cached one.
- header ``on``: lookup and store, in either mode.
- no header, mode ``deterministic``: lookup and store when ``temperature == 0`` or a ``seed``
  is set; otherwise bypass. Mode ``opt_in``: bypass.

Streaming requests and requests with tools are cached like any other. (The canonical request
has no way to ask for more than one choice, so every cached answer is a single choice.)

**The key** (`key`) is the hex SHA-256 of the canonical JSON (orjson, keys sorted, no
whitespace) of exactly these fields, so two requests share an entry only when every one of
them is equal:

- ``v``: the key format version (1); changing the format changes every key.
- ``tenant``: the tenant, so that an entry never serves another tenant.
- ``target``: the resolved tier or pinned deployment the engine routes the request to (not
  the client's model name, so aliases of one tier share entries).
- ``messages``: in order, each with ``role``; ``content`` parts in order (``{"type": "text",
  "text"}`` or ``{"type": "image", "url"}``); ``tool_calls`` in order (``id``, ``name``,
  ``arguments`` as the exact JSON text); ``tool_call_id``; ``is_error``; ``name``.
- ``tools``: in order, each with ``name``, ``description`` and ``parameters`` (a JSON Schema,
  whose object keys are sorted like every other object, so key order never matters).
- ``tool_choice``: ``mode`` and ``name``, or null.
- ``response_format``: as given, or null.
- ``temperature``, ``top_p``, ``presence_penalty``, ``frequency_penalty``: as floats (so ``0``
  and ``0.0`` are the same key), or null.
- ``max_tokens``, ``seed``, ``parallel_tool_calls``: as given, or null.
- ``stop``: the stop sequences, in order.

Not in the key, because they do not change the answer: ``model`` (replaced by ``target``),
``stream``, ``include_usage``, ``user`` and ``metadata``. An unset field and the same field
set to the provider's default are different keys: the cache never guesses defaults. Compute
the key over the request as it will be sent upstream (after token caps and trimming).

**Storage.** Entries live in the state file's ``cache`` table, one row per key, with the
serialised `ChatResponse`, what the original call cost, and an expiry ``ttl_s`` after it was
stored. ``put`` returns once the entry is committed. An expired entry is never served. The
table is kept within ``max_entries`` rows and ``max_bytes`` bytes of serialised answers by
evicting the oldest entries (by the time they were stored) as each ``put`` needs room; an
answer larger than ``max_bytes`` on its own is not stored. ``get`` never waits on disk: hit
counts are kept in memory and written with the next ``put``, ``purge_expired`` or ``close``.

One `ResponseCache` must own the table: it tracks the entry count and size in memory from
``open``, and serialises its own writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import orjson

from engine.config import CacheConfig
from providers.canonical import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from state.store import Statement, Store

__all__ = [
    "CACHE_HEADER",
    "HEADER_VALUES",
    "CacheDecision",
    "CacheStats",
    "CacheStatus",
    "CachedAnswer",
    "ResponseCache",
    "replay",
]

LOG = logging.getLogger(__name__)

CACHE_HEADER: Final = "x-routedeck-cache"
"""The request header a client sets to control caching, and the response header saying what
the cache did."""

HEADER_VALUES: Final = ("on", "off", "refresh")
"""The values a client may send in ``x-routedeck-cache``."""

CacheStatus = Literal["hit", "miss", "refresh", "bypass"]
"""What the cache did for a request, as sent back in the ``x-routedeck-cache`` header."""

KEY_VERSION: Final = 1
_BLOB_VERSION: Final = 1
_FINISH_REASONS: Final[frozenset[str]] = frozenset(get_args(FinishReason))

_EXPIRED_PER_PUT: Final = 64
"""At most this many expired entries are dropped by one ``put``; ``purge_expired`` drops all."""

_EVICT_BATCH: Final = 64
_REPLAY_CHUNK_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What to do with one request: whether to look it up, whether to store its answer.

    ``status`` is the ``x-routedeck-cache`` response header value: ``miss`` when a lookup is
    due (the engine sends ``hit`` instead when the lookup finds an answer), ``refresh`` or
    ``bypass``. ``reason`` says why, in a few words, for the request log.
    """

    lookup: bool
    store: bool
    status: CacheStatus
    reason: str


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    response: ChatResponse
    cost_usd: float | None
    """What the call that produced the answer cost: the dollars a hit saves. None if unpriced."""
    created_at: float
    """When the answer was stored (Unix seconds, by the cache's clock)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The cache's counters. ``hits``, ``misses`` and the savings count since the cache was
    created; ``entries`` and ``bytes`` describe the table now (expired entries included until
    they are dropped)."""

    hits: int
    misses: int
    saved_usd: float
    """Sum of ``cost_usd`` over hits whose original call was priced."""
    unpriced_hits: int
    """Hits whose original call had no known price: savings not counted in ``saved_usd``."""
    entries: int
    bytes: int
    """Sum of the serialised answers' sizes."""

    @property
    def hit_ratio(self) -> float | None:
        """Hits over lookups, or None before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class ResponseCache:
    """The response cache over a `Store`; see the module docstring for the rules.

    Use ``async with ResponseCache(config, store) as cache:`` (or call `open` and `close`)
    while the store is open. ``clock`` gives Unix seconds and decides creation and expiry.
    """

    def __init__(
        self,
        config: CacheConfig,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        # Serialises writes so that the in-memory entry count and size stay exact.
        self._lock = asyncio.Lock()
        self._opened = False
        self._entries = 0
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._saved_usd = 0.0
        self._unpriced_hits = 0
        self._pending_hits: dict[str, int] = {}

    @property
    def config(self) -> CacheConfig:
        return self._config

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Count the entries and bytes already in the table. ``put`` and ``purge_expired``
        call it when it was not called; calling it again recounts."""
        async with self._lock:
            await self._count()

    async def close(self) -> None:
        """Write the hit counts not yet written. Call it before the store closes."""
        async with self._lock:
            await self._write(*self._hit_updates())

    async def _count(self) -> None:
        rows = await self._store.query("SELECT count(*), coalesce(sum(size), 0) FROM cache")
        self._entries, self._bytes = int(rows[0][0]), int(rows[0][1])
        self._opened = True

    # -- deciding and keying -----------------------------------------------------------------

    def decide(self, request: ChatRequest, header: str | None) -> CacheDecision:
        """Whether to look ``request`` up and store its answer, given the client's
        ``x-routedeck-cache`` header value (None when absent).

        Raises ``ValueError`` naming the allowed values when the header is anything else,
        whether or not the cache is enabled.
        """
        value = None if header is None else header.strip().lower()
        if value is not None and value not in HEADER_VALUES:
            raise ValueError(
                f"{CACHE_HEADER} must be one of {', '.join(HEADER_VALUES)}; got {header!r}. "
                f"Send 'on' to use the cache, 'off' to bypass it, 'refresh' to replace the "
                f"cached answer, or leave the header out."
            )
        if not self._config.enabled:
            return _BYPASS_DISABLED
        if value == "off":
            return _BYPASS_OFF
        if value == "refresh":
            return _REFRESH
        if value == "on":
            return _LOOKUP_ON
        if self._config.mode == "opt_in":
            return _BYPASS_OPT_IN
        if request.temperature == 0:
            return _LOOKUP_TEMPERATURE
        if request.seed is not None:
            return _LOOKUP_SEED
        return _BYPASS_NONDETERMINISTIC

    @staticmethod
    def key(request: ChatRequest, *, tenant: str, target: str) -> str:
        """The cache key of ``request`` for ``tenant`` routed to ``target``: 64 hex digits,
        the same in every process and release with this key format (see the module docstring
        for the fields)."""
        canonical = {
            "v": KEY_VERSION,
            "tenant": tenant,
            "target": target,
            "messages": [_message(m) for m in request.messages],
            "tools": [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in request.tools
            ],
            "tool_choice": (
                None
                if request.tool_choice is None
                else {"mode": request.tool_choice.mode, "name": request.tool_choice.name}
            ),
            "response_format": request.response_format,
            "temperature": _float(request.temperature),
            "top_p": _float(request.top_p),
            "presence_penalty": _float(request.presence_penalty),
            "frequency_penalty": _float(request.frequency_penalty),
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "parallel_tool_calls": request.parallel_tool_calls,
            "stop": request.stop,
        }
        data = orjson.dumps(canonical, default=_plain, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(data).hexdigest()

    # -- reading and writing -----------------------------------------------------------------

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``, or None if there is none or it has expired.

        Counts a hit (and its savings) or a miss. Never waits on disk for a write.
        """
        rows = await self._store.query(
            "SELECT response, cost_usd, created_at, expires_at FROM cache WHERE key = ?", (key,)
        )
        if not rows or float(rows[0]["expires_at"]) <= self._clock():
            self._misses += 1
            return None
        row = rows[0]
        try:
            response = _decode(bytes(row["response"]))
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            LOG.warning("cache entry %s cannot be read, treating it as a miss: %s", key, exc)
            self._misses += 1
            return None
        cost = None if row["cost_usd"] is None else float(row["cost_usd"])
        self._hits += 1
        if cost is None:
            self._unpriced_hits += 1
        else:
            self._saved_usd += cost
        self._pending_hits[key] = self._pending_hits.get(key, 0) + 1
        return CachedAnswer(response=response, cost_usd=cost, created_at=float(row["created_at"]))

    async def put(
        self, key: str, *, tenant: str, response: ChatResponse, cost_usd: float | None
    ) -> None:
        """Store ``response`` under ``key`` (replacing any entry there) and return once it is
        committed, together with the evictions that keep the table within its bounds.

        ``cost_usd`` is what the call that produced the answer cost (None if unpriced). An
        answer larger than ``max_bytes`` is not stored. Raises what the store raises if the
        write fails; the cache's counts are then unchanged.
        """
        blob = _encode(response)
        size = len(blob)
        if size > self._config.max_bytes:
            LOG.info("cache: answer of %d bytes is over max_bytes, not stored", size)
            return
        async with self._lock:
            if not self._opened:
                await self._count()
            now = self._clock()
            existing = await self._store.query("SELECT size FROM cache WHERE key = ?", (key,))
            entries = self._entries + (0 if existing else 1)
            total = self._bytes + size - (int(existing[0][0]) if existing else 0)

            doomed: dict[str, int] = {}
            for row in await self._store.query(
                "SELECT key, size FROM cache WHERE expires_at <= ? AND key != ? "
                "ORDER BY expires_at LIMIT ?",
                (now, key, _EXPIRED_PER_PUT),
            ):
                doomed[row[0]] = int(row[1])
            entries -= len(doomed)
            total -= sum(doomed.values())
            entries, total = await self._make_room(key, entries, total, doomed)

            statements: list[Statement] = [
                ("DELETE FROM cache WHERE key = ?", (victim,)) for victim in doomed
            ]
            statements.append(
                (
                    "INSERT INTO cache "
                    "(key, tenant, created_at, expires_at, size, hits, cost_usd, response) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, "
                    "created_at = excluded.created_at, expires_at = excluded.expires_at, "
                    "size = excluded.size, hits = 0, cost_usd = excluded.cost_usd, "
                    "response = excluded.response",
                    (key, tenant, now, now + self._config.ttl_s, size, cost_usd, blob),
                )
            )
            updates, hits = self._hit_updates(replaced=key)
            await self._write(statements + updates, hits)
            self._entries, self._bytes = entries, total

    async def purge_expired(self) -> int:
        """Drop every expired entry and write pending hit counts; return how many were dropped."""
        async with self._lock:
            if not self._opened:
                await self._count()
            now = self._clock()
            rows = await self._store.query(
                "SELECT count(*), coalesce(sum(size), 0) FROM cache WHERE expires_at <= ?", (now,)
            )
            count, size = int(rows[0][0]), int(rows[0][1])
            statements, hits = self._hit_updates()
            if count:
                statements.append(("DELETE FROM cache WHERE expires_at <= ?", (now,)))
            await self._write(statements, hits)
            self._entries -= count
            self._bytes -= size
            return count

    def stats(self) -> CacheStats:
        """The counters now; cheap enough for every console refresh."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            saved_usd=self._saved_usd,
            unpriced_hits=self._unpriced_hits,
            entries=self._entries,
            bytes=self._bytes,
        )

    async def _make_room(
        self, key: str, entries: int, total: int, doomed: dict[str, int]
    ) -> tuple[int, int]:
        """Add the oldest entries other than ``key`` to ``doomed`` until ``entries`` and
        ``total`` bytes are within bounds; return them as they will be then."""
        max_entries, max_bytes = self._config.max_entries, self._config.max_bytes
        # Keyset pagination over (created_at, key): each batch starts after the last row seen.
        after: tuple[float, str] = (float("-inf"), "")
        while entries > max_entries or total > max_bytes:
            rows = await self._store.query(
                "SELECT key, size, created_at FROM cache WHERE key != ? "
                "AND (created_at > ? OR (created_at = ? AND key > ?)) "
                "ORDER BY created_at, key LIMIT ?",
                (key, after[0], after[0], after[1], _EVICT_BATCH),
            )
            if not rows:
                break
            for row in rows:
                after = (float(row[2]), str(row[0]))
                if row[0] in doomed:
                    continue
                if entries <= max_entries and total <= max_bytes:
                    break
                doomed[row[0]] = int(row[1])
                entries -= 1
                total -= int(row[1])
        return entries, total

    def _hit_updates(self, replaced: str | None = None) -> tuple[list[Statement], dict[str, int]]:
        """Statements adding the pending hit counts to their rows, and the counts they cover
        (to pass to ``_write``, which forgets them once they are committed)."""
        counts = dict(self._pending_hits)
        # A replaced entry starts again at zero hits: its pending count is forgotten unwritten.
        statements: list[Statement] = [
            ("UPDATE cache SET hits = hits + ? WHERE key = ?", (count, key))
            for key, count in counts.items()
            if key != replaced
        ]
        return statements, counts

    async def _write(self, statements: list[Statement], hits: Mapping[str, int]) -> None:
        """Commit ``statements``; then forget the pending ``hits`` they wrote. Hits counted
        while the write was in flight stay pending, and so does everything if it fails."""
        if statements:
            # Request-path writes: committed without waiting for queued request-log rows.
            await self._store.write_many(statements, after_log=False)
        for key, count in hits.items():
            left = self._pending_hits.get(key, 0) - count
            if left > 0:
                self._pending_hits[key] = left
            else:
                self._pending_hits.pop(key, None)


def replay(response: ChatResponse) -> list[StreamEvent]:
    """The events of a stream that delivers ``response``: its text in chunks of a few dozen
    characters, then each tool call (a `ToolCallDelta` with its ``id`` and ``name``, then its
    arguments in chunks), then one `StreamEnd` with the finish reason and usage.

    Joining the text deltas gives ``response.text``, and joining each call's argument deltas
    gives its ``arguments``, exactly.
    """
    events: list[StreamEvent] = [TextDelta(chunk) for chunk in _chunks(response.text)]
    for index, call in enumerate(response.tool_calls):
        events.append(ToolCallDelta(index=index, id=call.id, name=call.name))
        events.extend(ToolCallDelta(index=index, arguments=c) for c in _chunks(call.arguments))
    events.append(StreamEnd(finish_reason=response.finish_reason, usage=response.usage))
    return events


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), _REPLAY_CHUNK_CHARS):
        yield text[start : start + _REPLAY_CHUNK_CHARS]


# -- decisions -------------------------------------------------------------------------------

_BYPASS_DISABLED = CacheDecision(False, False, "bypass", "cache disabled")
_BYPASS_OFF = CacheDecision(False, False, "bypass", "header off")
_BYPASS_OPT_IN = CacheDecision(False, False, "bypass", "opt-in mode, header not on")
_BYPASS_NONDETERMINISTIC = CacheDecision(False, False, "bypass", "no temperature 0 or seed")
_REFRESH = CacheDecision(False, True, "refresh", "header refresh")
_LOOKUP_ON = CacheDecision(True, True, "miss", "header on")
_LOOKUP_TEMPERATURE = CacheDecision(True, True, "miss", "temperature 0")
_LOOKUP_SEED = CacheDecision(True, True, "miss", "seed")


# -- the key ---------------------------------------------------------------------------------


def _message(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": [
            {"type": "text", "text": part.text}
            if isinstance(part, TextPart)
            else {"type": "image", "url": part.url}
            for part in message.content
        ],
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ],
        "tool_call_id": message.tool_call_id,
        "is_error": message.is_error,
        "name": message.name,
    }


def _float(value: float | None) -> float | None:
    # + 0.0 turns -0.0 into 0.0: the same sampling setting, the same key.
    return None if value is None else float(value) + 0.0


def _plain(value: object) -> object:
    """orjson's fallback for the values it cannot serialise itself: read-only mappings."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be part of a cache key")


# -- the stored answer -----------------------------------------------------------------------


def _encode(response: ChatResponse) -> bytes:
    return orjson.dumps(
        {
            "v": _BLOB_VERSION,
            "text": response.text,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls
            ],
            "finish_reason": response.finish_reason,
            "usage": {
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
            },
            "model": response.model,
        }
    )


def _decode(blob: bytes) -> ChatResponse:
    """The response ``_encode`` stored; ``ValueError`` for anything else."""
    data = orjson.loads(blob)
    if not isinstance(data, dict) or data.get("v") != _BLOB_VERSION:
        raise ValueError("not a cached answer of a known format")
    finish = data["finish_reason"]
    if finish not in _FINISH_REASONS:
        raise ValueError(f"unknown finish reason {finish!r}")
    usage = data["usage"]
    return ChatResponse(
        text=_str(data["text"]),
        tool_calls=tuple(
            ToolCall(id=_str(c["id"]), name=_str(c["name"]), arguments=_str(c["arguments"]))
            for c in data["tool_calls"]
        ),
        finish_reason=finish,
        usage=Usage(
            input_tokens=_int(usage["input_tokens"]), output_tokens=_int(usage["output_tokens"])
        ),
        model=_str(data["model"]),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value
