"""Moving files to the remote storage: claim, copy, verify, switch, settle.

Knows nothing of any queue.  A queue's task (:mod:`queued_storage.tasks` for
Celery) builds a :class:`Mover` for one message, calls :meth:`Mover.one` or
:meth:`Mover.many`, and turns each :class:`Outcome` into what its queue does:
nothing, a retry later, or a message of its own (:func:`report` logs it and
sends the signals).  Every state change goes through
:mod:`queued_storage.transitions`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections

from . import threads, transitions
from .conf import conf
from .models import FileRecord, State
from .redaction import redact
from .signals import file_transferred, transfer_failed
from .transfer import (
    Copied,
    PermanentTransferError,
    Progress,
    TransferError,
    confirm_content,
    copy_file,
    remote_fingerprint,
)
from .transitions import Claim

if TYPE_CHECKING:
    from django.core.files.storage import Storage
    from django.dispatch import Signal

    from .storage import QueuedStorage

logger = logging.getLogger("queued_storage")

#: How the bytes move: ``copy(name, local, remote, replace=..., progress=...)``
#: returns what it copied (:class:`~queued_storage.transfer.Copied`), True when
#: done (the remote is then asked what it holds), or False to retry.
Copier = Callable[..., "bool | Copied"]

# Files claimed by one UPDATE in a several-file message; their leases run from then on.
CLAIM_CHUNK = 50
# Copied files of a several-file message switched together, while the next one copies:
# each commit may wait for the database's write lock while the application saves
# (SQLite), so fewer commits wait less in all.
SWITCH_BATCH = 25
# Seconds a copied file waits for its batch to fill before it is switched anyway
# (while the next copy goes on): reads move to the remote copy soon, on any link.
SWITCH_WITHIN = 1.0
# While a message goes on to files waiting in the table, each commit that switches
# what landed also takes the next ones: it keeps a batch plus this many seconds of
# copying queued (at the pace of the message's copies so far), which the upload
# thread copies while the next commit waits for the database's write lock ...
AHEAD_SECONDS = 1.0
# ... and never more files than this: each holds a lease, the message's end waits
# for them, and with several workers what one holds queued the others cannot copy.
TAKE_AHEAD = 2 * CLAIM_CHUNK
# How long a several-file message goes on to files that wait in the table
# after its own: messages of other storages and hosts wait no longer than this
# (and the copies it queued before: about AHEAD_SECONDS of them).
MORE_FOR = 5.0


class Kind(str, Enum):
    """What became of one file of a message."""

    REMOTE = "remote"  # copied, verified, reads switched to the remote copy
    DONE = "done"  # remote already: a message delivered twice
    GONE = "gone"  # deleted or replaced meanwhile; any copy of ours was removed
    BUSY = "busy"  # another worker holds its lease: try again after ``retry_after``
    RETRY = "retry"  # the copy failed: try again after ``retry_after``, as retry ``retries``
    FAILED = "failed"  # failed for good; the record says why
    FAILED_BEFORE = "failed before"  # failed for good already: a stale message, nothing to do
    # Taken from the table and failed, not for good: pending again, left to its own
    # message (or the sweeper), so it never has a second chain of retries.
    LEFT = "left"


# What a claim that leaves nothing to copy tells the caller (BUSY waits and is handled apart).
_NOTHING_TO_DO = {Claim.DONE: Kind.DONE, Claim.GONE: Kind.GONE, Claim.FAILED: Kind.FAILED_BEFORE}


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    kind: Kind
    retry_after: float = 0.0
    retries: int = 0  # the retry this outcome asks for (RETRY)
    host: str = ""  # where the local copy is: the queue of a retry
    error: Exception | None = None
    copied: Copied | None = None
    seconds: float = 0.0
    attempts: int = 0


def backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: exponential, with "equal jitter".

    Full jitter may draw 0 every time and spend all retries within a second
    of an outage; half the interval is always waited.
    """
    interval = min(conf.RETRY_DELAY * 2.0**retries, conf.RETRY_BACKOFF_MAX)
    return interval / 2 + random.uniform(0, interval / 2)


def busy_wait(record: FileRecord | None) -> float:
    """Seconds until the lease another worker holds on ``record`` would have lapsed."""
    lease = record.lease_until if record is not None else None
    return max(1.0, lease.timestamp() - time.time() + 1) if lease is not None else 1.0


