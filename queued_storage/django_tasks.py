"""The Django Tasks side of the worker: the tasks that run the mover.

Run by the worker of any Tasks backend (``manage.py db_worker`` with
django-tasks-db).  A task carries what a Celery message does: the storage
identity and one ``name, version``, or several ``files``.  The work is
:mod:`queued_storage.mover`'s, as for Celery.  The framework has no retries
and no redelivery: an outcome that asks to try again enqueues the next
attempt, deferred, through :func:`queued_storage.enqueuing.send`, or leaves it
to the sweeper, which also queues again the files of a worker that died.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import close_old_connections

from . import enqueuing, registry, transitions
from .conf import conf
from .models import State
from .mover import Copier, Kind, Mover, Outcome, default_copy, report, settle_many

if TYPE_CHECKING:
    from django.tasks import TaskContext, task

    from .storage import QueuedStorage
else:
    task = enqueuing.framework().task

# Outcomes whose file is tried again: another worker holds it, or the copy failed.
_AGAIN = (Kind.BUSY, Kind.RETRY)


@task(takes_context=True)
def transfer(
    context: TaskContext[Any, Any],
    identity: str,
    name: str = "",
    version: str = "",
    *,
    files: list[list[str]] | None = None,
    retries: int = 0,
) -> str:
    """Copy a file (or several ``files``) to the remote storage, verify it, then switch reads to it."""
    return run(context, identity, name, version, files=files, retries=retries, sender=transfer)


@task(takes_context=True)
def transfer_and_delete(
    context: TaskContext[Any, Any],
    identity: str,
    name: str = "",
    version: str = "",
    *,
    files: list[list[str]] | None = None,
    retries: int = 0,
) -> str:
    """Like :func:`transfer`, and deletes the local copy once the remote one is verified."""
    return run(
        context,
        identity,
        name,
        version,
        files=files,
        retries=retries,
        delete_local=True,
        sender=transfer_and_delete,
    )


def run(
    context: TaskContext[Any, Any],
    identity: str,
    name: str = "",
    version: str = "",
    *,
    files: list[list[str]] | None = None,
    retries: int = 0,
    delete_local: bool = False,
    copy: Copier = default_copy,
    sender: Any = None,
) -> str:
    """What :func:`transfer` does, for a task of your own: ``copy`` moves the bytes.

    The counterpart of overriding ``Transfer.transfer()`` on Celery: a
    ``@task(takes_context=True)`` with :func:`transfer`'s arguments passes them
    here with its own :data:`~queued_storage.mover.Copier`, and a storage
    whose ``task`` names it runs it.  ``sender`` is the signals' sender.
    """
    close_old_connections()
    storage = registry.lookup(identity)
    worker_ids = context.task_result.worker_ids
    owner = f"{worker_ids[-1] if worker_ids else 'tasks'}@{conf.HOST}"
    if files is None:
        retries = max(retries, _attempts(storage, name, version))
        mover = Mover(storage, copy=copy, delete_local=delete_local, retries=retries, owner=owner)
        outcome = mover.one(name, version)
        report(storage, outcome, sender=sender, worker=owner)
        return _again(storage, outcome, retries) if outcome.kind in _AGAIN else outcome.kind.value
    mover = Mover(storage, copy=copy, delete_local=delete_local, owner=owner)
    return settle_many(
        mover.many([(n, v) for n, v in files]),
        report=lambda outcome: report(storage, outcome, sender=sender, worker=owner),
        retry=lambda outcome: _again(storage, outcome, 0),
        send_back=lambda host, waiting, delay: enqueuing.send(storage, waiting, host, delay=delay),
    )


def _attempts(storage: QueuedStorage, name: str, version: str) -> int:
    """The attempts recorded at ``name``: the sweeper's task carries no retry count, the record does."""
    record = transitions.get(storage.identity, name)
    if record is None or record.version != version or record.state == State.DELETED:
        return 0
    return record.attempts


def _again(storage: QueuedStorage, outcome: Outcome, retries: int) -> str:
    """Enqueue the next attempt at ``outcome``'s file, deferred; what became of the file."""
    retry = outcome.kind is Kind.RETRY
    sent = enqueuing.send(
        storage,
        [(outcome.name, outcome.version)],
        outcome.host,
        delay=outcome.retry_after,
        retries=outcome.retries if retry else retries,
    )
    if not sent:
        return "left to the sweeper"
    return "retrying" if retry else "requeued"
