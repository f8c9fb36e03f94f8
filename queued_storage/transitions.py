"""Where each file lives: every state change of a file is decided here.

The database row (:class:`~queued_storage.models.FileRecord`) is the truth.
Each transition is one conditional ``UPDATE`` (a compare-and-set) so two
processes can never both win it, on SQLite and PostgreSQL alike.  The Django
cache mirrors the state for reads (:mod:`queued_storage.mirror`); a
transition that changes where reads go updates the mirror after it commits.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import mirror
from .conf import SMALL_FILE, conf
from .models import FileRecord, State

logger = logging.getLogger("queued_storage")


@dataclass(frozen=True)
class FileStatus:
    """What ``QueuedStorage.status()`` returns."""

    name: str
    state: str
    size: int | None
    attempts: int
    last_error: str
    bytes_done: int
    host: str
    checksum: str
    updated_at: datetime

    @classmethod
    def of(cls, record: FileRecord) -> FileStatus:
        return cls(
            name=record.name,
            state=record.state,
            size=record.size,
            attempts=record.attempts,
            last_error=record.last_error,
            bytes_done=record.bytes_done,
            host=record.host,
            checksum=record.checksum,
            updated_at=record.updated_at,
        )


class Claim(Enum):
    """Outcome of a worker asking to copy one version of a file."""

    CLAIMED = "claimed"  # this worker now holds the lease and copies
    DONE = "done"  # already remote: a redelivered message, nothing to do
    GONE = "gone"  # deleted, or replaced by a newer version
    BUSY = "busy"  # another worker holds a live lease
    FAILED = "failed"  # failed for good before this message: only a requeue revives it


def new_version() -> str:
    return secrets.token_hex(8)


def remember_unknown(storage: str, name: str, *, on_remote: bool, on_local: bool, size: int | None) -> str:
    """Record a file saved before this app knew of it, as found by one lookup.

    A name found nowhere is cached as ``absent`` for ``mirror.ABSENT_TIMEOUT``
    seconds, so probing it again costs no lookup; a save under it clears that.
    """
    if not (on_remote or on_local):
        return mirror.fill(storage, name, mirror.cache_key(storage, name), mirror.ABSENT)
    record = FileRecord(
        storage=storage,
        name=name,
        state=State.REMOTE if on_remote else State.PENDING,
        version=new_version(),
        size=size,
        host=conf.HOST,
        local_deleted_at=None if on_local else timezone.now(),
    )
    try:
        with transaction.atomic(using=router.db_for_write(FileRecord)):
            _insert(record)
    except IntegrityError:  # recorded meanwhile, by a save or another reader
        found = get(storage, name)
        if found is None:  # and deleted again since: nothing to record
            return mirror.ABSENT
        record = found
    # A new record changes where reads go (an ``absent`` may be cached): written
    # over whatever is there, once the row has committed.
    transaction.on_commit(
        functools.partial(mirror.write, storage, name, str(record.state)),
        using=router.db_for_write(FileRecord),
    )
    return str(record.state)


def record_saved(storage: str, name: str, size: int | None) -> FileRecord:
    """Create the pending record of a file about to be written locally.

    The unique (storage, name) constraint makes it the name's reservation: a
    name recorded in any state raises IntegrityError here.

    The record comes back without its primary key; it is found by
    (storage, name).

    Not mirrored in the cache: the row is not committed yet.  An ``absent``
    cached by an earlier probe of the name does not hide it: a reader checks a
    cached ``absent`` against the row (:func:`mirror.cached_state`), then
    fills the entry from it.
    """
    record = FileRecord(
        storage=storage, name=name, state=State.PENDING, version=new_version(), size=size, host=conf.HOST
    )
    _insert(record)
    return record


def _insert(record: FileRecord) -> None:
    """The one writer of new rows: a prepared ``INSERT`` with the values the model's fields prepare.

    It sits in every ``save()``, where building the ORM's query would cost
    more than the statement (see docs/benchmarks.rst); the values come from
    each field's own ``pre_save`` and ``get_db_prep_save``, so defaults,
    ``auto_now`` and backend conversions are those of ``objects.create()``.
    No ``pre_save``/``post_save`` signal is sent.
    """
    alias = router.db_for_write(FileRecord)
    connection = connections[alias]
    values = [field.get_db_prep_save(field.pre_save(record, True), connection) for field in _inserted()]
    with connection.cursor() as cursor:
        cursor.execute(_insert_query(alias), values)
    record._state.adding, record._state.db = False, alias


@functools.cache
def _inserted() -> list[Any]:
    """The columns :func:`_insert` writes: every one but the generated primary key."""
    return [field for field in FileRecord._meta.concrete_fields if not field.primary_key]


@functools.cache
def _insert_query(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(str(field.column)) for field in _inserted())
    slots = ", ".join(["%s"] * len(_inserted()))
    return f"INSERT INTO {quote(FileRecord._meta.db_table)} ({columns}) VALUES ({slots})"


def rename(record: FileRecord, name: str) -> FileRecord:
    """Move a just-created record to the name the local storage actually used."""
    FileRecord.objects.filter(storage=record.storage, name=record.name).update(name=name)
    record.name = name
    return record


def get(storage: str, name: str) -> FileRecord | None:
    record: FileRecord | None = FileRecord.objects.filter(storage=storage, name=name).first()
    return record


def name_taken(storage: str, name: str) -> bool:
    """Whether a record holds ``name``, in any state: such a name is never reused.

    Asks the database alone: in save() the name is nearly always new, so a
    cache lookup first would only add a round trip before the same query.
    """
    return bool(FileRecord.objects.filter(storage=storage, name=name).exists())


def requeue(storage: str, name: str) -> FileRecord | None:
    """Make a pending or failed file pending again.

    ``attempts`` keeps counting: a later attempt may overwrite what an earlier
    one left on the remote, a first attempt never does.
    """
    now = timezone.now()
    FileRecord.objects.filter(storage=storage, name=name, state__in=[State.PENDING, State.FAILED]).update(
        state=State.PENDING, last_error="", updated_at=now, queued_at=now
    )
    # Not mirrored: reads route ``failed`` and ``pending`` alike, and a write of
    # the row as read here could land after the switch (see the module docstring).
    return get(storage, name)


def claim(storage: str, name: str, version: str, owner: str) -> tuple[Claim, FileRecord | None]:
    """Take the lease on ``name`` at ``version`` so this worker alone copies it."""
    return claim_many(storage, [(name, version)], owner)[0]


def claim_many(
    storage: str, files: list[tuple[str, str]], owner: str
) -> list[tuple[Claim, FileRecord | None]]:
    """Take the leases on several ``(name, version)``: a ``SELECT``, then for the free ones an ``UPDATE``.

    Returns each file's outcome and row, in the order given.  A row is ours
    when it carries the lease expiry this call wrote: ``now + LEASE`` plus a
    random number of microseconds, so no other claim writes the same value
    (one chance in a million even within the same microsecond).  When the
    first read finds none free (a message delivered again, or whose files a
    worker took from the table first) nothing is written: no write lock.
    Otherwise a second ``SELECT`` reads what the ``UPDATE`` decided.
    """
    now = timezone.now()
    rows = _rows(storage, files)
    free = [(name, version) for name, version in files if _free(rows.get(name), version, now)]
    lease = None
    if free:
        lease = _new_lease(now)
        versions = Q()
        for name, version in free:
            versions |= Q(name=name, version=version)
        won = FileRecord.objects.filter(
            versions,
            Q(lease_until__isnull=True) | Q(lease_until__lt=now),
            storage=storage,
            # Not FAILED: every way back from it (requeue, the sweeper's --failed,
            # the admin) makes the row pending first, so a message that finds it
            # failed is a stale one (redelivered, or sent before the last attempt).
            state__in=CLAIMABLE,
        ).update(
            state=State.TRANSFERRING,
            lease_until=lease,
            attempts=F("attempts") + 1,
            bytes_done=0,
            updated_at=now,
        )
        rows = _rows(storage, files)
        if won:
            # Not mirrored: reads route ``pending`` and ``transferring`` alike, and
            # status() reads the row; a cache write here would cost every task.
            mirror.connect()
    outcomes: list[tuple[Claim, FileRecord | None]] = []
    for name, version in files:
        record = rows.get(name)
        if (
            record is not None
            and record.version == version
            and lease is not None
            and record.lease_until == lease
        ):
            # Ours even if deleted since: the lease holder removes what it copied.
            logger.debug("queued_storage: %s claimed %s", owner, name)
            outcomes.append((Claim.CLAIMED, record))
        elif record is None or record.version != version or record.state == State.DELETED:
            outcomes.append((Claim.GONE, record))
        elif record.state == State.REMOTE:
            outcomes.append((Claim.DONE, record))
        elif record.state == State.FAILED:
            outcomes.append((Claim.FAILED, record))
        else:
            outcomes.append((Claim.BUSY, record))
    return outcomes


# The states a claim takes a file from (a lapsed lease of a dead worker's included).
CLAIMABLE = (State.PENDING, State.TRANSFERRING)


def _rows(storage: str, files: list[tuple[str, str]]) -> dict[str, FileRecord]:
    if not files:
        return {}
    return {
        record.name: record
        for record in FileRecord.objects.filter(storage=storage, name__in=[name for name, _ in files])
    }


def _free(record: FileRecord | None, version: str, now: datetime) -> bool:
    """Whether a claim at ``now`` could take ``record`` at ``version``, as its ``UPDATE`` decides."""
    return (
        record is not None
        and record.version == version
        and record.state in CLAIMABLE
        and (record.lease_until is None or record.lease_until < now)
    )


def take_waiting(storage: str, host: str, *, most: int, delayed: bool, owner: str) -> list[FileRecord]:
    """Claim up to ``most`` small files of ``storage`` saved on ``host`` and never tried, oldest first.

    One ``UPDATE`` chooses the files and takes their leases, so two workers
    taking at the same time never choose the same files: SQLite runs one
    write at a time and the second chooses among what the first left;
    PostgreSQL's ``SKIP LOCKED`` passes over the rows another claim holds.
    Never a file tried before: its retry keeps its backoff.  Of a
    ``delayed`` storage, only what ``transfer()`` queued.  Returns the rows
    claimed, oldest first.
    """
    rows = FileRecord.objects.filter(
        state=State.PENDING,
        storage=storage,
        host=host,
        attempts=0,
        size__lte=SMALL_FILE,
    )
    if delayed:
        rows = rows.filter(queued_at__isnull=False)
    using = router.db_for_write(FileRecord)
    chosen = rows.order_by("pk").values("pk")[:most]
    if connections[using].features.has_select_for_update_skip_locked:
        chosen = chosen.select_for_update(skip_locked=True)
    now = timezone.now()
    lease = _new_lease(now)
    with transaction.atomic(using=using, savepoint=False):
        won = FileRecord.objects.filter(pk__in=chosen).update(
            state=State.TRANSFERRING,
            lease_until=lease,
            attempts=F("attempts") + 1,
            bytes_done=0,
            updated_at=now,
        )
        # Read before the commit, while no one else can change them.
        taken = (
            list(
                FileRecord.objects.filter(
                    state=State.TRANSFERRING, storage=storage, lease_until=lease
                ).order_by("pk")
            )
            if won
            else []
        )
    if taken:
        mirror.connect()  # not mirrored, as in claim_many(); the connection is ready for the switch
    for record in taken:
        logger.debug("queued_storage: %s took %s from the table", owner, record.name)
    return taken


def heartbeat(storage: str, name: str, version: str, bytes_done: int) -> bool:
    """Report progress and renew the lease; False when the file was deleted or replaced.

    The lease on a file deleted during its copy is renewed too: the worker
    removes its copy when the copy ends, and the sweeper must not take over
    the tombstone of a worker that is still alive.
    """
    rows = FileRecord.objects.filter(storage=storage, name=name, version=version)
    return bool(_renew(rows, 1, bytes_done, timezone.now()))


# Files renewed by one statement: its parameters stay well under SQLite's limit.
_BEAT_CHUNK = 200


def heartbeat_many(beats: Collection[tuple[str, str, str, int]]) -> None:
    """:func:`heartbeat` for several ``(storage, name, version, bytes_done)`` under one commit.

    A worker's queued copies all wait for the write lock once per beat,
    not once each (SQLite's lock is shared with every save), and the files
    with the same progress (the queued ones, none started) share their
    ``UPDATE``.
    """
    groups: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for storage, name, version, done in beats:
        groups.setdefault((storage, done), []).append((name, version))
    now = timezone.now()
    with transaction.atomic(using=router.db_for_write(FileRecord)):
        for (storage, done), files in groups.items():
            for start in range(0, len(files), _BEAT_CHUNK):
                chunk = files[start : start + _BEAT_CHUNK]
                versions = Q()
                for name, version in chunk:
                    versions |= Q(name=name, version=version)
                _renew(FileRecord.objects.filter(versions, storage=storage), len(chunk), done, now)


def _renew(rows: QuerySet[FileRecord], files: int, bytes_done: int, now: datetime) -> int:
    """Renew the leases of ``rows`` (``files`` asked for) and record progress; how many still copy.

    Tombstones with a lease are renewed only when some row was not copying.
    """
    lease = now + timedelta(seconds=conf.LEASE)
    copying: int = rows.filter(state=State.TRANSFERRING).update(
        bytes_done=bytes_done, lease_until=lease, updated_at=now
    )
    if copying < files:
        rows.filter(state=State.DELETED, lease_until__isnull=False).update(lease_until=lease)
    return copying


def one_commit() -> transaction.Atomic:
    """Run several transitions under one commit: one wait for the database's write lock.

    The mover switches what landed and takes the next files so.  What each
    transition writes to the cache mirror is written after that commit.
    """
    return transaction.atomic(using=router.db_for_write(FileRecord))


def switch_to_remote(storage: str, name: str, version: str, *, size: int, checksum: str) -> bool:
    """The compare-and-set that moves reads to the remote copy; False if the file changed."""
    return switch_many(storage, [(name, version, size, checksum)])[0]


def switch_many(storage: str, copies: list[tuple[str, str, int, str]]) -> list[bool]:
    """Switch several verified copies ``(name, version, size, checksum)``; whether each one won.

    Each switch is its own compare-and-set, as for one file; the files share
    the commit and one cache write.  A cache write cost as much CPU as the
    ``UPDATE`` (Django's ``RedisCache`` builds a client per call), so a burst
    of small files pays it once.
    """
    won: list[bool] = []
    using = router.db_for_write(FileRecord)
    with transaction.atomic(using=using, savepoint=False):
        for name, version, size, checksum in copies:
            now = timezone.now()
            switched = FileRecord.objects.filter(
                storage=storage, name=name, version=version, state=State.TRANSFERRING
            ).update(
                state=State.REMOTE,
                size=size,
                checksum=checksum,
                bytes_done=size,
                last_error="",
                lease_until=None,
                transferred_at=now,
                updated_at=now,
            )
            won.append(bool(switched))
        switched_names = [copy[0] for copy, ok in zip(copies, won, strict=True) if ok]
        # After the commit: within one_commit(), that of the transitions after this one too.
        transaction.on_commit(
            functools.partial(mirror.write_many, storage, switched_names, State.REMOTE), using=using
        )
    return won


def release(storage: str, name: str, version: str, *, error: str, failed: bool) -> FileRecord | None:
    """Give the lease back after an attempt that did not succeed; returns the row as it is now."""
    FileRecord.objects.filter(storage=storage, name=name, version=version, state=State.TRANSFERRING).update(
        state=State.FAILED if failed else State.PENDING,
        last_error=error[:4000],
        lease_until=None,
        updated_at=timezone.now(),
    )
    # Not mirrored, as in requeue(): reads route these states alike.
    return get(storage, name)


def give_back(storage: str, name: str, version: str, *, attempts: int) -> bool:
    """Undo a claim whose copy was never started: pending, no lease, the attempt not counted.

    ``attempts`` is the count the claim wrote: a claim by anyone else since
    (after this caller's lease lapsed) counted one more, and the row is then
    left to it.  False when the row is not this claim's any more: taken
    since, deleted or saved again.
    """
    return bool(
        FileRecord.objects.filter(
            storage=storage,
            name=name,
            version=version,
            state=State.TRANSFERRING,
            attempts=attempts,
            attempts__gt=0,
        ).update(
            state=State.PENDING,
            lease_until=None,
            attempts=F("attempts") - 1,
            bytes_done=0,
            updated_at=timezone.now(),
        )
    )


@dataclass(frozen=True)
class Tombstone:
    """A file marked deleted by :func:`forget`: the row as it was just before, and who cleans up."""

    record: FileRecord
    # The lease this caller now holds on the tombstone; None when the worker
    # copying the file holds it and removes the copies itself.
    lease: datetime | None

    @property
    def had_remote(self) -> bool:
        """Whether a remote copy, complete or partial, may exist: not for a file never claimed."""
        return self.record.state != State.PENDING or self.record.attempts > 0


def _new_lease(now: datetime) -> datetime:
    """A lease expiry no other caller writes: ``now + LEASE`` plus random microseconds."""
    return now + timedelta(seconds=conf.LEASE, microseconds=secrets.randbelow(1_000_000))


def forget(storage: str, name: str) -> Tombstone | None:
    """Mark a file deleted (a tombstone), before any copy of it goes; None if it has no record.

    The tombstone keeps the name taken and reads find nothing, until the
    copies are gone and :func:`discard` drops the row.  The caller gets the
    lease on it and removes the copies, unless a worker holds a live lease:
    that worker removes its remote copy and the row when its copy ends.  A
    tombstone whose holder died is finished by the sweeper once its lease
    lapses (:func:`abandoned`).

    One conditional ``UPDATE``, a compare-and-set on the row as just read, so
    :attr:`Tombstone.had_remote` is true of the row that was marked.
    """
    for _ in range(10):
        record = get(storage, name)
        if record is None:
            mirror.write(storage, name, mirror.ABSENT)  # a reader racing the delete cannot refill it
            return None
        now = timezone.now()
        held = record.lease_until is not None and record.lease_until >= now
        row = FileRecord.objects.filter(
            pk=record.pk,
            state=record.state,
            version=record.version,
            attempts=record.attempts,
            lease_until=record.lease_until,
        )
        if held and record.state in (State.TRANSFERRING, State.DELETED):
            # A worker copies it (or another call cleans up): it finishes the job.
            if record.state == State.DELETED or row.update(state=State.DELETED, updated_at=now):
                mirror.write(storage, name, State.DELETED)
                return Tombstone(record, None)
            continue
        lease = _new_lease(now)
        if row.update(state=State.DELETED, lease_until=lease, updated_at=now):
            mirror.write(storage, name, State.DELETED)
            return Tombstone(record, lease)
    raise RuntimeError(
        f"The record of {name!r} changed ten times while it was being deleted; call delete() again."
    )


def discard(storage: str, name: str, version: str) -> bool:
    """Remove the row of a deleted file once its copies are gone; True if it was ours.

    The name is free from then on.  The cache forgets the file first: an entry
    left behind (the cache was down) would route a later file of this name to
    the deleted copies.  If it cannot, the tombstone stays, keeping the name
    taken, and the sweeper finishes it once the cache answers.
    """
    if not mirror.clear(storage, name):
        release_tombstone(
            storage,
            name,
            version,
            error="The cache could not be reached to forget the deleted file; the sweeper finishes it.",
        )
        return False
    deleted, _ = FileRecord.objects.filter(
        storage=storage, name=name, version=version, state=State.DELETED
    ).delete()
    if deleted:
        mirror.write(storage, name, mirror.ABSENT)  # a reader racing the delete cannot refill it
    return bool(deleted)


def release_tombstone(
    storage: str, name: str, version: str, *, error: str, lease: datetime | None = None
) -> bool:
    """Give back the lease on a tombstone whose copies could not be removed, so the sweeper retries.

    With ``lease``, only if the caller still holds that lease; the error is
    kept in ``last_error``.
    """
    row = FileRecord.objects.filter(storage=storage, name=name, version=version, state=State.DELETED)
    if lease is not None:
        row = row.filter(lease_until=lease)
    return bool(row.update(lease_until=None, last_error=error[:4000], updated_at=timezone.now()))


# Rows the sweeper and cleanup-local hold in memory at once.
CHUNK = 500


def chunked(records: QuerySet[FileRecord], size: int | None = None) -> Iterator[list[FileRecord]]:
    """The rows of ``records`` in lists of at most ``size`` (:data:`CHUNK`), in primary key order.

    Each list is its own ``SELECT`` after the last key seen, so memory stays
    bounded and the caller may write to the rows between lists (SQLite does
    not isolate an open cursor from writes on the same connection).
    """
    size = size or CHUNK
    last = None
    while True:
        page = records.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        rows = list(page[:size])
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        last = rows[-1].pk


def abandoned() -> Iterator[list[FileRecord]]:
    """Tombstones whose lease lapsed (their holder died or gave up), each now leased to the caller.

    In lists of at most :data:`CHUNK`; a tombstone another sweeper took
    first is left out.  The caller removes the copies, then calls
    :func:`discard`, or :func:`release_tombstone` if it could not.
    """
    now = timezone.now()
    lapsed = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    for rows in chunked(FileRecord.objects.filter(lapsed, state=State.DELETED)):
        lease = _new_lease(timezone.now())
        keys = [row.pk for row in rows]
        FileRecord.objects.filter(lapsed, pk__in=keys, state=State.DELETED).update(lease_until=lease)
        taken = list(FileRecord.objects.filter(pk__in=keys, lease_until=lease).order_by("pk"))
        if taken:
            yield taken


def stale(
    older_than: float,
    *,
    failed: bool = False,
    delayed: Collection[str] = (),
    lapsed_for: float | None = None,
) -> Iterator[list[FileRecord]]:
    """Records the sweeper should queue again, each stamped ``queued_at`` by this call.

    Pending, untouched for ``older_than`` seconds and not queued within them;
    ``transferring`` with a lapsed lease, the same for ``lapsed_for`` seconds
    (default ``older_than``); with ``failed`` also every failed file, made
    pending again.  The pending files of the ``delayed`` storages only once
    ``transfer()`` queued them.

    In lists of at most :data:`CHUNK`.  The stamp is a compare-and-set, so
    two sweepers at once never both queue a file within its threshold.
    """
    now = timezone.now()

    def quiet_since(cutoff: datetime) -> Q:
        return Q(updated_at__lt=cutoff) & (Q(queued_at__isnull=True) | Q(queued_at__lt=cutoff))

    waiting = Q(state=State.PENDING) & quiet_since(now - timedelta(seconds=older_than))
    if delayed:
        waiting &= ~Q(storage__in=list(delayed), queued_at__isnull=True)
    lapsed = now - timedelta(seconds=older_than if lapsed_for is None else lapsed_for)
    stuck = Q(state=State.TRANSFERRING, lease_until__lt=now) & quiet_since(lapsed)
    due = waiting | stuck
    # One state at a time: each walk reads that state's rows in key order from
    # its index, where one query over several states would sort them all again
    # for every list.  A failed file revived below is pending by then, not read twice.
    walks = [waiting, stuck] + ([Q(state=State.FAILED)] if failed else [])
    for rows in (rows for walk in walks for rows in chunked(FileRecord.objects.filter(walk))):
        stamp = timezone.now() - timedelta(microseconds=secrets.randbelow(1_000_000))
        keys = [row.pk for row in rows]
        FileRecord.objects.filter(due, pk__in=keys).update(queued_at=stamp)
        if failed:
            FileRecord.objects.filter(pk__in=keys, state=State.FAILED).update(
                state=State.PENDING, last_error="", queued_at=stamp, updated_at=timezone.now()
            )
        won = list(FileRecord.objects.filter(pk__in=keys, queued_at=stamp).order_by("pk"))
        revived = {row.pk for row in rows if row.state == State.FAILED}
        for storage in {row.storage for row in won if row.pk in revived}:
            names = [row.name for row in won if row.pk in revived and row.storage == storage]
            mirror.write_many(storage, names, State.PENDING)
        if won:
            yield won


def record_verification(storage: str, name: str, version: str, error: str) -> bool:
    """Record the outcome of checking a remote copy: ``error`` is empty when it matched."""
    return bool(
        FileRecord.objects.filter(storage=storage, name=name, version=version, state=State.REMOTE).update(
            last_error=error[:4000], updated_at=timezone.now()
        )
    )


@contextmanager
def local_copy_removable(storage: str, name: str, version: str) -> Iterator[bool]:
    """Lock a remote file's row while its local copy is deleted; yields whether to delete it.

    Yes only if this version is still the remote one and the cache says so too:
    a cache left at ``transferring`` (its write failed at the switch) would
    send reads to a local copy that is gone.  The row stays locked until the
    block ends, so a delete of the name, and with it a new save under the same
    name, waits instead of losing its fresh local file to this delete; and the
    cache write needs no check against the row, which cannot change before it.
    A block that ends without raising has deleted the copy: the row records
    it (``local_deleted_at``) in the same transaction.
    """
    with transaction.atomic(using=router.db_for_write(FileRecord)):
        # An UPDATE, not SELECT FOR UPDATE: SQLite locks on writes only.
        row = FileRecord.objects.filter(storage=storage, name=name, version=version, state=State.REMOTE)
        now = timezone.now()
        held = row.update(updated_at=now)
        removable = bool(held) and mirror.write_unchecked(mirror.cache_key(storage, name), State.REMOTE)
        yield removable
        if removable:  # the block deleted it without raising
            row.update(local_deleted_at=now)


def local_copy_gone(storage: str, name: str, version: str) -> bool:
    """Record that this remote file has no local copy any more, so cleanup-local passes it by."""
    return bool(
        FileRecord.objects.filter(storage=storage, name=name, version=version, state=State.REMOTE).update(
            local_deleted_at=timezone.now()
        )
    )


def move(old: str, new: str, name: str, version: str, *, size: int) -> bool:
    """Re-point the record of ``name`` from identity ``old`` to ``new``, as remote.

    For a file found in the remote of the storage whose identity is now
    ``new``.  False if the record changed meanwhile or ``new`` holds the name.
    """
    now = timezone.now()
    try:
        with transaction.atomic(using=router.db_for_write(FileRecord)):
            moved = (
                FileRecord.objects.filter(storage=old, name=name, version=version)
                .exclude(state=State.DELETED)
                .update(
                    storage=new,
                    state=State.REMOTE,
                    size=size,
                    bytes_done=size,
                    last_error="",
                    lease_until=None,
                    transferred_at=Coalesce(F("transferred_at"), Value(now)),
                    updated_at=now,
                )
            )
    except IntegrityError:
        return False  # recorded under ``new`` already (a read looked it up meanwhile)
    if moved:
        mirror.write(new, name, State.REMOTE)
    return bool(moved)
