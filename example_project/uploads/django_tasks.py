"""The demo's transfer task on Django's Tasks framework (``DEMO_QUEUE=tasks``).

The library's own, through :func:`queued_storage.django_tasks.run`, with the
demo's slowed reads: the counterpart of ``uploads/tasks.py`` for Celery.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage

from queued_storage.django_tasks import run
from queued_storage.mover import default_copy

from .throttle import throttled

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


def slow_copy(name: str, local: Storage, remote: Storage, **kwargs: Any) -> Any:
    return default_copy(name, throttled(local), remote, **kwargs)


@task(takes_context=True)
def demo_transfer(
    context: Any, storage_key: str, name: str = "", version: str = "", *, files: Any = None, retries: int = 0
) -> str:
    return run(
        context,
        storage_key,
        name,
        version,
        files=files,
        retries=retries,
        copy=slow_copy,
        sender=demo_transfer,
    )
