"""Sending transfers through Django's Tasks framework (``django.tasks``; the django-tasks backport on 5.2).

A transfer is enqueued as the task the storage's ``task`` option names (the
built-in Celery task paths stand for :mod:`queued_storage.django_tasks`), on
the backend ``QUEUED_STORAGE_TASKS_BACKEND``, to the queue
:func:`~queued_storage.routing.queue_for` gives.  The framework neither
retries nor redelivers: a retry is a new task deferred with ``run_after``
where the backend supports it; elsewhere, and after a worker died, the file
waits for the sweeper, which finds it by its record.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from . import routing
from .conf import conf
from .redaction import redact

if TYPE_CHECKING:
    from .storage import QueuedStorage

logger = logging.getLogger("queued_storage")

MISSING = (
    "Transfers go through Django's Tasks framework (QUEUED_STORAGE_QUEUE_BACKEND, or TASKS set without "
    "a Celery app), which is not installed: on Django 5.2 install the django-tasks backport "
    "(pip install 'django-queued-remote-storage[tasks]') and add 'django_tasks' to INSTALLED_APPS, "
    "or use Django 6.0 or later."
)


def framework() -> Any:
    """The module of Django's Tasks framework, or ImproperlyConfigured saying how to get it."""
    module = routing.tasks_framework()
    if module is None:
        raise ImproperlyConfigured(MISSING)
    return import_module(module)


def backend() -> Any:
    """The Tasks backend that carries transfers: ``TASKS[QUEUED_STORAGE_TASKS_BACKEND]``."""
    handler = framework().task_backends
    try:
        return handler[conf.TASKS_BACKEND]
    except Exception as exc:  # the framework's InvalidTaskBackend(Error), or an import error of BACKEND
        raise ImproperlyConfigured(
            f"QUEUED_STORAGE_TASKS_BACKEND is {conf.TASKS_BACKEND!r}, which is not a usable backend "
            f"in TASKS ({type(exc).__name__}: {exc}). Add it to TASKS, or name one that is there."
        ) from exc


def resolve(path: str) -> Any:
    """The Django Tasks task for a storage's ``task`` option, or ImproperlyConfigured naming it."""
    target = routing.django_task_path(path)
    task_class = import_module(f"{framework().__name__}.base").Task
    try:
        task = import_string(target)
    except Exception as exc:  # an ImportError, or what a task's backend raised when it was defined
        raise ImproperlyConfigured(
            f"QueuedStorage option task={path!r} does not import: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(task, task_class):
        raise ImproperlyConfigured(
            f"QueuedStorage option task={path!r} is {task!r}, not a Django Tasks task; with Django's "
            "Tasks framework a storage's task is queued_storage.tasks.Transfer, "
            "queued_storage.tasks.TransferAndDelete, or a task defined with @task like "
            "queued_storage.django_tasks.transfer."
        )
    return task


def send(
    storage: QueuedStorage,
    files: list[tuple[str, str]],
    host: str | None = None,
    *,
    delay: float = 0.0,
    retries: int = 0,
) -> bool:
    """Enqueue the transfer of ``files`` (``(name, version)`` saved on ``host``) as one task.

    ``host`` ``None`` means this host.  ``delay`` defers it by that many
    seconds, as retry number ``retries``; a backend without ``supports_defer``
    cannot, and False says the sweeper will queue it instead.  On any other
    failure it logs and returns False: the record is the outbox.
    """
    if not files:
        return True
    what = repr(files[0][0]) if len(files) == 1 else f"{len(files)} files ({files[0][0]!r}, ...)"
    try:
        carrier = backend()
        options: dict[str, Any] = {"backend": carrier.alias}
        queue = routing.queue_for(conf.HOST if host is None else host)
        if queue:
            options["queue_name"] = queue
        if delay > 0:
            if not carrier.supports_defer:
                logger.info(
                    "queued_storage: the tasks backend %r cannot defer a task, so the next attempt at "
                    "%s waits for the sweeper (`manage.py queued_storage requeue`)",
                    carrier.alias,
                    what,
                )
                return False
            options["run_after"] = timezone.now() + timedelta(seconds=delay)
        task = resolve(storage.task).using(**options)
        if len(files) == 1:
            name, version = files[0]
            task.enqueue(storage.identity, name, version, retries=retries)
        else:
            task.enqueue(storage.identity, files=[list(f) for f in files])
    except Exception as exc:  # the record is the outbox: nothing is lost
        logger.warning(
            "queued_storage: could not enqueue the transfer of %s (%s: %s); it stays pending "
            "until `manage.py queued_storage requeue` runs.",
            what,
            type(exc).__name__,
            redact(str(exc)),
        )
        return False
    return True
