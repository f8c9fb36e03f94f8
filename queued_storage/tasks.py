"""The worker side: the Celery task that transfers, and the sweeper.

A message carries only ``(storage identity, name, version)``; the worker
finds the storage in :mod:`queued_storage.registry`, built from its own
settings, and keeps it, with its connections, for every later task.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.signals import worker_init, worker_process_shutdown, worker_shutdown
from django.db import close_old_connections, connections

from . import location, registry
from .conf import conf, problems
from .location import Claim
from .models import FileRecord, State
from .publishing import Message, coalesce, enqueue, enqueue_many
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

if TYPE_CHECKING:
    from django.core.files.storage import Storage

    from .storage import QueuedStorage

    _Task = Task[Any, Any]
else:
    _Task = Task

logger = logging.getLogger("queued_storage")


def backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: exponential, with "equal jitter".

    Celery's full jitter may draw 0 every time and spend all retries within a
    second of an outage; half the interval is always waited.
    """
    interval = min(conf.RETRY_DELAY * 2.0**retries, conf.RETRY_BACKOFF_MAX)
    return interval / 2 + random.uniform(0, interval / 2)


class _LeaseKeeper(threading.Thread):
    """Renews the leases of the files this process copies and records their progress.

    One per process, started at first use and kept: a thread per task cost a
    start and a join for every message.  One write per file per beat (a
    third of the lease), not one per chunk.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="queued_storage lease")
        self._files: dict[tuple[str, str], tuple[str, list[int]]] = {}
        self._lock = threading.Lock()

    def add(self, storage: str, name: str, version: str) -> Progress:
        """Keep the lease of ``name`` until :meth:`discard`; returns the callback its copy reports to."""
        done = [0]
        with self._lock:
            self._files[storage, name] = (version, done)

        def progress(n: int) -> None:
            done[0] = n

        return progress

    def discard(self, storage: str, name: str) -> None:
        with self._lock:
            self._files.pop((storage, name), None)

    @staticmethod
    def _beat() -> float:
        """A third of the lease (a setting out of range reads as the default, see check E007)."""
        return conf.LEASE / 3

    def run(self) -> None:
        while True:
            time.sleep(self._beat())
            self.renew()

    def renew(self) -> None:
        """One beat: renew the lease and record the progress of every file kept."""
        with self._lock:
            files = [(key, version, done[0]) for key, (version, done) in self._files.items()]
        if not files:
            return
        try:
            for (storage, name), version, done in files:
                location.heartbeat(storage, name, version, done)
        except Exception:
            # The database is down: the next beat tries again, and a lease
            # that lapses meanwhile only lets the sweeper queue the file.
            logger.exception("queued_storage: could not renew the leases of %d files", len(files))
        finally:
            # No idle connection held between beats: every one this thread
            # opened, wherever a router sends FileRecord.
            connections.close_all()


_keeper: _LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def _lease_keeper() -> _LeaseKeeper:
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = _LeaseKeeper()
            _keeper.start()
        return _keeper


# Files claimed by one UPDATE in a several-file message; their leases run from then on.
CLAIM_CHUNK = 50
# Copied files of a several-file message switched together, while the next one copies.
SWITCH_BATCH = 5

_uploaders = threading.local()

# A copied file of a several-file message waiting for its switch: name, version, row, copy, seconds.
_Landed = tuple[str, str, FileRecord, Copied, float]


class _Uploader:
    """Held by one pool thread alone (thread-local): when that thread ends, it is freed."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="queued_storage upload")


# Every upload thread of this process, with what stops it when its pool thread ends.
# No lock: each change is one dict operation, and a finalizer may run in any thread.
_uploads: dict[ThreadPoolExecutor, weakref.finalize[Any, _Uploader]] = {}


