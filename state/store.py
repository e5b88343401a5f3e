"""The state store: one SQLite file, one connection, one writer task.

``Store`` is the only owner of the state file's connection. What a caller may rely on:

- **Request-log writes never wait on disk.** ``log_request``/``log_attempt`` are plain functions:
  they append to an in-memory queue and return. One writer task commits the queue in groups
  (one transaction per group) every ``flush_interval`` seconds or ``flush_max_rows`` rows,
  whichever comes first. A process crash loses at most what was not yet committed.
- **The queue is bounded.** Beyond ``max_queued_rows`` waiting rows, each new row makes the
  oldest waiting row be dropped and counted in ``stats.dropped``: under a disk that cannot keep
  up, the request log loses its oldest unwritten rows instead of the process its memory.
- **Durable writes are on disk when they return.** ``write``, ``write_many``, ``audit``,
  ``kv_set`` and ``kv_delete`` go through the same writer, after every row logged before them,
  each in its own transaction; they return only after COMMIT, and raise if it failed. A failure
  reaches only its own caller; the writer and everything else queued carry on.
- **Reads see committed data** and never observe half of a group commit.
- **Shutdown drains.** Leaving ``async with`` commits everything still queued, then closes the
  connection. Closing twice, or after an error, is safe.

``log_*``, ``write*``, ``flush`` and the reads must be called from the event loop the store was
opened on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiosqlite

from state.errors import StateError
from state.migrations import (
    LATEST_VERSION,
    migrate,
    newer_schema_error,
    read_version,
    rollback_quietly,
)
from state.records import AttemptRecord, RequestRecord
from state.rows import (
    INSERT_ATTEMPT,
    INSERT_REQUEST,
    SELECT_ATTEMPT,
    SELECT_REQUEST,
    attempt_from_row,
    attempt_params,
    request_from_row,
    request_params,
)

__all__ = ["Statement", "Store", "StoreStats"]

LOG = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock before failing."""

DEFAULT_MAX_QUEUED_ROWS = 100_000
CHECKPOINT_INTERVAL_S = 5.0
CHECKPOINT_TRUNCATE_BYTES = 16 * 1024 * 1024
TRUNCATE_BUSY_TIMEOUT_MS = 20
"""How long a TRUNCATE checkpoint waits for other processes on the file before giving up until
the next pass: the writer, and every request waiting on a ledger write, waits with it."""

Statement = tuple[str, Sequence[Any]]
"""One SQL statement and its parameters, as taken by ``Store.write_many``."""

# Errors that belong to one row (a NULL in a NOT NULL column, a value SQLite cannot bind):
# worth retrying the rest of the batch without that row. Anything else (disk full, I/O, a lock
# held past busy_timeout) would fail each row the same way, so the batch is given up at once.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)

_LogRow = RequestRecord | AttemptRecord


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the writer's counters; counts are rows since the store was opened."""

    queued: int
    """Rows logged and not yet committed, dropped or failed."""
    written: int
    """Rows committed by group commits."""
    batches: int
    """Group-commit transactions committed."""
    dropped: int
    """Oldest rows discarded because the queue was over ``max_queued_rows``."""
    failed: int = 0
    """Rows the database refused (see ``last_error``)."""
    last_flush_ms: float | None = None
    """Duration of the last group commit, BEGIN to COMMIT; None before the first."""
    last_error: str | None = None
    """The writer's most recent error with request-log rows, for display."""


@dataclass(slots=True)
class _Op:
    """A durable write (or, with no statements, a flush barrier) waiting for the writer."""

    after: int
    """How many rows had been logged when the op was submitted: they are committed first."""
    statements: tuple[Statement, ...]
    future: asyncio.Future[int | None]


