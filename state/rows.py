"""Mapping between the record dataclasses and rows of the ``requests``/``attempts`` tables.

Column names are the records' field names, in field order, so a field added to a record without
a migration adding its column fails loudly (the INSERT names a column that does not exist)
instead of being silently lost.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

from state.records import AttemptRecord, RequestRecord

REQUEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RequestRecord))
ATTEMPT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AttemptRecord))

_REQUEST_BOOLS = frozenset({"stream", "fallback"})


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    # OR REPLACE: a record is the full state of its request/attempt, so logging the same key
    # again means "this is the newer version", and one duplicate never fails a whole batch.
    return (
        f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )


INSERT_REQUEST: str = _insert_sql("requests", REQUEST_COLUMNS)
INSERT_ATTEMPT: str = _insert_sql("attempts", ATTEMPT_COLUMNS)

SELECT_REQUEST: str = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests"
SELECT_ATTEMPT: str = f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts"

# attrgetter builds the parameter tuple in C; a record is frozen, so reading it later (on the
# database thread, during executemany) sees the same values as at logging time.
request_params: Callable[[RequestRecord], tuple[Any, ...]] = operator.attrgetter(*REQUEST_COLUMNS)
attempt_params: Callable[[AttemptRecord], tuple[Any, ...]] = operator.attrgetter(*ATTEMPT_COLUMNS)


def request_from_row(row: Sequence[Any]) -> RequestRecord:
    """A ``RequestRecord`` from a row selected with ``SELECT_REQUEST``."""
    values = dict(zip(REQUEST_COLUMNS, row, strict=True))
    for name in _REQUEST_BOOLS:
        values[name] = bool(values[name])
    return RequestRecord(**values)


def attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    """An ``AttemptRecord`` from a row selected with ``SELECT_ATTEMPT``."""
    return AttemptRecord(*row)