def _upload_thread() -> ThreadPoolExecutor:
    """The upload thread of several-file messages run by this thread, started at first use.

    One per pool thread (one per process with prefork), kept for later tasks:
    the remote storage's connection is per thread (django-storages), and a
    new one costs a new boto3 client.  It is shut down when its pool thread
    ends and at the worker's shutdown (:func:`stop_upload_threads`).
    """
    uploader: _Uploader | None = getattr(_uploaders, "uploader", None)
    if uploader is None or uploader.executor not in _uploads:
        uploader = _uploaders.uploader = _Uploader()
        _uploads[uploader.executor] = weakref.finalize(uploader, _retire, uploader.executor)
    return uploader.executor


def _retire(executor: ThreadPoolExecutor, *, wait: bool = False) -> None:
    """Shut ``executor`` down: copies queued and not started are dropped (their leases lapse)."""
    _uploads.pop(executor, None)
    executor.shutdown(wait=wait, cancel_futures=True)


def stop_upload_threads(**kwargs: Any) -> None:
    """Shut down every upload thread of this process and wait for them: at the worker's shutdown.

    Connected to Celery's ``worker_process_shutdown`` (prefork children) and
    ``worker_shutdown`` (thread and solo pools).
    """
    for executor, finalizer in list(_uploads.items()):
        finalizer.detach()
        _retire(executor, wait=True)


worker_process_shutdown.connect(stop_upload_threads, weak=False, dispatch_uid=__name__ + ".uploads")
worker_shutdown.connect(stop_upload_threads, weak=False, dispatch_uid=__name__ + ".uploads")


def report_settings(**kwargs: Any) -> None:
    """Log each ``QUEUED_STORAGE_*`` setting out of its range (a worker runs no system checks)."""
    for problem in problems():
        logger.error("queued_storage: %s", problem)


worker_init.connect(report_settings, weak=False, dispatch_uid=__name__ + ".settings")


def _forget_threads() -> None:
    # A forked child does not have the parent's threads: nothing to stop, only to forget.
    global _uploaders, _uploads, _keeper, _keeper_lock
    for finalizer in list(_uploads.values()):
        finalizer.detach()
    _uploaders, _uploads = threading.local(), {}
    _keeper, _keeper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_threads)


def _busy_wait(record: FileRecord | None) -> float:
    """Seconds until the lease another worker holds on ``record`` would have lapsed."""
    lease = record.lease_until if record is not None else None
    return max(1.0, lease.timestamp() - time.time() + 1) if lease is not None else 1.0


