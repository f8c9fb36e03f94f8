"""The Celery side: queueing a transfer, the task that runs it, and the sweeper.

A message carries only ``(storage identity, name, version)``; the worker
rebuilds the storage from its own settings and keeps it, with its
connections, for every later task.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import Task, current_app, shared_task
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from . import location
from .conf import conf
from .location import Claim
from .models import State
from .signals import file_transferred, transfer_failed
from .transfer import Copied, PermanentTransferError, TransferError, copy_file, remote_fingerprint

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


def enqueue(storage: QueuedStorage, name: str, version: str, host: str | None = None) -> bool:
    """Publish the transfer of ``name``; on failure log it and leave it to the sweeper.

    ``host`` is the record's host (where the local copy is); ``None`` means this host.
    """
    if not celery_configured():
        logger.error(
            "queued_storage: no Celery app is configured in this process, so the transfer of %r "
            "stays pending. Import your project's Celery app in proj/__init__.py (Celery's "
            "'First steps with Django'), then run `manage.py queued_storage requeue`.",
            name,
        )
        return False
    try:
        options: dict[str, Any] = {"retry_policy": _PUBLISH_RETRY}
        queue = queue_for(conf.HOST if host is None else host)
        if queue:
            options["queue"] = queue
        resolve_task(storage.task).apply_async((storage.key, name, version), **options)
    except Exception as exc:  # the record is the outbox: nothing is lost
        logger.warning(
            "queued_storage: could not queue the transfer of %r (%s: %s); it stays pending "
            "until `manage.py queued_storage requeue` or the requeue task runs.",
            name,
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
    """Renews the lease and records progress while a copy runs: one write per beat, not per chunk."""

    def __init__(self, storage: str, name: str, version: str) -> None:
        super().__init__(daemon=True, name=f"queued_storage lease {name}")
        self.args_ = (storage, name, version)
        self.bytes_done = 0
        self._stop_event = threading.Event()

    def progress(self, done: int) -> None:
        self.bytes_done = done

    def run(self) -> None:
        interval = conf.LEASE / 3
        try:
            while not self._stop_event.wait(interval):
                location.heartbeat(*self.args_, self.bytes_done)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Transfer(_Task):
    """Copy a file to the remote storage, verify it, then switch reads to it.

    Override :meth:`transfer` to change how the bytes move (as in
    django-queued-storage 0.8): return True when done, False to retry.
    """

    name = "queued_storage.tasks.Transfer"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    delete_local = False

    def run(self, storage_key: str, name: str, version: str, **kwargs: Any) -> str:
        from .storage import get_storage  # storage imports this module

        close_old_connections()
        storage = get_storage(storage_key)
        outcome, record = location.claim(storage_key, name, version, owner=self.request.hostname or "")
        if outcome is Claim.BUSY:
            lease = record.lease_until if record is not None else None
            wait = max(1.0, lease.timestamp() - time.time() + 1) if lease is not None else 1.0
            # Another worker copies it; come back when its lease would have lapsed.
            raise self.retry(countdown=wait, max_retries=None)
        if outcome is not Claim.CLAIMED:
            return str(outcome.value)
        assert record is not None
        keeper = _LeaseKeeper(storage_key, name, version)
        keeper.start()
        started = time.monotonic()
        try:
            result = self.transfer(
                name,
                storage.local,
                storage.remote,
                replace=record.attempts > 1,
                progress=keeper.progress,
            )
            if result is False:
                raise TransferError(f"{type(self).__name__}.transfer() returned False")
            if result is not True and not isinstance(result, Copied):
                raise PermanentTransferError(
                    f"{type(self).__name__}.transfer() returned {result!r}; it must return True or False."
                )
        except Exception as exc:
            keeper.stop()
            return self._failed(storage, name, version, exc)
        keeper.stop()
        copied = result if isinstance(result, Copied) else self._fingerprint(storage.remote, name)
        if not location.switch_to_remote(
            storage_key, name, version, size=copied.size, checksum=copied.checksum
        ):
            return self._orphaned(storage, name, version)
        if self.delete_local or storage.delete_local:
            with location.local_copy_removable(storage_key, name, version) as removable:
                if removable:
                    storage.local.delete(name)
                else:
                    logger.warning(
                        "queued_storage: kept the local copy of %s: the file changed or the cache "
                        "could not be updated; 'queued_storage cleanup-local' removes it later",
                        name,
                    )
        seconds = time.monotonic() - started
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
                    "storage": storage_key,
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

    def _failed(self, storage: QueuedStorage, name: str, version: str, exc: Exception) -> str:
        error = f"{type(exc).__name__}: {exc}"
        final = isinstance(exc, PermanentTransferError) or self.request.retries >= conf.RETRIES
        record = location.release(storage.key, name, version, error=error, failed=final)
        if record is None or record.version != version or record.state == State.DELETED:
            return self._orphaned(storage, name, version)
        if final:
            logger.error("queued_storage: transfer of %s failed for good: %s", name, error)
            transfer_failed.send(
                sender=type(self), name=name, local=storage.local, remote=storage.remote, error=exc
            )
            return "failed"
        countdown = backoff(self.request.retries)
        logger.warning(
            "queued_storage: transfer of %s failed (%s); retry %d of %d in %.1f s",
            name,
            error,
            self.request.retries + 1,
            conf.RETRIES,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=conf.RETRIES)


class TransferAndDelete(Transfer):
    """Like :class:`Transfer`, and deletes the local copy once the remote one is verified."""

    name = "queued_storage.tasks.TransferAndDelete"
    delete_local = True


def requeue(older_than: float = 300, *, failed: bool = False) -> int:
    """Queue again every file left pending, stuck in a dead worker's hands, or (optionally) failed."""
    from .storage import get_storage

    queued = 0
    for record in location.stale(older_than, failed=failed):
        try:
            storage = get_storage(record.storage)
        except LookupError as exc:
            logger.error("queued_storage: cannot requeue %s: %s", record.name, exc)
            continue
        if record.state == State.FAILED:
            location.requeue(record.storage, record.name)
        if enqueue(storage, record.name, record.version, record.host):
            queued += 1
    return queued


@shared_task(name="queued_storage.tasks.requeue_stale", ignore_result=True)
def requeue_stale(older_than: float = 300, failed: bool = False) -> int:
    """The sweeper as a task, for celery beat."""
    return requeue(older_than, failed=failed)
