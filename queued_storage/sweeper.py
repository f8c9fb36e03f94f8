"""The sweeper: what a dead worker, a lost message or an abandoned deletion left behind.

Finds its work in the records alone and sends through whichever queue is
chosen (:mod:`queued_storage.queues`), so it is the same for Celery and for
Django Tasks, whose framework redelivers nothing: there, it is what brings
back the file of a worker that died and, on a backend that cannot defer a
task, each retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import queues, registry, threads, transitions
from .conf import conf
from .publishing import Message, coalesce

logger = logging.getLogger("queued_storage")


@dataclass
class Swept:
    """What one sweeper run did."""

    queued: int = 0  # files whose transfer was queued again
    deleted: int = 0  # deleted files whose copies and record it removed
    undeletable: int = 0  # deleted files whose copies it could not remove (tried again next run)


def sweep(
    older_than: float = 300,
    *,
    failed: bool = False,
    lapsed_for: float | None = None,
    held: Callable[[], bool] | None = None,
) -> Swept:
    """Finish abandoned deletions, then queue again what was left pending, stuck or (optionally) failed.

    A deletion is abandoned when the lease on its tombstone lapsed: the worker
    or the ``delete()`` call that held it died, or could not remove a copy.
    A pending file is queued again when it waited ``older_than`` seconds
    since its last change and since it was last queued: at most one message
    per file per ``older_than``, however often the sweeper runs.  A file
    whose worker died (``transferring``, its lease lapsed) likewise after
    ``lapsed_for`` seconds (default ``older_than``).  The pending files of a
    ``delayed`` storage only once ``transfer()`` queued them.  Small files go
    as messages of several, as the background publisher sends them.  The rows
    are read :data:`transitions.CHUNK` at a time.

    ``held`` is called between files; once it is False (another process took
    over the sweep) the sweep stops after the chunk it holds, whose files
    this call already took and so must finish.
    """
    swept = Swept()
    lost = False

    def going() -> bool:
        nonlocal lost
        lost = lost or (held is not None and not held())
        return not lost

    for tombstones in transitions.abandoned():
        for record in tombstones:
            going()
            try:
                storage = registry.lookup(record.storage)
                storage._finish_delete(record.name, record.version, record.lease_until)
            except Exception as exc:
                logger.warning(
                    "queued_storage: could not remove the copies of the deleted file %s (%s: %s); "
                    "the next sweeper run tries again",
                    record.name,
                    type(exc).__name__,
                    exc,
                )
                if isinstance(exc, LookupError):  # no storage to give the lease back through
                    transitions.release_tombstone(record.storage, record.name, record.version, error=str(exc))
                swept.undeletable += 1
            else:
                swept.deleted += 1
        if not going():
            return _stopped(swept)
    for records in transitions.stale(
        older_than, failed=failed, delayed=registry.delayed(), lapsed_for=lapsed_for
    ):
        messages: list[Message] = []
        for record in records:
            try:
                storage = registry.lookup(record.storage)
            except LookupError as exc:
                logger.error("queued_storage: cannot requeue %s: %s", record.name, exc)
                continue
            messages.append((storage, record.name, record.version, record.host, record.size))
        for storage, files, host in coalesce(messages, conf.BATCH_FILES):
            going()
            if queues.enqueue_many(storage, files, host):
                swept.queued += len(files)
        if not going():
            return _stopped(swept)
    return swept


def _stopped(swept: Swept) -> Swept:
    logger.warning("queued_storage: another process took over the sweep, so this one stops")
    return swept


def requeue(older_than: float = 300, *, failed: bool = False) -> int:
    """:func:`sweep`; the number of files queued again."""
    return sweep(older_than, failed=failed).queued


# A message lost with its process, or with the broker, is sent again after this long.
LOST_AFTER = 300


def sweep_in_turn(held: Callable[[], bool]) -> Swept:
    """A worker's own sweep (:func:`start`): finished deletions, lost messages, dead workers.

    A file whose worker died is queued again as soon as its lease lapsed;
    one still pending, once its message has had :data:`LOST_AFTER` seconds
    to arrive.
    """
    swept = sweep(LOST_AFTER, lapsed_for=conf.LEASE, held=held)
    if swept.queued or swept.deleted or swept.undeletable:
        logger.info(
            "queued_storage: swept: %d files queued again, %d deletions finished, %d left to the next sweep",
            swept.queued,
            swept.deleted,
            swept.undeletable,
        )
    return swept


def start() -> None:
    """Start this worker process's sweeper thread, which sweeps in turn with every other one.

    Unless ``QUEUED_STORAGE_SWEEP_INTERVAL`` turns it off; a second call
    starts nothing.  Celery's worker signals call it (:mod:`queued_storage.tasks`),
    and ``AppConfig.ready()`` in a ``db_worker`` process.
    """
    threads.start_sweeper(sweep_in_turn)