class Transfer(_Task):
    """Copy a file to the remote storage, verify it, then switch reads to it.

    A message names one file, or several (``files=[[name, version], ...]``,
    sent by the background publisher for a burst of small saves).  Override
    :meth:`transfer` to change how the bytes move (as in django-queued-storage
    0.8): return True when done, False to retry.
    """

    name = "queued_storage.tasks.Transfer"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    delete_local = False

    def run(
        self,
        storage_key: str,
        name: str = "",
        version: str = "",
        *,
        files: list[list[str]] | None = None,
        **kwargs: Any,
    ) -> str:
        close_old_connections()
        storage = registry.lookup(storage_key)
        if files is not None:
            return self._run_many(storage, [(n, v) for n, v in files])
        outcome, record = location.claim(storage_key, name, version, owner=self.request.hostname or "")
        if outcome is Claim.BUSY:
            # Another worker copies it; come back when its lease would have lapsed.
            raise self.retry(countdown=_busy_wait(record), max_retries=None)
        if outcome is not Claim.CLAIMED:
            return str(outcome.value)
        assert record is not None
        keeper = _lease_keeper()
        progress = keeper.add(storage_key, name, version)
        try:
            copied, seconds = self._copy(storage, name, record, progress)
        finally:
            keeper.discard(storage_key, name)
        return self._settle(storage, name, version, record, copied, seconds)

    def _run_many(self, storage: QueuedStorage, files: list[tuple[str, str]]) -> str:
        """Copy several files one after another, claimed and switched while another copies.

        One upload thread keeps a single copy in flight, as a one-file task
        does; this thread meanwhile claims the next files and switches the
        copied ones, :data:`SWITCH_BATCH` at a time, so the database and cache
        round trips cost no time on the link.  A file that fails, or that
        another worker holds, goes on in a one-file message of its own.
        """
        keeper = _lease_keeper()
        outcomes: Counter[str] = Counter()
        flight: tuple[str, str, FileRecord, Future[tuple[Copied | Exception, float]]] | None = None
        latest: Future[tuple[Copied | Exception, float]] | None = None
        landed: list[_Landed] = []
        uploader = _upload_thread()
        owner = self.request.hostname or ""
        files = list(dict.fromkeys(files))  # a name twice would be copied twice
        try:
            for start in range(0, len(files), CLAIM_CHUNK):
                chunk = files[start : start + CLAIM_CHUNK]
                for (name, version), (outcome, record) in zip(
                    chunk, location.claim_many(storage.key, chunk, owner), strict=True
                ):
                    if outcome is Claim.CLAIMED:
                        assert record is not None
                        progress = keeper.add(storage.key, name, version)
                        latest = uploader.submit(self._copy_as, self.request, storage, name, record, progress)
                        if flight is not None:
                            self._land(storage, keeper, landed, outcomes, *flight)
                        flight = (name, version, record, latest)
                        if len(landed) >= SWITCH_BATCH:
                            self._switch(storage, keeper, landed, outcomes)
                    elif outcome is Claim.BUSY:
                        assert record is not None
                        enqueue(storage, name, version, record.host, countdown=_busy_wait(record))
                        outcomes["requeued"] += 1
                    else:
                        outcomes[str(outcome.value)] += 1
            if flight is not None:
                self._land(storage, keeper, landed, outcomes, *flight)
            self._switch(storage, keeper, landed, outcomes)
            # A transfer() override may have used the database in that thread.
            uploader.submit(close_old_connections).result()
        except BaseException:
            # A copy not started yet is not started at all: its lease lapses
            # and the sweeper queues it, as for a worker that died here.
            if latest is not None:
                latest.cancel()
            for name, _ in files:
                keeper.discard(storage.key, name)
            raise
        return ", ".join(f"{outcome}: {count}" for outcome, count in sorted(outcomes.items()))

    def _land(
        self,
        storage: QueuedStorage,
        keeper: _LeaseKeeper,
        landed: list[_Landed],
        outcomes: Counter[str],
        name: str,
        version: str,
        record: FileRecord,
        future: Future[tuple[Copied | Exception, float]],
    ) -> None:
        """Wait for the copy of ``name``; a copy joins ``landed``, a failure is handled now."""
        copied, seconds = future.result()
        if isinstance(copied, Exception):
            keeper.discard(storage.key, name)
            outcomes[self._failed(storage, name, version, copied, alone=False)] += 1
        else:
            landed.append((name, version, record, copied, seconds))

    def _switch(
        self, storage: QueuedStorage, keeper: _LeaseKeeper, landed: list[_Landed], outcomes: Counter[str]
    ) -> None:
        """Switch the copies in ``landed`` together (one commit, one cache write), then empty it."""
        if not landed:
            return
        won = location.switch_many(
            storage.key,
            [(name, version, copied.size, copied.checksum) for name, version, _, copied, _ in landed],
        )
        for (name, version, record, copied, seconds), switched in zip(landed, won, strict=True):
            keeper.discard(storage.key, name)
            if switched:
                outcomes[self._switched(storage, name, version, record, copied, seconds)] += 1
            else:
                outcomes[self._orphaned(storage, name, version)] += 1
        landed.clear()

    def _copy_as(
        self, request: Any, storage: QueuedStorage, name: str, record: FileRecord, progress: Progress
    ) -> tuple[Copied | Exception, float]:
        """:meth:`_copy` in the upload thread, where ``self.request`` is the message's too."""
        self.request_stack.push(request)
        try:
            return self._copy(storage, name, record, progress)
        finally:
            self.request_stack.pop()

    def _copy(
        self, storage: QueuedStorage, name: str, record: FileRecord, progress: Progress
    ) -> tuple[Copied | Exception, float]:
        """Run :meth:`transfer`; what it copied (or why not) and how long it took."""
        started = time.monotonic()
        try:
            result = self.transfer(
                name, storage.local, storage.remote, replace=record.attempts > 1, progress=progress
            )
            if result is False:
                raise TransferError(f"{type(self).__name__}.transfer() returned False")
            if result is not True and not isinstance(result, Copied):
                raise PermanentTransferError(
                    f"{type(self).__name__}.transfer() returned {result!r}; it must return True or False."
                )
            copied = result if isinstance(result, Copied) else self._fingerprint(storage.remote, name)
            if self._deletes_local(storage):
                # Checked in content, not only in size, before the switch that
                # lets the local copy go: read back when the remote kept no hash.
                copied = confirm_content(name, storage.local, storage.remote, copied)
        except Exception as exc:
            return exc, time.monotonic() - started
        return copied, time.monotonic() - started

    def _settle(
        self,
        storage: QueuedStorage,
        name: str,
        version: str,
        record: FileRecord,
        copied: Copied | Exception,
        seconds: float,
    ) -> str:
        """Switch reads to a one-file copy (and drop the local copy if asked), or handle its failure."""
        if isinstance(copied, Exception):
            return self._failed(storage, name, version, copied)
        if not location.switch_to_remote(
            storage.key, name, version, size=copied.size, checksum=copied.checksum
        ):
            return self._orphaned(storage, name, version)
        return self._switched(storage, name, version, record, copied, seconds)

    def _switched(
        self,
        storage: QueuedStorage,
        name: str,
        version: str,
        record: FileRecord,
        copied: Copied,
        seconds: float,
    ) -> str:
        """What follows a won switch: the local copy dropped if asked, the log line, the signal."""
        if self._deletes_local(storage):
            with location.local_copy_removable(storage.key, name, version) as removable:
                if removable:
                    storage.local.delete(name)
                else:
                    logger.warning(
                        "queued_storage: kept the local copy of %s: the file changed or the cache "
                        "could not be updated; 'queued_storage cleanup-local' removes it later",
                        name,
                    )
        logger.info(
            "queued_storage: transferred %s (%d bytes) in %.2f s, %.1f MB/s, attempt %d, by %s",
            name,
            copied.size,
            seconds,
            copied.size / 1e6 / max(seconds, 1e-9),
            record.attempts,
            self.request.hostname,
            extra={
                "queued_storage": {
                    "event": "transferred",
                    "storage": storage.key,
                    "name": name,
                    "size": copied.size,
                    "seconds": round(seconds, 3),
                    "mb_per_s": round(copied.size / 1e6 / max(seconds, 1e-9), 2),
                    "attempts": record.attempts,
                    "host": record.host,
                    "worker": self.request.hostname,
                }
            },
        )
        file_transferred.send(sender=type(self), name=name, local=storage.local, remote=storage.remote)
        return "remote"

    def _deletes_local(self, storage: QueuedStorage) -> bool:
        return bool(self.delete_local or storage.delete_local)

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> bool | Copied:
        """Copy ``name`` and verify it; the override hook of 0.8 (True done, False retry)."""
        return copy_file(
            name,
            local,
            remote,
            replace=kwargs.get("replace", False),
            progress=kwargs.get("progress"),
        )

    @staticmethod
    def _fingerprint(remote: Storage, name: str) -> Copied:
        size, etag = remote_fingerprint(remote, name)
        return Copied(size=size, checksum=f"etag:{etag}" if etag else "")

    def _orphaned(self, storage: QueuedStorage, name: str, version: str) -> str:
        """The file was deleted while it copied: remove the copies and the tombstone instead of switching.

        If that fails the tombstone stays, its lease given back, for the sweeper.
        """
        record = location.get(storage.key, name)
        try:
            if record is None:
                storage.remote.delete(name)
            elif record.version == version and record.state == State.DELETED:
                storage._finish_delete(name, version, None)
        except Exception as exc:
            logger.warning(
                "queued_storage: could not remove the copies of the deleted file %s (%s: %s); "
                "`manage.py queued_storage requeue` (or the requeue_stale task) removes them later",
                name,
                type(exc).__name__,
                exc,
            )
        return str(Claim.GONE.value)

    def _failed(
        self, storage: QueuedStorage, name: str, version: str, exc: Exception, *, alone: bool = True
    ) -> str:
        """Record a failed attempt; retry later (this message, or a one-file one) or give up."""
        error = redact(f"{type(exc).__name__}: {exc}")
        retries = self.request.retries if alone else 0
        final = isinstance(exc, PermanentTransferError) or retries >= conf.RETRIES
        record = location.release(storage.key, name, version, error=error, failed=final)
        if record is None or record.version != version or record.state == State.DELETED:
            return self._orphaned(storage, name, version)
        if final:
            logger.error("queued_storage: transfer of %s failed for good: %s", name, error)
            transfer_failed.send(
                sender=type(self), name=name, local=storage.local, remote=storage.remote, error=exc
            )
            return "failed"
        countdown = backoff(retries)
        logger.warning(
            "queued_storage: transfer of %s failed (%s); retry %d of %d in %.1f s",
            name,
            error,
            retries + 1,
            conf.RETRIES,
            countdown,
        )
        if not alone:
            # The other files of the message are done; this one retries by itself.
            enqueue(storage, name, version, record.host, countdown=countdown, retries=retries + 1)
            return "retrying"
        # Celery logs the exception it is given: the redacted text when it held a secret.
        shown = exc if error == f"{type(exc).__name__}: {exc}" else TransferError(error)
        raise self.retry(exc=shown, countdown=countdown, max_retries=conf.RETRIES)