def queue_depth(pace: float) -> int:
    """How many copies a message going on keeps queued, when each has taken ``pace`` seconds so far."""
    if pace * TAKE_AHEAD <= AHEAD_SECONDS:  # as many as may be (also: no copy timed yet)
        return TAKE_AHEAD
    return min(TAKE_AHEAD, SWITCH_BATCH + math.ceil(AHEAD_SECONDS / pace))


def default_copy(name: str, local: Storage, remote: Storage, **kwargs: Any) -> Copied:
    """Copy ``name`` with :func:`~queued_storage.transfer.copy_file` and verify it."""
    return copy_file(
        name, local, remote, replace=kwargs.get("replace", False), progress=kwargs.get("progress")
    )


# A claimed file of a several-file message whose copy is queued or running.
_Queued = tuple[str, str, FileRecord, "Future[tuple[Copied | Exception, float] | None]"]
# A copied file of a several-file message waiting for its switch.
_Landed = tuple[str, str, FileRecord, Copied, float]


class Mover:
    """Moves files of one storage for one message.

    ``copy`` moves the bytes (:data:`Copier`; ``copy_name`` names it in
    errors); ``retries`` is how many times this message was retried already;
    ``owner`` names the worker that holds the leases.
    """

    def __init__(
        self,
        storage: QueuedStorage,
        *,
        copy: Copier = default_copy,
        delete_local: bool = False,
        copy_name: str = "copy_file()",
        retries: int = 0,
        owner: str = "",
    ) -> None:
        self.storage = storage
        self.copy = copy
        self.copy_name = copy_name
        self.delete_local = delete_local or storage.delete_local
        self.retries = retries
        self.owner = owner
        # The state of a call of many(): its copies queued in order, those copied and
        # waiting for their switch, the outcomes so far (and how many were yielded),
        # the names taken from the table, and whether a copy failed.
        self._queued: deque[_Queued] = deque()
        self._landed: list[_Landed] = []
        self._landed_at = 0.0  # when the first of the landed copies landed
        self._copies = 0  # how many copies landed ...
        self._copy_seconds = 0.0  # ... and the seconds they took
        self._outcomes: list[Outcome] = []
        self._reported = 0
        self._taken: set[str] = set()
        self._claimed: list[str] = []  # whose leases the lease keeper renews
        self._failing = threading.Event()

    # -- one file

    def one(self, name: str, version: str) -> Outcome:
        """Claim, copy, verify and switch one file."""
        claim, record = transitions.claim(self.storage.identity, name, version, owner=self.owner)
        if claim is not Claim.CLAIMED:
            return self._unclaimed(name, version, claim, record)
        assert record is not None
        keeper = threads.lease_keeper()
        progress = keeper.add(self.storage.identity, name, version)
        try:
            copied, seconds = self._copy(name, record, progress)
        finally:
            keeper.discard(self.storage.identity, name)
        if isinstance(copied, Exception):
            return self._failed(name, version, copied, retries=self.retries)
        won = transitions.switch_to_remote(
            self.storage.identity, name, version, size=copied.size, checksum=copied.checksum
        )
        return self._settle(name, version, record, copied, seconds, won)

    # -- several files

    def many(self, files: list[tuple[str, str]], *, more: bool = True) -> Iterator[Outcome]:
        """Move several files, their copies queued back to back while this thread claims and switches.

        The upload thread copies the claimed files one after another, as
        :meth:`one` would; this thread meanwhile claims the next
        :data:`CLAIM_CHUNK` and switches the copied ones, :data:`SWITCH_BATCH`
        or more at a time.  A switch that waits for the database (SQLite's write lock
        while the application saves) holds no copy back.  A failure never
        stops the others: it is that file's outcome.

        With ``more``, the message then goes on to small files of the same
        storage and host that wait in the table
        (:func:`~queued_storage.transitions.take_waiting`), for up to
        :data:`MORE_FOR` seconds and until a copy fails: a backlog then
        costs one message's hand-off and claim per :data:`CLAIM_CHUNK`
        files, and the upload thread does not wait between messages.  A
        message whose own files were copied already (taken from the table by
        an earlier one) goes on too, one file first.  Their outcomes follow
        the message's own; a file another worker took first is left to it,
        and one taken but not started when a copy fails is given back.

        Yields each outcome as soon as it is reached, so that what became of
        a file is reported even if a later step raises.  Stopping early
        cancels the copies not started; their leases lapse.
        """
        self._queued = deque()
        self._landed = []
        self._outcomes = []
        self._reported = 0
        self._taken = set()
        self._claimed = []
        self._copies, self._copy_seconds = 0, 0.0
        self._failing.clear()
        files = list(dict.fromkeys(files))  # a name twice would be copied twice
        started = time.monotonic()
        host: str | None = None  # where the message's files are: the waiting files taken must be there too
        try:
            for start in range(0, len(files), CLAIM_CHUNK):
                chunk = files[start : start + CLAIM_CHUNK]
                # The copies of the chunk before stay queued while this one's are added.
                earlier = len(self._queued)
                outcomes = transitions.claim_many(self.storage.identity, chunk, self.owner)
                for (name, version), (claim, record) in zip(chunk, outcomes, strict=True):
                    if host is None and record is not None and record.version == version:
                        # Saved on the host whose queue this message came from; a newer
                        # save of the name (another version) may be another host's.
                        host = record.host
                    if claim is not Claim.CLAIMED:
                        self._outcomes.append(self._unclaimed(name, version, claim, record))
                        continue
                    assert record is not None
                    self._queue(record, taken=False)
                yield from self._fresh()
                yield from self._land_queued(earlier)
            if more and host is not None:
                yield from self._go_on(host, until=started + MORE_FOR)
            yield from self._land_queued(len(self._queued))
            self._switch()
            yield from self._fresh()
            # A copier may have used the database in that thread.
            threads.upload_executor().submit(close_old_connections).result()
        except BaseException as exc:
            # A copy not started yet is not started at all: its lease lapses
            # and the sweeper queues it, as for a worker that died here.
            for *_, future in self._queued:
                future.cancel()
            keeper = threads.lease_keeper()
            for name in self._claimed:
                keeper.discard(self.storage.identity, name)
            if isinstance(exc, Exception):
                # What the failing step reached before it raised is reported too; then the error.
                yield from self._fresh()
            raise

    def _queue(self, record: FileRecord, *, taken: bool) -> None:
        """Queue the copy of a claimed file in the upload thread, its lease kept meanwhile."""
        name, version = record.name, record.version
        self._claimed.append(name)
        if taken:
            self._taken.add(name)
        progress = threads.lease_keeper().add(self.storage.identity, name, version)
        copy = threads.upload_executor().submit(self._copy_queued, name, record, progress, taken=taken)
        self._queued.append((name, version, record, copy))

    def _go_on(self, host: str, *, until: float) -> Iterator[Outcome]:
        """Go on to small files waiting in the table on ``host`` until ``until`` or a copy fails.

        Each commit switches the copies landed and takes up to
        :data:`CLAIM_CHUNK` waiting files (:meth:`_switch`), so that
        :func:`queue_depth` copies stay queued.  Until a copy of this message
        has landed (a message whose files were all copied already), one file
        at a time: the remote may be down, and then one file fails, not a
        chunk.
        """
        queued = self._queued
        while time.monotonic() < until:
            if not self._copied():
                # Wait for all but the last copy queued (which keeps the upload thread busy meanwhile).
                yield from self._land_queued(max(len(queued) - 1, min(len(queued), 1)))
            if self._copied():
                pace = self._copy_seconds / self._copies if self._copies else 0.0
                most = min(CLAIM_CHUNK, queue_depth(pace) - len(queued))
            else:
                most = 1
            taken = self._switch(host, most)
            yield from self._fresh()
            if most > 0 and not taken:
                return  # nothing small waits on this host, or a copy failed
            for record in taken:
                self._queue(record, taken=True)
            # Land copies until the next commit is due: a batch landed, the first of
            # them landed SWITCH_WITHIN ago, or nothing left to land.
            while queued and len(self._landed) < SWITCH_BATCH:
                if self._landed and not self._lands_in_time():
                    break
                self._land(*queued[0])
                queued.popleft()  # once landed: an error above leaves it to be cancelled
                yield from self._fresh()

    def _copy_queued(
        self, name: str, record: FileRecord, progress: Progress, *, taken: bool
    ) -> tuple[Copied | Exception, float] | None:
        """In the upload thread: copy a claimed file, or None for a taken one not copied.

        Once a copy of this message has failed the remote may be down, so the
        files taken from the table and not started yet are not tried: each
        is given back, never tried, to its own message or a later one's taking.
        """
        if taken and self._failing.is_set():
            return None
        result = self._copy(name, record, progress)
        if isinstance(result[0], Exception):
            self._failing.set()
        return result

    def _copied(self) -> bool:
        """Whether a copy of this message has landed (every file switched landed first)."""
        return self._copies > 0

    def _fresh(self) -> list[Outcome]:
        """The outcomes reached since the last call."""
        fresh = self._outcomes[self._reported :]
        self._reported = len(self._outcomes)
        return fresh

    def _land_queued(self, count: int) -> Iterator[Outcome]:
        """Wait for the first ``count`` queued copies in order, switching them as batches fill.

        A batch also takes every later copy that has finished by then: while
        a switch waits for the database, the copies go on, and the next
        switch takes them all in one commit.  The copies landed are switched
        :data:`SWITCH_WITHIN` seconds after the first of them at the latest,
        whether the batch is full or not.  Yields the outcomes as they are
        reached.
        """
        queued = self._queued
        while count > 0:
            if self._landed and not self._lands_in_time():
                self._switch()
                yield from self._fresh()
            self._land(*queued[0])
            queued.popleft()  # once landed: an error above leaves it to be cancelled
            count -= 1
            if len(self._landed) >= SWITCH_BATCH:
                while queued and queued[0][3].done():
                    self._land(*queued[0])
                    queued.popleft()
                    count -= 1
                self._switch()
            yield from self._fresh()

    def _lands_in_time(self) -> bool:
        """Wait for the next queued copy while what landed has waited less than :data:`SWITCH_WITHIN`."""
        left = self._landed_at + SWITCH_WITHIN - time.monotonic()
        return bool(wait([self._queued[0][3]], timeout=max(left, 0)).done)

    def _land(
        self,
        name: str,
        version: str,
        record: FileRecord,
        future: Future[tuple[Copied | Exception, float] | None],
    ) -> None:
        """Wait for the copy of ``name``; a copy joins the landed ones, a failure is its outcome now.

        A taken file that was not copied is given back as it was, to its own message.
        """
        result = future.result()
        if result is None:
            threads.lease_keeper().discard(self.storage.identity, name)
            orphaned = self._give_back(name, version, record)
            if orphaned is not None:
                self._outcomes.append(orphaned)
            return
        copied, seconds = result
        if isinstance(copied, Exception):
            threads.lease_keeper().discard(self.storage.identity, name)
            # Retried in a message of its own, as a first retry: the others are done.
            outcome = self._failed(name, version, copied, retries=0)
            if outcome.kind is Kind.RETRY and name in self._taken:
                outcome = replace(outcome, kind=Kind.LEFT, retry_after=0.0, retries=0)
            self._outcomes.append(outcome)
        else:
            if not self._landed:
                self._landed_at = time.monotonic()
            self._landed.append((name, version, record, copied, seconds))
            self._copies += 1
            self._copy_seconds += seconds

    def _switch(self, host: str | None = None, most: int = 0) -> list[FileRecord]:
        """Switch the landed copies together (one commit, one cache write), then forget them.

        With ``host`` and ``most``, the same commit takes up to ``most``
        small files waiting on ``host`` (:func:`~queued_storage.transitions.take_waiting`),
        returned: one wait for the database's write lock for both.  Nothing
        is taken once a copy failed: the remote may be down.
        """
        landed = self._landed
        take = host is not None and most > 0 and not self._failing.is_set()
        if not landed and not take:
            return []
        identity = self.storage.identity
        with transitions.one_commit():
            copies = [(name, version, copied.size, copied.checksum) for name, version, _, copied, _ in landed]
            won = transitions.switch_many(identity, copies) if landed else []
            taken = (
                transitions.take_waiting(
                    identity, host, most=most, delayed=self.storage.delayed, owner=self.owner
                )
                if take and host is not None
                else []
            )
        keeper = threads.lease_keeper()
        for (name, version, record, copied, seconds), switched in zip(landed, won, strict=True):
            keeper.discard(identity, name)
            self._outcomes.append(self._settle(name, version, record, copied, seconds, switched))
        landed.clear()
        return taken

    # -- the steps

    def _unclaimed(self, name: str, version: str, claim: Claim, record: FileRecord | None) -> Outcome:
        if claim is Claim.BUSY:
            host = record.host if record is not None else ""
            return Outcome(name, version, Kind.BUSY, retry_after=busy_wait(record), host=host)
        return Outcome(name, version, _NOTHING_TO_DO[claim])

    def _copy(self, name: str, record: FileRecord, progress: Progress) -> tuple[Copied | Exception, float]:
        """Run the copier; what it copied (or why not) and how long it took."""
        started = time.monotonic()
        storage = self.storage
        try:
            result = self.copy(
                name, storage.local, storage.remote, replace=record.attempts > 1, progress=progress
            )
            if result is False:
                raise TransferError(f"{self.copy_name} returned False")
            if result is not True and not isinstance(result, Copied):
                raise PermanentTransferError(
                    f"{self.copy_name} returned {result!r}; it must return True or False."
                )
            copied = result if isinstance(result, Copied) else _fingerprint(storage.remote, name)
            if self.delete_local:
                # Checked in content, not only in size, before the switch that
                # lets the local copy go: read back when the remote kept no hash.
                copied = confirm_content(name, storage.local, storage.remote, copied)
        except Exception as exc:
            return exc, time.monotonic() - started
        return copied, time.monotonic() - started

    def _settle(
        self, name: str, version: str, record: FileRecord, copied: Copied, seconds: float, won: bool
    ) -> Outcome:
        """After the switch: drop the local copy if asked; a lost switch means the file was deleted."""
        if not won:
            return self._orphaned(name, version)
        if self.delete_local:
            with transitions.local_copy_removable(self.storage.identity, name, version) as removable:
                if removable:
                    self.storage.local.delete(name)
                else:
                    logger.warning(
                        "queued_storage: kept the local copy of %s: the file changed or the cache "
                        "could not be updated; 'queued_storage cleanup-local' removes it later",
                        name,
                    )
        return Outcome(
            name,
            version,
            Kind.REMOTE,
            host=record.host,
            copied=copied,
            seconds=seconds,
            attempts=record.attempts,
        )

    def _give_back(self, name: str, version: str, record: FileRecord) -> Outcome | None:
        """Give back a taken file never tried; the outcome of one deleted or saved again meanwhile.

        None when it went back, or when another worker claimed it after this
        one's lease lapsed: then it is that worker's.
        """
        if transitions.give_back(self.storage.identity, name, version, attempts=record.attempts):
            return None
        now = transitions.get(self.storage.identity, name)
        if now is None or now.version != version or now.state == State.DELETED:
            return self._orphaned(name, version)
        return None

    def _orphaned(self, name: str, version: str) -> Outcome:
        """The file was deleted while it copied: remove the copies and the tombstone instead of switching.

        If that fails the tombstone stays, its lease given back, for the sweeper.
        """
        record = transitions.get(self.storage.identity, name)
        try:
            if record is None:
                self.storage.remote.delete(name)
            elif record.version == version and record.state == State.DELETED:
                self.storage._finish_delete(name, version, None)
        except Exception as exc:
            logger.warning(
                "queued_storage: could not remove the copies of the deleted file %s (%s); "
                "`manage.py queued_storage requeue` (or the requeue_stale task) removes them later",
                name,
                redact(f"{type(exc).__name__}: {exc}"),
            )
        return Outcome(name, version, Kind.GONE)

    def _failed(self, name: str, version: str, exc: Exception, *, retries: int) -> Outcome:
        """Record a failed attempt: retry it after a backoff, or give up."""
        error = redact(f"{type(exc).__name__}: {exc}")
        final = isinstance(exc, PermanentTransferError) or retries >= conf.RETRIES
        record = transitions.release(self.storage.identity, name, version, error=error, failed=final)
        if record is None or record.version != version or record.state == State.DELETED:
            return self._orphaned(name, version)
        if final:
            return Outcome(name, version, Kind.FAILED, host=record.host, error=exc, attempts=record.attempts)
        return Outcome(
            name,
            version,
            Kind.RETRY,
            retry_after=backoff(retries),
            retries=retries + 1,
            host=record.host,
            error=exc,
            attempts=record.attempts,
        )


