"""The Celery side of the worker: the task that runs the mover, and the sweeps.

A message carries only ``(storage identity, name, version)``, or several
``files``; the worker finds the storage in :mod:`queued_storage.registry`,
built from its own settings, and keeps it, with its connections, for every
later task.  The work itself is :mod:`queued_storage.mover`'s; this module
turns its outcomes into Celery's retries and messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from django.db import close_old_connections

from . import registry, sweeper, threads
from .conf import conf, problems
from .mover import Copier, Kind, Mover, Outcome, default_copy, report, settle_many
from .publishing import enqueue, enqueue_many
from .sweeper import LOST_AFTER as LOST_AFTER
from .sweeper import Swept as Swept
from .sweeper import requeue as requeue
from .sweeper import sweep as sweep
from .sweeper import sweep_in_turn as sweep_in_turn
from .transfer import Copied, TransferError

if TYPE_CHECKING:
    from django.core.files.storage import Storage

    _Task = Task[Any, Any]
else:
    _Task = Task

logger = logging.getLogger("queued_storage")


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
        self, identity: str, name: str = "", version: str = "", *, files: Any = None, **kwargs: Any
    ) -> str:
        close_old_connections()
        storage = registry.lookup(identity)
        mover = Mover(
            storage,
            copy=self._copier(),
            copy_name=f"{type(self).__name__}.transfer()",
            delete_local=self.delete_local,
            retries=self.request.retries if files is None else 0,
            owner=self.request.hostname or "",
        )
        if files is None:
            outcome = mover.one(name, version)
            self._report(storage, outcome)
            if outcome.kind is Kind.BUSY:
                # Another worker copies it: sent again for when its lease would have lapsed, as
                # often as it takes.  Not self.retry(): Celery caps that at the task's
                # max_retries, and each wait would spend a retry of this file's own budget.
                enqueue(
                    storage,
                    name,
                    version,
                    outcome.host,
                    countdown=outcome.retry_after,
                    retries=self.request.retries,
                )
                return "requeued"
            if outcome.kind is Kind.RETRY:
                raise self.retry(exc=_shown(outcome), countdown=outcome.retry_after, max_retries=conf.RETRIES)
            return str(outcome.kind.value)

        def retry(outcome: Outcome) -> str:  # the others are done: it goes on alone
            enqueue(
                storage,
                outcome.name,
                outcome.version,
                outcome.host,
                countdown=outcome.retry_after,
                retries=outcome.retries,
            )
            return "retrying"

        return settle_many(
            mover.many([(n, v) for n, v in files]),
            report=lambda outcome: self._report(storage, outcome),
            retry=retry,
            send_back=lambda host, waiting, delay: enqueue_many(storage, waiting, host, countdown=delay),
        )

    def _copier(self) -> Copier:
        """:meth:`transfer`, run with this message's request (the upload thread has none of its own)."""
        request = self.request

        def copy(*args: Any, **kwargs: Any) -> bool | Copied:
            self.request_stack.push(request)
            try:
                return self.transfer(*args, **kwargs)
            finally:
                self.request_stack.pop()

        return copy

    def _report(self, storage: Any, outcome: Outcome) -> None:
        report(storage, outcome, sender=type(self), worker=self.request.hostname or "")

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> bool | Copied:
        """Copy ``name`` and verify it; the override hook of 0.8 (True done, False retry)."""
        return default_copy(name, local, remote, **kwargs)


def _shown(outcome: Outcome) -> Exception:
    """The exception Celery logs with the retry: the redacted text when it held a secret."""
    from .redaction import redact

    exc = outcome.error
    assert exc is not None
    text = f"{type(exc).__name__}: {exc}"
    return exc if redact(text) == text else TransferError(redact(text))


class TransferAndDelete(Transfer):
    """Like :class:`Transfer`, and deletes the local copy once the remote one is verified."""

    name = "queued_storage.tasks.TransferAndDelete"
    delete_local = True


def report_settings(**kwargs: Any) -> None:
    """Log each ``QUEUED_STORAGE_*`` setting out of its range (a worker runs no system checks)."""
    for problem in problems():
        logger.error("queued_storage: %s", problem)


worker_init.connect(report_settings, weak=False, dispatch_uid=__name__ + ".settings")
# Prefork children, and the thread and solo pools: stop the upload threads.
worker_process_shutdown.connect(threads.stop_upload_executors, weak=False, dispatch_uid=__name__ + ".uploads")
worker_shutdown.connect(threads.stop_upload_executors, weak=False, dispatch_uid=__name__ + ".uploads")


@shared_task(name="queued_storage.tasks.requeue_stale", ignore_result=True)
def requeue_stale(older_than: float = 300, failed: bool = False) -> int:
    """The sweeper as a task, for celery beat; returns the number of files queued again."""
    return requeue(older_than, failed=failed)


def start_sweeper(**kwargs: Any) -> None:
    """Start this worker process's sweeper thread (unless QUEUED_STORAGE_SWEEP_INTERVAL turns it off)."""
    sweeper.start()


def _start_sweeper_in_main(sender: Any = None, **kwargs: Any) -> None:
    # The thread and green pools run tasks in the main process, which gets no
    # worker_process_init.  A prefork main process runs none: its children sweep.
    from celery.concurrency.prefork import TaskPool

    if not isinstance(getattr(sender, "pool", None), TaskPool):
        start_sweeper()


# Prefork children and the solo pool; then the thread and green pools.
worker_process_init.connect(start_sweeper, weak=False, dispatch_uid=__name__ + ".sweeper")
worker_ready.connect(_start_sweeper_in_main, weak=False, dispatch_uid=__name__ + ".sweeper")
worker_process_shutdown.connect(threads.stop_sweeper, weak=False, dispatch_uid=__name__ + ".sweeper")
worker_shutdown.connect(threads.stop_sweeper, weak=False, dispatch_uid=__name__ + ".sweeper")