class TransferAndDelete(Transfer):
    """Like :class:`Transfer`, and deletes the local copy once the remote one is verified."""

    name = "queued_storage.tasks.TransferAndDelete"
    delete_local = True


@dataclass
class Swept:
    """What one sweeper run did."""

    queued: int = 0  # files whose transfer was queued again
    deleted: int = 0  # deleted files whose copies and record it removed
    undeletable: int = 0  # deleted files whose copies it could not remove (tried again next run)


def sweep(older_than: float = 300, *, failed: bool = False) -> Swept:
    """Finish abandoned deletions, then queue again what was left pending, stuck or (optionally) failed.

    A deletion is abandoned when the lease on its tombstone lapsed: the worker
    or the ``delete()`` call that held it died, or could not remove a copy.
    A file is queued again when it waited ``older_than`` seconds since its
    last change and since it was last queued: at most one message per file
    per ``older_than``, however often the sweeper runs.  The pending files of
    a ``delayed`` storage only once ``transfer()`` queued them.  Small files
    go as messages of several, as the background publisher sends them.  The
    rows are read :data:`location.CHUNK` at a time.
    """
    swept = Swept()
    for tombstones in location.abandoned():
        for record in tombstones:
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
                    location.release_tombstone(record.storage, record.name, record.version, error=str(exc))
                swept.undeletable += 1
            else:
                swept.deleted += 1
    for records in location.stale(older_than, failed=failed, delayed=registry.delayed()):
        messages: list[Message] = []
        for record in records:
            try:
                storage = registry.lookup(record.storage)
            except LookupError as exc:
                logger.error("queued_storage: cannot requeue %s: %s", record.name, exc)
                continue
            messages.append((storage, record.name, record.version, record.host, record.size))
        for storage, files, host in coalesce(messages, conf.BATCH_FILES):
            if enqueue_many(storage, files, host):
                swept.queued += len(files)
    return swept


def requeue(older_than: float = 300, *, failed: bool = False) -> int:
    """:func:`sweep`; the number of files queued again."""
    return sweep(older_than, failed=failed).queued


@shared_task(name="queued_storage.tasks.requeue_stale", ignore_result=True)
def requeue_stale(older_than: float = 300, failed: bool = False) -> int:
    """The sweeper as a task, for celery beat; returns the number of files queued again."""
    return requeue(older_than, failed=failed)