def busy_later(busy: list[Outcome]) -> list[tuple[str, list[tuple[str, str]], float]]:
    """The BUSY outcomes of a message as one message per host: ``(host, files, delay)``.

    Another worker holds each file's lease.  Sent back together, for when
    the last of those leases would have lapsed: by then each is done, or
    its holder died or left it, and the message copies what is still there.
    """
    hosts: dict[str, list[Outcome]] = {}
    for outcome in busy:
        hosts.setdefault(outcome.host, []).append(outcome)
    return [
        (host, [(o.name, o.version) for o in outcomes], max(o.retry_after for o in outcomes))
        for host, outcomes in hosts.items()
    ]


def settle_many(
    outcomes: Iterator[Outcome],
    *,
    report: Callable[[Outcome], object],
    retry: Callable[[Outcome], str],
    send_back: Callable[[str, list[tuple[str, str]], float], bool],
) -> str:
    """Hand a several-file message's outcomes to its queue as they come; what became of the files.

    The queue's task passes ``report`` (log and signals), ``retry`` (send a
    failed file on alone; returns what became of it) and ``send_back(host,
    files, delay)``, through which the files another worker holds go back
    together (:func:`busy_later`), even if a later step raised.
    """
    counts: dict[str, int] = {}
    busy: list[Outcome] = []
    try:
        for outcome in outcomes:
            report(outcome)
            if outcome.kind is Kind.BUSY:
                busy.append(outcome)  # counted once sent back
                continue
            kind = retry(outcome) if outcome.kind is Kind.RETRY else outcome.kind.value
            counts[kind] = counts.get(kind, 0) + 1
    finally:
        for host, files, delay in busy_later(busy):
            kind = "requeued" if send_back(host, files, delay) else "left to the sweeper"
            counts[kind] = counts.get(kind, 0) + len(files)
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))


