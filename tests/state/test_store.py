"""The state store against real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from state.errors import StateError
from state.migrations import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    migrate,
    read_version,
    split_statements,
)
from state.records import AttemptRecord, RequestRecord
from state.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_request(i: int = 0, **changes: Any) -> RequestRecord:
    rec = RequestRecord(
        request_id=f"req-{i:06d}",
        started_at=1_700_000_000.0 + i,
        tenant="acme",
        api="openai",
        model_requested="gpt-4o-mini",
        tier="high",
        tier_reason="alias",
        arm="baseline",
        deployment="openai-mini",
        provider="openai",
        stream=True,
        status=200,
        outcome="ok",
        attempts=2,
        fallback=True,
        latency_ms=812.5,
        ttft_ms=95.25,
        input_tokens=1200,
        output_tokens=340,
        cost_usd=0.00123,
        cache="miss",
        error=None,
    )
    return dataclasses.replace(rec, **changes)


def make_attempt(i: int = 0, attempt: int = 1, **changes: Any) -> AttemptRecord:
    rec = AttemptRecord(
        request_id=f"req-{i:06d}",
        attempt=attempt,
        started_at=1_700_000_000.0 + i + attempt / 10,
        deployment="anthropic-haiku",
        provider="anthropic",
        model="claude-haiku",
        outcome="ok",
        http_status=200,
        latency_ms=400.0,
        ttft_ms=50.0,
        input_tokens=1200,
        output_tokens=340,
        error=None,
    )
    return dataclasses.replace(rec, **changes)


@contextlib.contextmanager
def other_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """An independent connection, as another process would have."""
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


def count(path: Path, table: str) -> int:
    with other_connection(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "state.db"


# -- opening, schema and migrations ---------------------------------------------------------


async def test_open_creates_file_in_wal_mode_at_latest_version(db: Path) -> None:
    async with Store(db):
        pass
    with other_connection(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        columns = {
            table: [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("requests", "attempts", "audit", "kv")
        }
    assert {"requests", "attempts", "audit", "kv"} <= tables
    assert {"requests_started_at", "requests_tenant", "requests_deployment"} <= indexes
    assert {"attempts_started_at", "attempts_deployment"} <= indexes
    assert columns["requests"] == [f.name for f in dataclasses.fields(RequestRecord)]
    assert columns["attempts"] == [f.name for f in dataclasses.fields(AttemptRecord)]
    assert columns["audit"] == ["id", "at", "actor", "action", "target", "detail", "result"]
    assert columns["kv"] == ["key", "value", "updated_at"]


async def test_reopening_does_not_migrate_again_and_keeps_data(db: Path) -> None:
    async with Store(db) as store:
        store.log_request(make_request(1))
        await store.kv_set("safe_mode", True)
    async with Store(db) as store:
        assert [r.request_id for r in await store.fetch_requests()] == ["req-000001"]
        assert await store.kv_get("safe_mode") is True
    with other_connection(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION


async def test_newer_schema_is_refused_and_file_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with other_connection(path) as conn:
        conn.execute("CREATE TABLE from_the_future (x)")
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
        conn.commit()
    before = path.read_bytes()

    with pytest.raises(StateError) as excinfo:
        async with Store(path):
            pytest.fail("a newer file must not open")

    message = str(excinfo.value)
    assert str(path) in message
    assert "Upgrade routedeck" in message and "--config" in message
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["future.db"]  # no -wal or -shm either


async def test_failed_migration_rolls_back_to_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    broken = (
        *MIGRATIONS,
        Migration(
            LATEST_VERSION + 1,
            "half-good",
            "CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);",
        ),
    )
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        with pytest.raises(StateError, match=f"Migration {LATEST_VERSION + 1} \\(half-good\\)"):
            await migrate(conn, path, broken)
        assert await read_version(conn) == LATEST_VERSION
        async with conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'") as cur:
            assert await cur.fetchall() == []


def test_split_statements_respects_strings_comments_and_triggers() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d';
            DELETE FROM t WHERE 0;
        END;
        INSERT INTO t VALUES ('e')
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t VALUES ('e')"


async def test_unusable_paths_raise_state_error_naming_the_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    with pytest.raises(StateError, match="Cannot create the directory") as excinfo:
        async with Store(not_a_dir / "state.db"):
            pass
    assert str(not_a_dir / "state.db") in str(excinfo.value)

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite, just some text " * 200)
    before = garbage.read_bytes()
    with pytest.raises(StateError, match="is not a SQLite database") as excinfo:
        async with Store(garbage):
            pass
    assert str(garbage) in str(excinfo.value)
    assert garbage.read_bytes() == before


# -- request log ----------------------------------------------------------------------------


async def test_records_round_trip_with_none_fields(db: Path) -> None:
    full = make_request(1)
    sparse = make_request(
        2,
        tier=None,
        tier_reason=None,
        deployment=None,
        provider=None,
        stream=False,
        fallback=False,
        status=503,
        outcome="5xx",
        ttft_ms=None,
        input_tokens=None,
        output_tokens=None,
        cost_usd=None,
        error="every deployment failed",
    )
    attempts = [
        make_attempt(2, 1, outcome="timeout", http_status=None, ttft_ms=None, error="timed out"),
        make_attempt(2, 2, input_tokens=None, output_tokens=None),
    ]
    async with Store(db) as store:
        store.log_request(full)
        store.log_request(sparse)
        for attempt in attempts:
            store.log_attempt(attempt)
        await store.flush()
        assert await store.fetch_requests() == [full, sparse]
        assert await store.fetch_attempts("req-000002") == attempts
        assert await store.fetch_attempts("req-000001") == []
        assert await store.fetch_attempts() == attempts
        fetched = await store.fetch_requests()
    assert type(fetched[0].stream) is bool and type(fetched[1].fallback) is bool


async def test_fetch_requests_returns_latest_since_oldest_first(db: Path) -> None:
    async with Store(db) as store:
        for i in range(10):
            store.log_request(make_request(i))
        await store.flush()
        latest = await store.fetch_requests(limit=3)
        since = await store.fetch_requests(since=1_700_000_007.0)
    assert [r.request_id for r in latest] == ["req-000007", "req-000008", "req-000009"]
    assert [r.request_id for r in since] == ["req-000007", "req-000008", "req-000009"]


async def test_log_is_plain_and_shutdown_commits_10k_rows_in_few_batches(db: Path) -> None:
    assert not inspect.iscoroutinefunction(Store.log_request)
    assert not inspect.iscoroutinefunction(Store.log_attempt)
    rows = 10_000
    async with Store(db, flush_max_rows=512) as store:
        for i in range(rows // 2):
            store.log_request(make_request(i))
            store.log_attempt(make_attempt(i))
        # Nothing was awaited, so the writer has not run yet: everything is in memory.
        assert store.stats.queued == rows
        assert store.stats.written == 0
    stats = store.stats
    assert count(db, "requests") == rows // 2
    assert count(db, "attempts") == rows // 2
    assert stats.written == rows and stats.queued == 0 and stats.dropped == 0
    assert stats.batches <= math.ceil(rows / 512) + 1
    assert stats.last_flush_ms is not None


async def _wait_until(predicate: Callable[[], bool]) -> None:
    """Poll with a deadline: the store announces no event for a commit nobody waited on."""
    async with asyncio.timeout(2.0):
        while not predicate():  # noqa: ASYNC110 - polling is the point: no flush() to await
            await asyncio.sleep(0.001)


async def test_group_commit_triggers_on_interval_and_on_row_count(tmp_path: Path) -> None:
    async with Store(tmp_path / "a.db", flush_interval=0.005, flush_max_rows=1000) as store:
        store.log_request(make_request(1))
        await _wait_until(lambda: store.stats.written == 1)  # no flush(): the timer commits
    # An hour-long interval: only reaching flush_max_rows can commit these rows.
    async with Store(tmp_path / "b.db", flush_interval=3600, flush_max_rows=5) as store:
        for i in range(5):
            store.log_request(make_request(i))
        await _wait_until(lambda: store.stats.written == 5)
        assert store.stats.batches == 1


async def test_queue_over_high_water_drops_oldest_rows_and_counts_them(db: Path) -> None:
    async with Store(db, max_queued_rows=100) as store:
        for i in range(250):
            store.log_request(make_request(i))
        assert store.stats.dropped == 150
        assert store.stats.queued == 100
        await store.flush()
        kept = await store.fetch_requests()
    assert [r.request_id for r in kept] == [f"req-{i:06d}" for i in range(150, 250)]
    assert store.stats.written == 100


async def test_a_row_the_database_refuses_does_not_lose_its_batch(db: Path) -> None:
    bad = make_request(2, tenant=None)  # NOT NULL column: a bug upstream, not a crash here
    async with Store(db) as store:
        store.log_request(make_request(1))
        store.log_request(bad)
        store.log_request(make_request(3))
        await store.flush()
        ids = [r.request_id for r in await store.fetch_requests()]
        stats = store.stats
    assert ids == ["req-000001", "req-000003"]
    assert stats.failed == 1 and stats.written == 2
    assert stats.last_error is not None and "NOT NULL" in stats.last_error


# -- durable writes -------------------------------------------------------------------------


async def test_durable_write_is_visible_to_another_connection_when_it_returns(db: Path) -> None:
    async with Store(db, flush_interval=3600) as store:
        store.log_request(make_request(1))  # logged before: must be committed before the write
        await store.write("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)", ("k", "1", 0))
        with other_connection(db) as conn:
            assert conn.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == ("1",)
            assert conn.execute("SELECT count(*) FROM requests").fetchone() == (1,)


async def test_a_write_after_log_false_commits_without_the_queued_rows(db: Path) -> None:
    async with Store(db, flush_interval=3600) as store:
        store.log_request(make_request(1))
        await store.write(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)",
            ("k", "1", 0),
            after_log=False,
        )
        with other_connection(db) as conn:
            assert conn.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == ("1",)
            assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)
        assert store.stats.queued == 1  # the row still waits for its own group
        # An ordinary write still follows everything logged before it.
        await store.write_many([("UPDATE kv SET value = '2' WHERE key = 'k'", ())])
        with other_connection(db) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone() == (1,)


async def test_rows_commit_on_their_interval_while_unordered_writes_keep_coming(
    db: Path,
) -> None:
    """Writes that skip the log must not starve it: the rows' deadline runs from their arrival,
    not from the writer's last wake-up."""
    async with Store(db, flush_interval=0.05, flush_max_rows=1000) as store:
        store.log_request(make_request(1))
        writes = 0
        async with asyncio.timeout(5.0):
            while store.stats.written == 0:
                await store.write(
                    "INSERT INTO kv (key, value, updated_at) VALUES ('n', ?, 0) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(writes),),
                    after_log=False,
                )
                writes += 1
        assert writes > 1  # the row was not simply carried by the first write
        assert count(db, "requests") == 1


