"""Short waits for SQLite's write lock, for the worker's state changes.

SQLite lets one connection write at a time.  A connection that finds the lock
taken calls SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 … up to
100 ms between tries.  A process saving files takes the lock for every save,
one after the other, so those sleeps soon outgrow the gaps between its saves:
the worker misses gap after gap and its copies wait on the database, while the
lock was free for much of that time.  :func:`short_waits` tries again after
about a millisecond instead, until the connection's own busy timeout has
passed, then raises as SQLite would have.

Only a call made outside any transaction is tried again: the failed attempt
was rolled back whole, so the next one starts from the database as it is.
Inside a transaction, and on other databases, the call runs as it is.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from django.db import OperationalError, connections, router

from .models import FileRecord

P = ParamSpec("P")
R = TypeVar("R")

#: The pause between two tries, in seconds, drawn from a range so that two
#: waiting workers do not try in step.
PAUSE = (0.0005, 0.0015)


def _pause() -> None:
    time.sleep(random.uniform(*PAUSE))


def _locked(exc: OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock (its message; 3.10 has no error code)."""
    return "database is locked" in str(exc)


def short_waits(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func``; on SQLite, while another connection holds the write lock, try again shortly."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        connection = connections[router.db_for_write(FileRecord)]
        if connection.vendor != "sqlite" or connection.in_atomic_block:
            return func(*args, **kwargs)
        connection.ensure_connection()
        raw: Any = connection.connection
        (timeout_ms,) = raw.execute("PRAGMA busy_timeout").fetchone()
        deadline = time.monotonic() + timeout_ms / 1000
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    return func(*args, **kwargs)
                except OperationalError as exc:
                    if not _locked(exc) or connection.in_atomic_block or time.monotonic() >= deadline:
                        raise
                _pause()
        finally:
            # The connection may have been closed meanwhile; a new one has its own timeout.
            if connection.connection is raw:
                raw.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")

    return wrapper
