"""Numbered schema migrations for the state file.

The schema version lives in ``PRAGMA user_version``: 0 for a new file, otherwise the version of
the last migration applied. ``MIGRATIONS`` is append-only: a released migration is never edited,
because files in the field already carry its effect; a change is a new, higher-numbered entry.
Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the bump of
``user_version``, so a file is always at exactly one version, never between two.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import NamedTuple

import aiosqlite

from state.errors import StateError


class Migration(NamedTuple):
    version: int
    description: str
    script: str
    """SQL statements separated by ``;``; they must not control transactions themselves."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "request log, audit log and key-value settings",
        """
        -- One row per request; columns mirror state.records.RequestRecord. Booleans are 0/1.
        CREATE TABLE requests (
            request_id      TEXT PRIMARY KEY,
            started_at      REAL NOT NULL,
            tenant          TEXT NOT NULL,
            api             TEXT NOT NULL,
            model_requested TEXT NOT NULL,
            tier            TEXT,
            tier_reason     TEXT,
            arm             TEXT NOT NULL,
            deployment      TEXT,
            provider        TEXT,
            stream          INTEGER NOT NULL,
            status          INTEGER NOT NULL,
            outcome         TEXT NOT NULL,
            attempts        INTEGER NOT NULL,
            fallback        INTEGER NOT NULL,
            latency_ms      REAL NOT NULL,
            ttft_ms         REAL,
            input_tokens    INTEGER,
            output_tokens   INTEGER,
            cost_usd        REAL,
            cache           TEXT NOT NULL,
            error           TEXT
        );
        CREATE INDEX requests_started_at ON requests (started_at);
        CREATE INDEX requests_tenant ON requests (tenant, started_at);
        CREATE INDEX requests_deployment ON requests (deployment, started_at);

        -- One row per upstream attempt; columns mirror state.records.AttemptRecord.
        -- No foreign key to requests: attempts are logged before their request's row, and a
        -- request row dropped under memory pressure must not take its attempts with it.
        CREATE TABLE attempts (
            request_id    TEXT NOT NULL,
            attempt       INTEGER NOT NULL,
            started_at    REAL NOT NULL,
            deployment    TEXT NOT NULL,
            provider      TEXT NOT NULL,
            model         TEXT NOT NULL,
            outcome       TEXT NOT NULL,
            http_status   INTEGER,
            latency_ms    REAL NOT NULL,
            ttft_ms       REAL,
            input_tokens  INTEGER,
            output_tokens INTEGER,
            error         TEXT,
            PRIMARY KEY (request_id, attempt)
        );
        CREATE INDEX attempts_started_at ON attempts (started_at);
        CREATE INDEX attempts_deployment ON attempts (deployment, started_at);

        -- Operator actions, committed before they are acknowledged. AUTOINCREMENT so an id
        -- shown to an operator is never reused, even after old entries are pruned.
        CREATE TABLE audit (
            id     INTEGER PRIMARY KEY AUTOINCREMENT,
            at     REAL NOT NULL,
            actor  TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            detail TEXT NOT NULL DEFAULT '{}',
            result TEXT NOT NULL
        );

        -- Small durable settings (drains, safe mode, ...); value is JSON text.
        CREATE TABLE kv (
            key        TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "task type of each request",
        """
        ALTER TABLE requests ADD COLUMN task TEXT;
        CREATE INDEX requests_task ON requests (task, started_at);
        """,
    ),
    Migration(
        3,
        "cost control: virtual keys, spend ledger, response cache, alerts",
        """
        -- What caps and the cache did to each request.
        ALTER TABLE requests ADD COLUMN trimmed_tokens INTEGER;
        ALTER TABLE requests ADD COLUMN saved_usd REAL;

        -- Virtual API keys. Only a SHA-256 of the key is stored; prefix is its first characters,
        -- shown so that an operator can tell keys apart.
        CREATE TABLE api_keys (
            id         TEXT PRIMARY KEY,
            tenant     TEXT NOT NULL,
            name       TEXT NOT NULL,
            hash       TEXT NOT NULL UNIQUE,
            prefix     TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX api_keys_tenant ON api_keys (tenant);

        -- Settled spend per tenant per UTC day (YYYY-MM-DD); what budgets are checked against.
        CREATE TABLE spend (
            tenant            TEXT NOT NULL,
            day               TEXT NOT NULL,
            cost_usd          REAL NOT NULL DEFAULT 0,
            requests          INTEGER NOT NULL DEFAULT 0,
            input_tokens      INTEGER NOT NULL DEFAULT 0,
            output_tokens     INTEGER NOT NULL DEFAULT 0,
            unpriced_requests INTEGER NOT NULL DEFAULT 0,
            cache_hits        INTEGER NOT NULL DEFAULT 0,
            saved_usd         REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant, day)
        );

        -- Deterministic response cache; key is a hash namespaced by tenant.
        CREATE TABLE cache (
            key        TEXT PRIMARY KEY,
            tenant     TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            size       INTEGER NOT NULL,
            hits       INTEGER NOT NULL DEFAULT 0,
            cost_usd   REAL,
            response   BLOB NOT NULL
        );
        CREATE INDEX cache_expires_at ON cache (expires_at);
        CREATE INDEX cache_created_at ON cache (created_at);

        -- Alerts raised; (day, key) makes each alert once per day.
        CREATE TABLE alerts (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            at           REAL NOT NULL,
            day          TEXT NOT NULL,
            key          TEXT NOT NULL,
            kind         TEXT NOT NULL,
            severity     TEXT NOT NULL,
            message      TEXT NOT NULL,
            detail       TEXT NOT NULL,
            delivered_at REAL,
            UNIQUE (day, key)
        );
        """,
    ),
    Migration(
        4,
        "releases and their rollouts",
        """
        -- Which release served each request (arm says whether it was the candidate).
        ALTER TABLE requests ADD COLUMN release INTEGER;
        CREATE INDEX requests_release ON requests (release, arm, started_at);

        -- Versioned routing configs. Exactly one row has status 'baseline'; at most one is a
        -- 'candidate' being rolled out. routing is the JSON of the routing sections (tiers,
        -- aliases, tasks, classifier, policy); diff is a JSON list of lines against parent, the
        -- baseline it was made against. The rollout's progress lives on the candidate's row so
        -- that one UPDATE moves it.
        CREATE TABLE releases (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at       REAL NOT NULL,
            actor            TEXT NOT NULL,
            note             TEXT NOT NULL,
            source           TEXT NOT NULL,
            routing          TEXT NOT NULL,
            parent           INTEGER,
            diff             TEXT NOT NULL,
            status           TEXT NOT NULL,
            emergency        INTEGER NOT NULL DEFAULT 0,
            stage            TEXT,
            stage_started_at REAL,
            rollout_state    TEXT,
            state_reason     TEXT,
            salt             TEXT,
            promoted_at      REAL,
            ended_at         REAL
        );
        CREATE INDEX releases_status ON releases (status);

        -- Every step of every rollout: started, advanced, halted, resumed, promoted,
        -- rolled_back, emergency; detail holds the gate verdicts and the reason.
        CREATE TABLE rollout_events (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            release INTEGER NOT NULL,
            at      REAL NOT NULL,
            actor   TEXT NOT NULL,
            event   TEXT NOT NULL,
            stage   TEXT,
            detail  TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX rollout_events_release ON rollout_events (release, at);
        """,
    ),
    Migration(
        5,
        "hourly aggregates of the request log, for reports after retention prunes it",
        """
        -- One row per hour and combination of dimensions (see state.rollups). Absent values
        -- are '' (release 0) so that they can be part of the key. *_hist are JSON objects of
        -- latency bucket index -> count over state.rollups.LATENCY_BOUNDS_MS.
        CREATE TABLE request_hours (
            hour           REAL NOT NULL,
            tenant         TEXT NOT NULL,
            task           TEXT NOT NULL,
            tier           TEXT NOT NULL,
            tier_reason    TEXT NOT NULL,
            deployment     TEXT NOT NULL,
            provider       TEXT NOT NULL,
            arm            TEXT NOT NULL,
            release        INTEGER NOT NULL,
            outcome        TEXT NOT NULL,
            cache          TEXT NOT NULL,
            stream         INTEGER NOT NULL,
            fallback       INTEGER NOT NULL,
            requests       INTEGER NOT NULL,
            input_tokens   INTEGER NOT NULL,
            output_tokens  INTEGER NOT NULL,
            cost_usd       REAL NOT NULL,
            unpriced       INTEGER NOT NULL,
            saved_usd      REAL NOT NULL,
            trimmed_tokens INTEGER NOT NULL,
            latency_ms_sum REAL NOT NULL,
            latency_hist   TEXT NOT NULL,
            ttft_hist      TEXT NOT NULL,
            PRIMARY KEY (hour, tenant, task, tier, tier_reason, deployment, provider, arm,
                         release, outcome, cache, stream, fallback)
        );

        -- Upstream attempts per hour; followed = 1 when another attempt of the same request
        -- came after it (a retry or a fallback).
        CREATE TABLE attempt_hours (
            hour           REAL NOT NULL,
            deployment     TEXT NOT NULL,
            provider       TEXT NOT NULL,
            model          TEXT NOT NULL,
            outcome        TEXT NOT NULL,
            followed       INTEGER NOT NULL,
            attempts       INTEGER NOT NULL,
            latency_ms_sum REAL NOT NULL,
            latency_hist   TEXT NOT NULL,
            PRIMARY KEY (hour, deployment, provider, model, outcome, followed)
        );
        CREATE INDEX audit_at ON audit (at);
        """,
    ),
)


def _check_sequence(migrations: tuple[Migration, ...]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration versions must run 1, 2, 3, ... without gaps; "
                f"found {migration.version} at position {expected}"
            )


_check_sequence(MIGRATIONS)

LATEST_VERSION: int = MIGRATIONS[-1].version
"""The schema version this code writes; a file with a higher version is refused."""


def split_statements(script: str) -> list[str]:
    """Split an SQL script into single statements, honouring quotes, comments and triggers.

    ``sqlite3.Connection.executescript`` would be simpler, but it commits any open transaction
    first, which would break running a migration and its version bump as one transaction.
    """
    statements: list[str] = []
    start = 0
    position = script.find(";")
    while position != -1:
        candidate = script[start : position + 1]
        # A ';' inside a string, a comment or a trigger body does not end the statement.
        if sqlite3.complete_statement(candidate):
            if _has_sql(candidate):
                statements.append(candidate.strip())
            start = position + 1
        position = script.find(";", position + 1)
    rest = script[start:]
    if _has_sql(rest):
        statements.append(rest.strip())
    return statements


def _has_sql(text: str) -> bool:
    code_lines = (line.split("--", 1)[0] for line in text.splitlines())
    return any(line.strip(" \t;") for line in code_lines)


async def read_version(conn: aiosqlite.Connection) -> int:
    """The file's schema version (``PRAGMA user_version``)."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


def newer_schema_error(path: str | os.PathLike[str], version: int, latest: int) -> StateError:
    return StateError(
        f"The state file {os.fspath(path)} has schema version {version}, but this routedeck "
        f"only knows versions up to {latest}: it was written by a newer routedeck. Upgrade "
        f"routedeck, or point --config at a config whose [state] uses another file. "
        f"The file was not modified."
    )


async def migrate(
    conn: aiosqlite.Connection,
    path: str | os.PathLike[str],
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> int:
    """Apply every migration newer than the file's version, each in its own transaction.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Safe to call on an
    up-to-date file (it does nothing) and against another process migrating the same file
    at the same time (the version is re-read under the write lock). Returns the version the
    file is at afterwards. Raises ``StateError`` if the file is newer than ``migrations`` or a
    migration fails; a failed migration leaves the file at the previous version.
    """
    _check_sequence(migrations)
    latest = migrations[-1].version if migrations else 0
    current = await read_version(conn)
    if current > latest:
        raise newer_schema_error(path, current, latest)
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(
                f"Cannot migrate the state file {os.fspath(path)}: {exc}. "
                f"Is another process holding it locked?"
            ) from exc
        try:
            # Another process may have migrated while this one waited for the write lock.
            current = await read_version(conn)
            if current >= migration.version:
                await conn.execute("ROLLBACK")
                continue
            for statement in split_statements(migration.script):
                await conn.execute(statement)
            # PRAGMA does not take bound parameters; the version is an int from this module.
            await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            await conn.execute("COMMIT")
        except BaseException as exc:
            await rollback_quietly(conn)
            if not isinstance(exc, sqlite3.Error):
                raise
            raise StateError(
                f"Migration {migration.version} ({migration.description}) of the state file "
                f"{os.fspath(path)} failed: {exc}. The file was left at version {current}."
            ) from exc
        current = migration.version
    return current


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    """End the open transaction, if any, without raising."""
    # Some errors (disk full, I/O) have already rolled the transaction back.
    with contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")