class Store:
    """The state file: open it with ``async with Store(path) as store:``.

    On entry the file (and its directory) is created if missing, put in WAL mode with
    ``synchronous=NORMAL``, ``busy_timeout`` and ``foreign_keys=ON``, and migrated to the
    current schema. A file from a newer routedeck is refused without being modified. Every
    problem opening the file raises ``StateError`` naming the file and what to do.

    ``flush_interval`` (seconds) and ``flush_max_rows`` bound how long and how many logged rows
    wait before a group commit; ``max_queued_rows`` is the queue's high-water mark. ``clock``
    stamps audit entries and settings (Unix seconds).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 0.01,
        flush_max_rows: int = 512,
        max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0, got {flush_interval}")
        if flush_max_rows < 1:
            raise ValueError(f"flush_max_rows must be >= 1, got {flush_max_rows}")
        if max_queued_rows < 1:
            raise ValueError(f"max_queued_rows must be >= 1, got {max_queued_rows}")
        self._path = os.fspath(path)
        self._flush_interval = flush_interval
        self._flush_max_rows = flush_max_rows
        self._max_queued_rows = max_queued_rows
        self._clock = clock

        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._conn: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        # Set whenever there is something to write; cleared by the writer before it idles.
        self._wake = asyncio.Event()
        # Set when the writer should stop waiting for more rows: a full batch, a durable write
        # or flush waiting, or shutdown.
        self._urgent = asyncio.Event()
        # Serialises the connection between the writer's transactions and reads, so a read
        # never runs inside (and sees the uncommitted half of) a group commit.
        self._lock = asyncio.Lock()

        self._rows: deque[_LogRow] = deque()
        self._ops: deque[_Op] = deque()
        # When the waiting rows must be committed (loop time): flush_interval after the first
        # of them arrived. Durable writes that do not wait for rows do not move it.
        self._rows_due = 0.0
        self._logged = 0  # rows ever accepted by log_*
        self._taken = 0  # rows ever taken by the writer or dropped; rows[0] is row number _taken
        self._inflight = 0
        self._written = 0
        self._batches = 0
        self._dropped = 0
        self._failed = 0
        self._last_flush_ms: float | None = None
        self._last_error: str | None = None

    @property
    def path(self) -> str:
        """The state file's path, as given."""
        return self._path

    @property
    def stats(self) -> StoreStats:
        """The writer's counters now; cheap enough to read on every console refresh."""
        return StoreStats(
            queued=len(self._rows) + self._inflight,
            written=self._written,
            batches=self._batches,
            dropped=self._dropped,
            failed=self._failed,
            last_flush_ms=self._last_flush_ms,
            last_error=self._last_error,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise StateError("A Store can be opened only once; create a new Store to reopen.")
        self._state = "closed"  # until fully open: a failed open leaves nothing to close
        try:
            conn = await self._connect()
            try:
                await self._prepare(conn)
            except BaseException:
                await _close_quietly(conn)
                raise
        except BaseException:
            self._closed.set()
            raise
        self._conn = conn
        self._state = "open"
        self._writer = asyncio.create_task(self._write_loop(), name=f"state writer {self._path}")
        if self._path != ":memory:":
            self._checkpoints = asyncio.create_task(
                self._checkpointer(), name=f"state checkpoints {self._path}"
            )
        return self

    async def _checkpointer(self) -> None:
        """Checkpoint the WAL every few seconds (see `_checkpoint_once`)."""
        conn: sqlite3.Connection | None = None
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL_S)
                try:
                    if conn is None:
                        conn = await asyncio.to_thread(
                            sqlite3.connect, self._path, check_same_thread=False
                        )
                        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    await self._checkpoint_once(conn)
                except sqlite3.Error as exc:
                    LOG.warning("checkpointing %s failed (%s); trying again later", self._path, exc)
        finally:
            if conn is not None:
                conn.close()

    async def _checkpoint_once(self, conn: sqlite3.Connection) -> None:
        """One checkpoint pass: a PASSIVE checkpoint on ``conn`` (a connection of its own) in a
        thread of its own, then, if the WAL is still over `CHECKPOINT_TRUNCATE_BYTES`, a
        TRUNCATE on the writer's connection between two group commits.

        PASSIVE copies what no reader still needs without blocking the writer, but under steady
        writes it never catches up (frames keep arriving while it copies) and the WAL grows
        without end. TRUNCATE resets it, but it blocks new writers while it waits for the
        current one, and run from another connection that wait went through SQLite's busy
        handler on both sides (sleeps of 1, 2, 5, 10 ms ...): the ledger writes requests wait
        for stalled for 100-400 ms. Run by the writer's own connection, in turn with the group
        commits, there is no other writer to wait for in this process, and the pause is the copy
        of the frames written since the PASSIVE pass plus one fsync: a few milliseconds."""
        wal = f"{self._path}-wal"
        if not await asyncio.to_thread(_checkpoint_sync, conn, wal):
            return
        async with self._lock:
            if self._conn is None:
                return
            if not await _in_db_thread(self._conn, _truncate_sync):
                LOG.info(
                    "the WAL of %s was not reset: another connection was busy; trying again later",
                    self._path,
                )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit everything queued, then close the connection. Safe to call more than once.

        If the caller is cancelled while the queue drains, the writer is stopped and rows not
        yet committed are lost; durable writes still waiting raise ``StateError``.
        """
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
        if self._state == "closed" or self._state == "closing":
            await self._closed.wait()
            return
        self._state = "closing"
        self._wake.set()
        self._urgent.set()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.wait([self._checkpoints])
        writer = self._writer
        try:
            if writer is not None:
                # asyncio.wait, not await: cancelling close() must not cancel the writer
                # mid-transaction implicitly; the finally block stops it deliberately.
                await asyncio.wait([writer])
        finally:
            if writer is not None and not writer.done():
                writer.cancel()
                await asyncio.wait([writer])
            if writer is not None and not writer.cancelled():
                # Retrieve the error so asyncio does not report it again: the writer logged it.
                writer.exception()
            if self._conn is not None:
                await _close_quietly(self._conn)
                self._conn = None
            self._state = "closed"
            self._closed.set()

    async def _connect(self) -> aiosqlite.Connection:
        if self._path != ":memory:":
            parent = Path(self._path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(
                    f"Cannot create the directory {parent} for the state file {self._path}: "
                    f"{exc.strerror or exc}. Create it with write permission, or set [state] path "
                    f"in --config to a writable location."
                ) from exc
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so what
            # a batch or a durable write covers is decided here, not by the sqlite3 module.
            return await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # The first statement that reads the file: a non-database fails here, before
            # anything below could write to it.
            version = await read_version(conn)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        if version > LATEST_VERSION:
            raise newer_schema_error(self._path, version, LATEST_VERSION)
        try:
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            if self._path != ":memory:":
                # Checkpoints copy the WAL into the file and fsync it: hundreds of milliseconds
                # on a slow disk. Run by the committing connection they stall the writer and
                # every durable write waiting on it; `_checkpointer` runs them beside it.
                await conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        journal_mode = str(row[0]).lower() if row is not None else "unknown"
        if journal_mode != "wal" and self._path != ":memory:":
            LOG.warning(
                "state file %s is in journal mode %s, not WAL: readers may block the writer",
                self._path,
                journal_mode,
            )
        await migrate(conn, self._path)
        conn.row_factory = sqlite3.Row

    def _open_error(self, exc: sqlite3.Error) -> StateError:
        message = str(exc)
        if "not a database" in message:
            return StateError(
                f"The state file {self._path} is not a SQLite database ({message}). Move it "
                f"aside, or set [state] path in --config to another file."
            )
        if "locked" in message or "busy" in message:
            return StateError(
                f"The state file {self._path} is locked by another process ({message}). Stop "
                f"the other routedeck using it, or set [state] path in --config to another file."
            )
        return StateError(
            f"Cannot open the state file {self._path}: {message}. Check that it and its "
            f"directory are readable and writable, or set [state] path in --config to another file."
        )

    # -- request log: never waits -------------------------------------------------------------

    def log_request(self, rec: RequestRecord) -> None:
        """Queue a request row for the next group commit and return at once.

        A row with the request_id of an earlier one replaces it. If more than
        ``max_queued_rows`` rows are waiting, the oldest is dropped (``stats.dropped``).
        Raises ``StateError`` once the store is closed.
        """
        if not isinstance(rec, RequestRecord):
            raise TypeError(f"log_request takes a RequestRecord, not {type(rec).__name__}")
        self._enqueue(rec)

    def log_attempt(self, rec: AttemptRecord) -> None:
        """Queue an attempt row for the next group commit and return at once.

        A row with the (request_id, attempt) of an earlier one replaces it. Shares the queue
        and its high-water mark with ``log_request``. Raises ``StateError`` once the store is
        closed.
        """
        if not isinstance(rec, AttemptRecord):
            raise TypeError(f"log_attempt takes an AttemptRecord, not {type(rec).__name__}")
        self._enqueue(rec)

    def _enqueue(self, rec: _LogRow) -> None:
        self._require_writer()
        rows = self._rows
        if len(rows) >= self._max_queued_rows:
            rows.popleft()
            self._taken += 1
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                LOG.warning(
                    "state writer for %s is behind: %d request-log rows dropped so far",
                    self._path,
                    self._dropped,
                )
        if not rows:
            self._rows_due = asyncio.get_running_loop().time() + self._flush_interval
        rows.append(rec)
        self._logged += 1
        self._wake.set()
        if len(rows) >= self._flush_max_rows:
            self._urgent.set()

    # -- durable writes: return after COMMIT --------------------------------------------------

    async def write(self, sql: str, params: Sequence[Any] = (), *, after_log: bool = True) -> None:
        """Run one statement in its own transaction; return once it is committed.

        Everything logged or written before the call is committed first; with
        ``after_log=False`` only what was *written* before it is: request-log rows queued before
        the call keep waiting for their own group commit instead of joining this one. That is
        for writes on the request path (the spend ledger), whose caller waits for the commit:
        a one-row transaction commits in a tenth of the time of one carrying the log rows and
        their indexes, and the rows are then committed in larger groups.

        An error (as ``sqlite3.Error``) is raised here and affects nothing else. ``sql`` must
        not contain BEGIN, COMMIT or ROLLBACK. If the caller is cancelled, the write may or may
        not happen.
        """
        await self._submit(((sql, params),), after_log=after_log)

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT in its own transaction like ``write``; return the new row's id."""
        rowid = await self._submit(((sql, params),))
        if rowid is None:
            raise StateError(f"The row was written to {self._path} but got no id.")
        return rowid

    async def write_many(self, statements: Sequence[Statement], *, after_log: bool = True) -> None:
        """Run statements in order in ONE transaction: all are committed, or none and it raises.

        Same ordering and error guarantees as ``write`` (and the same ``after_log``).
        """
        await self._submit(tuple(statements), after_log=after_log)

    async def audit(
        self,
        actor: str,
        action: str,
        target: str | None,
        detail: Mapping[str, Any],
        result: str,
    ) -> int:
        """Record an operator action durably and return its audit id (increasing, never reused).

        ``detail`` must be JSON-serialisable; if not, ``TypeError``/``ValueError`` is raised
        and nothing is written.
        """
        detail_json = _dumps(dict(detail))
        return await self.insert(
            "INSERT INTO audit (at, actor, action, target, detail, result) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), actor, action, target, detail_json, result),
        )

    async def kv_set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable setting durably; returns after COMMIT."""
        await self._submit(
            (
                (
                    "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, updated_at = excluded.updated_at",
                    (key, _dumps(value), self._clock()),
                ),
            )
        )

    async def bump_state(self) -> None:
        """Count a change to shared operator state (drains, safe mode, keys, releases), so that
        other processes on this file reload it (`state_seq`); returns after COMMIT."""
        await self._submit((bump_statement(self._clock()),))

    async def state_seq(self) -> int:
        """How many shared-state changes this file has seen (see `bump_state`)."""
        rows = await self.query("SELECT value FROM kv WHERE key = 'state_seq'")
        return int(rows[0][0]) if rows else 0

    async def take_lease(self, name: str, owner: str, *, now: float, ttl_s: float) -> bool:
        """Hold the lease ``name`` for ``ttl_s`` more seconds if it is free, expired or already
        ours; True when ``owner`` holds it afterwards. One process at a time runs the work a
        lease guards (automatic gate decisions, retention), whatever the processes sharing the
        file."""
        value = _dumps({"owner": owner, "until": now + ttl_s})
        await self._submit(
            (
                (
                    "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at "
                    "WHERE json_extract(kv.value, '$.owner') = ? "
                    "OR json_extract(kv.value, '$.until') < ?",
                    (f"lease:{name}", value, now, owner, now),
                ),
            )
        )
        holder = await self.kv_get(f"lease:{name}")
        return isinstance(holder, dict) and holder.get("owner") == owner

    async def kv_delete(self, key: str) -> None:
        """Remove a setting durably (nothing happens if it is absent); returns after COMMIT."""
        await self._submit((("DELETE FROM kv WHERE key = ?", (key,)),))

    async def flush(self) -> None:
        """Wait until every row logged and every write submitted before this call is committed.

        Rows the database refused or the queue dropped count as done (see ``stats``).
        """
        await self._submit(())

    def _submit(
        self, statements: tuple[Statement, ...], *, after_log: bool = True
    ) -> asyncio.Future[int | None]:
        self._require_writer()
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._ops.append(_Op(self._logged if after_log else 0, statements, future))
        self._wake.set()
        self._urgent.set()
        return future

    def _require_writer(self) -> None:
        # The writer returns only once it saw the queue empty while closing, in the same step
        # it ends in, so "not done" means it will still see anything queued now.
        if self._writer is None or self._writer.done():
            state = "not open yet" if self._state == "new" else "closed"
            raise StateError(f"The state store {self._path} is {state}; nothing was queued.")

    # -- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._rows and not self._ops:
                    if self._state != "open":
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not self._ops and not self._rows_are_due():
                    # Let a group gather: commit when its first row has waited flush_interval,
                    # or sooner if urgent.
                    self._urgent.clear()
                    try:
                        async with asyncio.timeout_at(self._rows_due):
                            await self._urgent.wait()
                    except TimeoutError:
                        pass
                await self._write_step()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                LOG.exception("state writer for %s stopped", self._path)
            self._abandon_queue(exc)
            raise

    def _rows_are_due(self) -> bool:
        return (
            len(self._rows) >= self._flush_max_rows
            or self._state != "open"
            or self._flush_interval <= 0
            or asyncio.get_running_loop().time() >= self._rows_due
        )

    async def _write_step(self) -> None:
        """Commit the next group: every durable op whose rows can be in it, and the rows -- all
        waiting rows once they are due, else only those the ops must follow -- in ONE
        transaction run by ONE call on the database thread (group commit)."""
        available = min(len(self._rows), self._flush_max_rows)
        ops: list[_Op] = []
        needed = 0
        while self._ops and self._ops[0].after <= self._taken + available:
            op = self._ops.popleft()
            needed = max(needed, op.after - self._taken)
            if not op.future.done():  # a caller cancelled before its turn: skip it
                ops.append(op)
        due = self._rows_are_due()
        count = available if due else needed
        if due and len(self._rows) > count:
            self._rows_due = asyncio.get_running_loop().time() + self._flush_interval
        batch = [self._rows.popleft() for _ in range(count)]
        self._taken += count
        if not batch and not ops:
            return
        self._inflight = count
        try:
            if not await self._commit_group(batch, ops):
                # Something in the group was refused: keep the good rows, then give each op
                # its own transaction so that one caller's failure is not another's.
                if batch:
                    await self._commit_rows(batch)
                for op in ops:
                    await self._apply(op)
        except BaseException as exc:
            self._failed += count  # the writer is stopping; this batch will not land
            error = StateError(
                f"The state writer for {self._path} stopped ({type(exc).__name__}); "
                f"this write was not committed."
            )
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(error)
            raise
        finally:
            self._inflight = 0

    async def _commit_group(self, batch: list[_LogRow], ops: list[_Op]) -> bool:
        """True when the whole group committed; False (nothing committed) when a row or an op
        was refused."""
        requests = [r for r in batch if isinstance(r, RequestRecord)]
        attempts = [r for r in batch if isinstance(r, AttemptRecord)]
        statements = [op.statements for op in ops]
        started = time.perf_counter()
        try:
            async with self._lock:
                conn = self._connection()
                rowids = await _in_db_thread(conn, _commit_sync, requests, attempts, statements)
        except sqlite3.Error:
            return False
        if batch:
            self._last_flush_ms = (time.perf_counter() - started) * 1000.0
            self._written += len(batch)
            self._batches += 1
        for op, rowid in zip(ops, rowids, strict=True):
            if not op.future.done():
                op.future.set_result(rowid)
        return True

    async def _commit_rows(self, batch: list[_LogRow]) -> None:
        requests: list[RequestRecord] = []
        attempts: list[AttemptRecord] = []
        for rec in batch:
            if isinstance(rec, RequestRecord):
                requests.append(rec)
            else:
                attempts.append(rec)
        started = time.perf_counter()
        try:
            async with self._lock:
                conn = self._connection()
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    # Lazy maps: parameter tuples are built on the database thread.
                    if requests:
                        await conn.executemany(INSERT_REQUEST, map(request_params, requests))
                    if attempts:
                        await conn.executemany(INSERT_ATTEMPT, map(attempt_params, attempts))
                    await conn.execute("COMMIT")
                except BaseException:
                    await rollback_quietly(conn)
                    raise
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                self._reject(len(batch), exc)
            else:
                await self._commit_rows_one_by_one(requests, attempts)
            return
        except sqlite3.Error as exc:
            self._reject(len(batch), exc)
            return
        self._last_flush_ms = (time.perf_counter() - started) * 1000.0
        self._written += len(batch)
        self._batches += 1

    async def _commit_rows_one_by_one(
        self, requests: list[RequestRecord], attempts: list[AttemptRecord]
    ) -> None:
        """Keep the good rows of a batch that one bad row made fail."""
        rows: list[tuple[str, tuple[Any, ...]]] = [
            (INSERT_REQUEST, request_params(r)) for r in requests
        ]
        rows += [(INSERT_ATTEMPT, attempt_params(a)) for a in attempts]
        for sql, params in rows:
            try:
                async with self._lock:
                    # Autocommit: each row is its own transaction.
                    await self._connection().execute(sql, params)
            except sqlite3.Error as exc:
                self._reject(1, exc)
            else:
                self._written += 1

    def _reject(self, count: int, exc: sqlite3.Error) -> None:
        self._failed += count
        self._last_error = f"{type(exc).__name__}: {exc}"
        LOG.error(
            "state file %s refused %d request-log row(s): %s", self._path, count, self._last_error
        )

    async def _apply(self, op: _Op) -> None:
        future = op.future
        if future.done():
            return  # the caller was cancelled before its turn came
        if not op.statements:
            future.set_result(None)
            return
        rowid: int | None = None
        try:
            async with self._lock:
                conn = self._connection()
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in op.statements:
                        async with conn.execute(sql, params) as cursor:
                            rowid = cursor.lastrowid
                    await conn.execute("COMMIT")
                except BaseException:
                    await rollback_quietly(conn)
                    raise
        except Exception as exc:
            # The caller's failure, not the writer's: hand it over and carry on.
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(rowid)

    def _abandon_queue(self, exc: BaseException) -> None:
        error = StateError(
            f"The state writer for {self._path} stopped ({type(exc).__name__}); "
            f"this write was not committed."
        )
        while self._ops:
            future = self._ops.popleft().future
            if not future.done():
                future.set_exception(error)
        self._failed += len(self._rows)
        self._taken += len(self._rows)
        self._rows.clear()

    # -- reads --------------------------------------------------------------------------------

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return its rows (indexable by name and position).

        Sees everything committed, including other processes' commits; not for writes, which
        would bypass the ordering ``write`` guarantees.
        """
        async with self._lock:
            rows = await self._connection().execute_fetchall(sql, params)
        return list(rows)

    async def fetch_requests(
        self, *, since: float | None = None, limit: int = 1000
    ) -> list[RequestRecord]:
        """The latest ``limit`` requests started at or after ``since``, oldest first."""
        where, params = ("", ()) if since is None else (" WHERE started_at >= ?", (since,))
        rows = await self.query(
            f"{SELECT_REQUEST}{where} ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (*params, _limit(limit)),
        )
        return [request_from_row(row) for row in reversed(rows)]

    async def fetch_attempts(
        self, request_id: str | None = None, *, limit: int = 10000
    ) -> list[AttemptRecord]:
        """One request's attempts in attempt order, or without ``request_id`` the latest
        ``limit`` attempts of all requests, oldest first."""
        if request_id is not None:
            rows = await self.query(
                f"{SELECT_ATTEMPT} WHERE request_id = ? ORDER BY attempt LIMIT ?",
                (request_id, _limit(limit)),
            )
            return [attempt_from_row(row) for row in rows]
        rows = await self.query(
            f"{SELECT_ATTEMPT} ORDER BY started_at DESC, rowid DESC LIMIT ?", (_limit(limit),)
        )
        return [attempt_from_row(row) for row in reversed(rows)]

    async def fetch_audit(
        self,
        limit: int = 100,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        result: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` audit entries matching every filter given, oldest first, as
        dicts with keys id, at, actor, action, target, detail (decoded) and result.

        ``action`` matches a prefix (``keys`` finds ``keys.create`` and ``keys.revoke``);
        ``text`` is a case-insensitive substring of the detail (reason, summary, before and
        after); ``after_id`` returns only newer entries (for following the log)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("actor", actor), ("target", target), ("result", result)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if action is not None:
            where.append("action LIKE ? ESCAPE '\\'")
            params.append(_like_prefix(action))
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        if text is not None:
            where.append("instr(lower(detail), lower(?)) > 0")
            params.append(text)
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self.query(
            "SELECT id, at, actor, action, target, detail, result FROM audit "
            f"{clause}ORDER BY id DESC LIMIT ?",
            (*params, _limit(limit)),
        )
        entries = []
        for row in reversed(rows):
            entry = dict(zip(row.keys(), row, strict=True))
            entry["detail"] = json.loads(entry["detail"])
            entries.append(entry)
        return entries

    async def kv_get(self, key: str) -> Any | None:
        """The setting's value, or None if it was never set (or was set to None)."""
        rows = await self.query("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StateError(f"The state store {self._path} is not open.")
        return self._conn


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


def _checkpoint_sync(conn: sqlite3.Connection, wal: str) -> bool:
    """A PASSIVE checkpoint; True when the WAL is still big enough to want a TRUNCATE."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return os.path.exists(wal) and os.path.getsize(wal) > CHECKPOINT_TRUNCATE_BYTES


def _truncate_sync(conn: sqlite3.Connection) -> bool:
    """TRUNCATE checkpoint on the writer's connection, waiting at most
    `TRUNCATE_BUSY_TIMEOUT_MS` for other processes' readers and writers; True when it reset
    the WAL."""
    conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_BUSY_TIMEOUT_MS}")
    try:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:  # busy beyond the timeout
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return row is not None and row[0] == 0


async def _in_db_thread(conn: aiosqlite.Connection, fn: Any, *args: Any) -> Any:
    """Run ``fn(sqlite3_connection, *args)`` on aiosqlite's database thread, in one hop.

    aiosqlite makes one thread hop per statement; a group commit of rows, a ledger update and
    their BEGIN/COMMIT is a dozen hops, which dominated the writer's CPU per request. This uses
    aiosqlite's own queue (`Connection._execute`, stable across its releases), so the call is
    still serialised with every other use of the connection."""
    raw = conn._conn
    return await conn._execute(fn, raw, *args)  # type: ignore[no-untyped-call]


def _commit_sync(
    conn: sqlite3.Connection,
    requests: list[RequestRecord],
    attempts: list[AttemptRecord],
    ops: list[tuple[Statement, ...]],
) -> list[int | None]:
    """One transaction on the database thread: the rows, then each op's statements in order;
    returns each op's last row id. Nothing is committed when anything fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if requests:
            conn.executemany(INSERT_REQUEST, map(request_params, requests))
        if attempts:
            conn.executemany(INSERT_ATTEMPT, map(attempt_params, attempts))
        rowids: list[int | None] = []
        for statements in ops:
            rowid: int | None = None
            for sql, params in statements:
                rowid = conn.execute(sql, params).lastrowid
            rowids.append(rowid)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return rowids


def bump_statement(now: float) -> Statement:
    """The statement `Store.bump_state` runs, to put in a transaction with the change itself."""
    return (
        "INSERT INTO kv (key, value, updated_at) VALUES ('state_seq', '1', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1, "
        "updated_at = excluded.updated_at",
        (now,),
    )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _dumps(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON, and other tools read these columns too.
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    try:
        await conn.close()
    except (sqlite3.Error, ValueError) as exc:
        LOG.warning("closing the state file failed: %s", exc)