def _fingerprint(remote: Storage, name: str) -> Copied:
    size, etag = remote_fingerprint(remote, name)
    return Copied(size=size, checksum=f"etag:{etag}" if etag else "")


def _send(signal: Signal, sender: Any, name: str, **kwargs: Any) -> None:
    """Send ``signal``; a receiver that raises is logged, redacted, and stops neither task nor files.

    The file's state is settled by then: an error in a receiver must not
    leave the rest of a message's files to the sweeper.  As with any
    ``send()``, the receivers after the one that raised are not called for
    this file.  Not ``send_robust()``: Django logs the error there as it is.
    """
    try:
        signal.send(sender=sender, name=name, **kwargs)
    except Exception as exc:
        logger.error(
            "queued_storage: a receiver of a signal for %s raised %s",
            name,
            redact("".join(traceback.format_exception(exc)).rstrip()),
        )


def report(storage: QueuedStorage, outcome: Outcome, *, sender: Any, worker: str = "") -> None:
    """Log an outcome and send its signal (:data:`file_transferred`, :data:`transfer_failed`)."""
    if outcome.kind is Kind.REMOTE:
        copied = outcome.copied
        assert copied is not None
        rate = copied.size / 1e6 / max(outcome.seconds, 1e-9)
        logger.info(
            "queued_storage: transferred %s (%d bytes) in %.2f s, %.1f MB/s, attempt %d, by %s",
            outcome.name,
            copied.size,
            outcome.seconds,
            rate,
            outcome.attempts,
            worker,
            extra={
                "queued_storage": {
                    "event": "transferred",
                    "storage": storage.identity,
                    "name": outcome.name,
                    "size": copied.size,
                    "seconds": round(outcome.seconds, 3),
                    "mb_per_s": round(rate, 2),
                    "attempts": outcome.attempts,
                    "host": outcome.host,
                    "worker": worker,
                }
            },
        )
        _send(file_transferred, sender, outcome.name, local=storage.local, remote=storage.remote)
    elif outcome.kind is Kind.FAILED:
        assert outcome.error is not None
        error = redact(f"{type(outcome.error).__name__}: {outcome.error}")
        logger.error("queued_storage: transfer of %s failed for good: %s", outcome.name, error)
        _send(
            transfer_failed,
            sender,
            outcome.name,
            local=storage.local,
            remote=storage.remote,
            error=outcome.error,
        )
    elif outcome.kind in (Kind.RETRY, Kind.LEFT):
        assert outcome.error is not None
        then = (
            f"retry {outcome.retries} of {conf.RETRIES} in {outcome.retry_after:.1f} s"
            if outcome.kind is Kind.RETRY
            else "its own message tries it again"
        )
        logger.warning(
            "queued_storage: transfer of %s failed (%s); %s",
            outcome.name,
            redact(f"{type(outcome.error).__name__}: {outcome.error}"),
            then,
        )