async def test_a_failing_write_raises_to_its_caller_only(db: Path) -> None:
    async with Store(db) as store:
        store.log_request(make_request(1))
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await store.write("INSERT INTO no_such_table VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError):
            await store.write_many(
                [
                    ("INSERT INTO kv (key, value, updated_at) VALUES ('a', '1', 0)", ()),
                    ("INSERT INTO kv (key, value, updated_at) VALUES ('a', '2', 0)", ()),
                ]
            )
        store.log_request(make_request(2))
        await store.write_many(
            [
                ("INSERT INTO kv (key, value, updated_at) VALUES ('b', '1', 0)", ()),
                ("UPDATE kv SET value = '2' WHERE key = 'b'", ()),
            ]
        )
        assert await store.kv_get("a") is None  # write_many is all or nothing
        assert await store.kv_get("b") == 2
    assert count(db, "requests") == 2
    assert store.stats.failed == 0


async def test_concurrent_writes_commit_in_submission_order(db: Path) -> None:
    async with Store(db) as store:
        await asyncio.gather(*(store.kv_set("order", n) for n in range(20)))
        assert await store.kv_get("order") == 19


async def test_audit_round_trip(db: Path) -> None:
    now = iter([100.0, 200.0, 300.0])
    async with Store(db, clock=lambda: next(now)) as store:
        first = await store.audit(
            "alice", "drain", "openai", {"reason": "5xx", "share": 0.41}, "ok"
        )
        second = await store.audit("bob", "safe_mode", None, {}, "refused")
        with pytest.raises(ValueError):
            await store.audit("eve", "drain", "x", {"bad": float("nan")}, "ok")
        entries = await store.fetch_audit()
    assert second > first
    assert entries == [
        {
            "id": first,
            "at": 100.0,
            "actor": "alice",
            "action": "drain",
            "target": "openai",
            "detail": {"reason": "5xx", "share": 0.41},
            "result": "ok",
        },
        {
            "id": second,
            "at": 200.0,
            "actor": "bob",
            "action": "safe_mode",
            "target": None,
            "detail": {},
            "result": "refused",
        },
    ]


async def test_kv_set_get_delete(db: Path) -> None:
    async with Store(db, clock=lambda: 42.0) as store:
        assert await store.kv_get("drains") is None
        await store.kv_set("drains", ["openai"])
        await store.kv_set("drains", ["openai", "anthropic-haiku"])
        assert await store.kv_get("drains") == ["openai", "anthropic-haiku"]
        rows = await store.query("SELECT updated_at FROM kv WHERE key = ?", ("drains",))
        assert rows[0]["updated_at"] == 42.0
        await store.kv_delete("drains")
        assert await store.kv_get("drains") is None


# -- lifecycle ------------------------------------------------------------------------------


async def test_close_is_idempotent_and_the_store_refuses_use_afterwards(db: Path) -> None:
    store = Store(db)
    with pytest.raises(RuntimeError, match="boom"):
        async with store:
            store.log_request(make_request(1))
            raise RuntimeError("boom")
    await store.close()
    await store.__aexit__(None, None, None)
    assert count(db, "requests") == 1  # drained despite the error
    with pytest.raises(StateError, match="closed"):
        store.log_request(make_request(2))
    with pytest.raises(StateError, match="closed"):
        await store.write("DELETE FROM kv")
    with pytest.raises(StateError, match="only once"):
        async with store:
            pass


def test_process_death_loses_at_most_the_unflushed_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from tests.state.test_store import make_request
        from state.store import Store

        async def main():
            store = Store({str(path)!r})
            await store.__aenter__()
            for i in range(100):
                store.log_request(make_request(i))
            await store.flush()
            await store.audit("ops", "drain", "openai", {{}}, "ok")
            for i in range(100, 150):
                store.log_request(make_request(i))
            os._exit(0)  # no drain, no close: as if the process were killed

        asyncio.run(main())
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
        timeout=30,
    )
    with other_connection(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = [r[0] for r in conn.execute("SELECT request_id FROM requests ORDER BY started_at")]
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (1,)
    assert ids[:100] == [f"req-{i:06d}" for i in range(100)]
    assert 100 <= len(ids) <= 150


async def test_waiters_get_an_error_not_a_hang_when_the_writer_dies(db: Path) -> None:
    store = Store(db)
    async with store:
        # Break the connection behind the store's back, as a failing disk or driver would.
        assert store._conn is not None
        await store._conn.close()
        store.log_request(make_request(1))
        with pytest.raises(StateError, match=r"writer .* stopped"):
            await store.flush()
        with pytest.raises(StateError, match="closed"):
            store.log_request(make_request(2))
    assert store.stats.failed == 1


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def test_a_checkpoint_pass_resets_a_large_wal(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import state.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL_S", 3600.0)  # only this test's pass
    monkeypatch.setattr(store_module, "CHECKPOINT_TRUNCATE_BYTES", 512 * 1024)
    wal = Path(f"{db}-wal")
    async with Store(db) as store:
        for batch in range(20):
            for i in range(100):
                store.log_request(make_request(batch * 100 + i))
            await store.flush()
        grown = _size(wal)
        # The writer never checkpoints by itself: the WAL holds every row written.
        assert grown > 512 * 1024
        checkpointer = await asyncio.to_thread(sqlite3.connect, str(db), check_same_thread=False)
        try:
            await store._checkpoint_once(checkpointer)
        finally:
            checkpointer.close()
        assert _size(wal) == 0  # PASSIVE copied it, TRUNCATE reset it
        store.log_request(make_request(99_999))
        await store.flush()
        assert 0 < _size(wal) < grown  # writing goes on from the start of the WAL
        rows = await store.query("SELECT COUNT(*) FROM requests")
        assert rows[0][0] == 2001


async def test_a_reader_elsewhere_postpones_the_wal_reset_without_stalling_the_writer(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process reading the file keeps the TRUNCATE from completing: the pass gives up
    after TRUNCATE_BUSY_TIMEOUT_MS instead of holding the writer for the busy timeout, and the
    next pass, once the reader is gone, resets the WAL."""
    import state.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL_S", 3600.0)
    monkeypatch.setattr(store_module, "CHECKPOINT_TRUNCATE_BYTES", 64 * 1024)
    wal = Path(f"{db}-wal")
    async with Store(db) as store:
        for i in range(300):
            store.log_request(make_request(i))
        await store.flush()
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM requests").fetchone()  # holds its snapshot
        checkpointer = await asyncio.to_thread(sqlite3.connect, str(db), check_same_thread=False)
        try:
            await store._checkpoint_once(checkpointer)
            assert _size(wal) > 64 * 1024  # not reset: the reader still needs the WAL
            store.log_request(make_request(300))
            await store.flush()  # the writer carries on
            reader.execute("COMMIT")
            reader.close()
            await store._checkpoint_once(checkpointer)
            assert _size(wal) == 0
        finally:
            checkpointer.close()
        rows = await store.query("SELECT COUNT(*) FROM requests")
        assert rows[0][0] == 301
