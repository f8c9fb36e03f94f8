"""The cache's mirror of each file's state: the fast path of every read.

The database row (:class:`~queued_storage.models.FileRecord`) is the truth,
and :mod:`queued_storage.transitions` changes it; this module keeps the cache
from contradicting it.

The cache only ever keeps a state its row had at or after the moment the
entry was written (``absent``: no row).  Django's cache has no
compare-and-set, so this holds by four rules:

- A transition that changes where reads go (a save, the switch to
  ``remote``, a delete) writes or clears the entry after it commits.  The
  others (claim, requeue, release) move between ``pending``,
  ``transferring`` and ``failed``, which reads route alike, and leave the
  cache alone: a write of theirs could land after a newer one.
- Every write of a state is followed by a read of the row, and the entry is
  removed again if the row no longer has that state (:func:`_checked`): a
  write that lost a race with a transition undoes itself.  A delete writes
  ``absent`` for a short while the same way, so a reader racing it cannot
  refill the old state, and a save committed just before it is not hidden.
- Readers only fill a missing entry (``add``), so they never replace one;
  the check above catches a fill that lands after a transition cleared the
  entry (or after a flush).
- A write made while the row is locked (:func:`queued_storage.transitions.local_copy_removable`) needs
  no check: nothing can change the row before it lands.

A stale state is therefore visible only between such a write and its check,
or when the cache fails and the write or the removal is lost (logged; the
entry expires after ``QUEUED_STORAGE_CACHE_TIMEOUT``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any

from django.core.cache import caches
from django.db import connections, router

from .conf import conf
from .models import FileRecord

logger = logging.getLogger("queued_storage")

# Cached for files that exist nowhere, so probing a missing name stays cheap.
ABSENT = "absent"
ABSENT_TIMEOUT = 60


def cache_key(storage: str, name: str) -> str:
    return _key(conf.CACHE_PREFIX, storage, name)


@functools.lru_cache(maxsize=4096)
def _key(prefix: str, storage: str, name: str) -> str:
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{prefix}:{storage}:{digest}"


def read(key: str) -> Any:
    try:
        return caches[conf.CACHE].get(key)
    except Exception as exc:  # the database answers when the cache cannot
        logger.warning("queued_storage: cache read failed (%s); using the database", exc)
        return None


def _timeout(state: str) -> int | None:
    return ABSENT_TIMEOUT if state == ABSENT else conf.CACHE_TIMEOUT


def write_unchecked(key: str, value: str, timeout: int | None = None) -> bool:
    try:
        caches[conf.CACHE].set(key, value, _timeout(value) if timeout is None else timeout)
    except Exception as exc:  # a stale cache entry is refreshed on the next change
        logger.warning("queued_storage: cache write failed (%s)", exc)
        return False
    return True


def clear(storage: str, name: str) -> bool:
    """Remove the cached state of ``name``; False when the cache could not be reached."""
    try:
        caches[conf.CACHE].delete(cache_key(storage, name))
    except Exception as exc:
        logger.warning("queued_storage: cache delete failed (%s)", exc)
        return False
    return True


def _delete(*keys: str) -> None:
    try:
        caches[conf.CACHE].delete_many(list(keys))
    except Exception as exc:  # the entry expires after QUEUED_STORAGE_CACHE_TIMEOUT
        logger.warning("queued_storage: cache delete failed (%s)", exc)


def fill(storage: str, name: str, key: str, state: str) -> str:
    """Fill a missing entry with ``state`` just read from the row; returns the state to use.

    ``add``, not ``set``: a transition that wrote the cache since our read of
    the row wins.  One that cleared it instead (or a flush) lets the add land,
    so the row is read again (:func:`_checked`).
    """
    try:
        added = caches[conf.CACHE].add(key, state, _timeout(state))
    except Exception as exc:
        logger.warning("queued_storage: cache write failed (%s)", exc)
        return state
    return _checked(storage, name, key, state) if added else state


def _checked(storage: str, name: str, key: str, state: str) -> str:
    """Remove the entry just written if the row no longer has ``state``; returns the row's state.

    Read from the database that takes the writes (:func:`row_state`): a replica
    could still show the state a transition has just replaced.
    """
    now = row_state(storage, name)
    if now == (None if state == ABSENT else state):
        return state
    _delete(key)
    # A row gone since the first read was deleted: absent, not a file to look up again.
    return ABSENT if now is None else now


def write(storage: str, name: str, state: str) -> None:
    """Write the state a transition has committed, then check it against the row."""
    key = cache_key(storage, name)
    if write_unchecked(key, state):
        _checked(storage, name, key, state)


def write_many(storage: str, names: list[str], state: str) -> None:
    """:func:`_mirror` for several names: one cache write, one query, and one delete if needed."""
    if not names:
        return
    keys = {name: cache_key(storage, name) for name in names}
    try:
        caches[conf.CACHE].set_many({keys[name]: state for name in names}, _timeout(state))
    except Exception as exc:  # a stale cache entry is refreshed on the next change
        logger.warning("queued_storage: cache write failed (%s)", exc)
        return
    alias = router.db_for_write(FileRecord)
    still = set(
        FileRecord.objects.using(alias)
        .filter(storage=storage, name__in=names, state=state)
        .values_list("name", flat=True)
    )
    moved = [keys[name] for name in names if name not in still]
    if moved:
        _delete(*moved)


@functools.cache
def connect() -> None:
    """Open this process's cache connection once, before its first switch.

    Otherwise a fresh worker would connect (and import the client) between the
    switch's commit and its cache write, where a reader sees ``remote`` in the
    row but still ``pending`` in the cache: a wider window of stale local URLs.
    """
    read(f"{conf.CACHE_PREFIX}:connect")


def cached_state(storage: str, name: str) -> str | None:
    """The state as the cache and then the database know it; ``None`` when neither has one.

    Never looks at the storages and never creates a record: the serving view
    answers from here alone.  A cached ``absent`` is checked against the row
    (one indexed ``SELECT``, no storage request): a save leaves the cache
    alone, so a file saved since the name was probed is never hidden by it.
    """
    key = cache_key(storage, name)
    state = read(key)
    if state is not None and state != ABSENT:
        return str(state)
    found = stored_state(storage, name)
    if found is None:
        return None if state is None else ABSENT
    if state == ABSENT:
        # Saved since the name was probed: the row decides, and replaces the entry.
        _delete(key)
    return fill(storage, name, key, found)


def row_state(storage: str, name: str) -> str | None:
    """The row's state now, past the cache, from the database that takes the writes."""
    return stored_state(storage, name, alias=router.db_for_write(FileRecord))


def stored_state(storage: str, name: str, alias: str | None = None) -> str | None:
    """The row's state, read through a plain cursor.

    Every read after a cache flush passes here, where building the ORM's
    query would cost more than the indexed SELECT (see docs/benchmarks.rst).
    """
    alias = alias or router.db_for_read(FileRecord)
    with connections[alias].cursor() as cursor:
        cursor.execute(_state_query(alias), [storage, name])
        row = cursor.fetchone()
    return None if row is None else str(row[0])


@functools.cache
def _state_query(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    meta = FileRecord._meta
    column = {field.name: quote(field.column) for field in meta.concrete_fields if field.column}
    return (
        f"SELECT {column['state']} FROM {quote(meta.db_table)} "
        f"WHERE {column['storage']} = %s AND {column['name']} = %s"
    )
