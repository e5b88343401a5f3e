"""Errors raised by the state package.

``StateError`` is the one type callers need to catch: the state file cannot be opened,
created or migrated, or the store is used outside its lifetime. Its message names the file
and says what to do. Errors in SQL a caller passes to ``Store.write``/``Store.query`` are
the caller's own and surface unchanged as ``sqlite3.Error``.
"""

from __future__ import annotations


class StateError(Exception):
    """The state file cannot be used; the message says which file and what to do."""
