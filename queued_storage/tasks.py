"""The Celery side: queueing a transfer, the task that runs it, and the sweeper.

A message carries only ``(storage identity, name, version)``; the worker
rebuilds the storage from its own settings and keeps it, with its
connections, for every later task.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celery import Task, current_app, shared_task
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from . import location
from .conf import conf, default
from .location import Claim
from .models import FileRecord, State
from .signals import file_transferred, transfer_failed
from .transfer import (
    Copied,
    PermanentTransferError,
    Progress,
    TransferError,
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

# A publish that cannot reach the broker gives up quickly: the record stays
# pending and the sweeper queues it again, so the request need not wait.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def import_task(path: str) -> Any:
    """The Celery task or Task subclass at dotted ``path``, or ImproperlyConfigured naming it."""
    try:
        obj = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"QueuedStorage option task={path!r} does not import: {exc}") from exc
    if isinstance(obj, Task) or (isinstance(obj, type) and issubclass(obj, Task)):
        return obj
    raise ImproperlyConfigured(
        f"QueuedStorage option task={path!r} is {obj!r}, not a Celery task or Task subclass."
    )


def resolve_task(path: str) -> _Task:
    """The Celery task at dotted ``path``; a Task class is registered with the current app.

    Only called once the project's Celery app exists (``celery_configured()``):
    registering binds the class to an app, and Celery's unconfigured fallback
    app would keep it.
    """
    obj = import_task(path)
    if isinstance(obj, type):
        app = current_app
        # A subclass inherits its parent's name; it needs one of its own.
        name = obj.__dict__.get("name") or f"{obj.__module__}.{obj.__qualname__}"
        if name not in app.tasks:
            instance = obj()
            instance.name = name
            app.register_task(instance)
        task: _Task = app.tasks[name]
        return task
    shared: _Task = obj
    return shared


def celery_configured() -> bool:
    """Whether this process has the project's Celery app, not Celery's unconfigured fallback."""
    return current_app.main not in (None, "default")


def queue_for(host: str | None) -> str | None:
    """The Celery queue of a transfer whose local copy is on ``host``: the one routing rule.

    With ``QUEUED_STORAGE_HOST_QUEUE`` each host's files go to that host's own
    queue, because only a worker on that host can read them; otherwise to
    ``QUEUED_STORAGE_QUEUE`` (``None``: Celery's default queue).
    """
    pattern = conf.HOST_QUEUE
    if pattern and host:
        return pattern.format(host=host)
    return conf.QUEUE


def enqueue(storage: QueuedStorage, name: str, version: str, host: str | None = None, **options: Any) -> bool:
    """Publish the transfer of ``name``; on failure log it and leave it to the sweeper.

    ``host`` is the record's host (where the local copy is); ``None`` means this host.
    ``options`` go to ``apply_async`` (``countdown``, ``retries``).
    """
    return _publish(storage, [(name, version)], host, options)


def enqueue_many(storage: QueuedStorage, files: list[tuple[str, str]], host: str | None = None) -> bool:
    """Publish the transfers of several ``(name, version)`` saved on ``host`` as one message.

    One message is one task for the worker: Celery's cost per message (about
    2 ms here) is paid once for the lot.  A single file is sent in the
    one-file form.
    """
    return _publish(storage, files, host, {})


def _publish(
    storage: QueuedStorage, files: list[tuple[str, str]], host: str | None, extra: dict[str, Any]
) -> bool:
    if not files:
        return True
    what = repr(files[0][0]) if len(files) == 1 else f"{len(files)} files ({files[0][0]!r}, ...)"
    if not celery_configured():
        logger.error(
            "queued_storage: no Celery app is configured in this process, so the transfer of %s "
            "stays pending. Import your project's Celery app in proj/__init__.py (Celery's "
            "'First steps with Django'), then run `manage.py queued_storage requeue`.",
            what,
        )
        return False
    try:
        options: dict[str, Any] = {"retry_policy": _PUBLISH_RETRY, **extra}
        queue = queue_for(conf.HOST if host is None else host)
        if queue:
            options["queue"] = queue
        task = resolve_task(storage.task)
        if len(files) == 1:
            task.apply_async((storage.key, *files[0]), **options)
        else:
            task.apply_async((storage.key,), {"files": [list(f) for f in files]}, **options)
    except Exception as exc:  # the record is the outbox: nothing is lost
        logger.warning(
            "queued_storage: could not queue the transfer of %s (%s: %s); it stays pending "
            "until `manage.py queued_storage requeue` or the requeue task runs.",
            what,
            type(exc).__name__,
            exc,
        )
        return False
    return True


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
        """A third of the lease; of the default lease while the setting is invalid.

        The thread must outlive a bad setting (check E007 names it): if it
        died, no later copy in this process would have its lease renewed.
        """
        try:
            return conf.LEASE / 3
        except ImproperlyConfigured:
            logger.exception("queued_storage: renewing leases at the default interval meanwhile")
            return float(default("QUEUED_STORAGE_LEASE")) / 3

    def run(self) -> None:
        while True:
            time.sleep(self._beat())
            with self._lock:
                files = [(key, version, done[0]) for key, (version, done) in self._files.items()]
            if not files:
                continue
            try:
                for (storage, name), version, done in files:
                    location.heartbeat(storage, name, version, done)
            except Exception:
                # The database is down: the next beat tries again, and a lease
                # that lapses meanwhile only lets the sweeper queue the file.
                logger.exception("queued_storage: could not renew the leases of %d files", len(files))
            finally:
                connection.close()  # no idle connection held between beats


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


def _upload_thread() -> ThreadPoolExecutor:
    """The upload thread of several-file messages run by this thread, started at first use.

    One per pool thread (one per process with prefork), kept for later tasks:
    the remote storage's connection is per thread (django-storages), and a
    new one costs a new boto3 client.
    """
    uploader: ThreadPoolExecutor | None = getattr(_uploaders, "executor", None)
    if uploader is None:
        uploader = _uploaders.executor = ThreadPoolExecutor(1, thread_name_prefix="queued_storage upload")
    return uploader


def _forget_threads() -> None:
    # A forked child does not have the parent's threads.
    global _uploaders, _keeper, _keeper_lock
    _uploaders = threading.local()
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
        from .storage import get_storage  # storage imports this module

        close_old_connections()
        storage = get_storage(storage_key)
        if files is not None:
            return self._run_many(storage, [(n, v) for n, v in files])
        outcome, record = location.claim(storage_key, name, version, owner=self.request.hostname or "")
        if outcome is Claim.BUSY:
            # Another worker copies it: come back when its lease would have lapsed, as
            # often as it takes.  Not self.retry(): Celery caps that at the task's
            # max_retries, and each one would spend a retry of this file's own budget.
            assert record is not None
            enqueue(
                storage,
                name,
                version,
                record.host,
                countdown=_busy_wait(record),
                retries=self.request.retries,
            )
            return "requeued"
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
        if self.delete_local or storage.delete_local:
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
        """The file was deleted while it copied: remove the copy instead of switching."""
        record = location.get(storage.key, name)
        if record is None or (record.version == version and record.state == State.DELETED):
            storage.remote.delete(name)
            location.discard(storage.key, name, version)
        return str(Claim.GONE.value)

    def _failed(
        self, storage: QueuedStorage, name: str, version: str, exc: Exception, *, alone: bool = True
    ) -> str:
        """Record a failed attempt; retry later (this message, or a one-file one) or give up."""
        error = f"{type(exc).__name__}: {exc}"
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
        raise self.retry(exc=exc, countdown=countdown, max_retries=conf.RETRIES)


class TransferAndDelete(Transfer):
    """Like :class:`Transfer`, and deletes the local copy once the remote one is verified."""

    name = "queued_storage.tasks.TransferAndDelete"
    delete_local = True


def requeue(older_than: float = 300, *, failed: bool = False) -> int:
    """Queue again every file left pending, stuck in a dead worker's hands, or (optionally) failed.

    Small files go as messages of several, as the background publisher sends
    them: after an outage the backlog costs a tenth of the messages.
    """
    from .publishing import Message, coalesce
    from .storage import get_storage

    messages: list[Message] = []
    for record in location.stale(older_than, failed=failed):
        try:
            storage = get_storage(record.storage)
        except LookupError as exc:
            logger.error("queued_storage: cannot requeue %s: %s", record.name, exc)
            continue
        if record.state == State.FAILED:
            location.requeue(record.storage, record.name)
        messages.append((storage, record.name, record.version, record.host, record.size))
    queued = 0
    for storage, files, host in coalesce(messages, conf.BATCH_FILES):
        if enqueue_many(storage, files, host):
            queued += len(files)
    return queued


@shared_task(name="queued_storage.tasks.requeue_stale", ignore_result=True)
def requeue_stale(older_than: float = 300, failed: bool = False) -> int:
    """The sweeper as a task, for celery beat."""
    return requeue(older_than, failed=failed)
