"""Where a transfer goes: through Celery or Django's Tasks framework, and to which queue;
and whether this process is a Tasks worker.

Knows no queue's code and imports neither: Celery is looked at only when this
process imported it already, as a project with a Celery app does from
``proj/__init__.py``.  So choosing Django Tasks never imports Celery.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

from django.conf import global_settings, settings

from .conf import conf

CELERY = "celery"
TASKS = "tasks"

#: The Django Tasks tasks that stand for the built-in Celery tasks named by a storage's ``task``.
DJANGO_TASKS = {
    "queued_storage.tasks.Transfer": "queued_storage.django_tasks.transfer",
    "queued_storage.tasks.TransferAndDelete": "queued_storage.django_tasks.transfer_and_delete",
}


def celery_configured() -> bool:
    """Whether this process has the project's Celery app, not Celery's unconfigured fallback.

    A project's app exists once its module is imported, so Celery not
    imported yet means there is none; nothing is imported to find out.
    """
    celery = sys.modules.get("celery")
    return celery is not None and celery.current_app.main not in (None, "default")


def chosen() -> str:
    """The queue transfers go through: :data:`CELERY` or :data:`TASKS`.

    ``QUEUED_STORAGE_QUEUE_BACKEND`` when set; else Celery where the project's
    Celery app is configured, else Django Tasks where the project sets
    ``TASKS`` (to other than Django 6's default), else Celery, whose check
    ``queued_storage.E004`` then says what to configure.
    """
    value = conf.QUEUE_BACKEND
    if value is not None:
        return value
    if celery_configured():
        return CELERY
    if getattr(settings, "TASKS", None) not in (None, getattr(global_settings, "TASKS", None)):
        return TASKS
    return CELERY


def tasks_framework() -> str | None:
    """The module of Django's Tasks framework here: ``django.tasks`` (Django 6.0+), the backport, or None."""
    for module in ("django.tasks", "django_tasks"):
        if find_spec(module) is not None:
            return module
    return None


def django_task_path(task: str) -> str:
    """The dotted path of the Django Tasks task for a storage's ``task`` option."""
    return DJANGO_TASKS.get(task, task)


def queue_for(host: str | None) -> str | None:
    """The queue of a transfer whose local copy is on ``host``: the one routing rule.

    With ``QUEUED_STORAGE_HOST_QUEUE`` each host's files go to that host's own
    queue, because only a worker on that host can read them; otherwise to
    ``QUEUED_STORAGE_QUEUE`` (``None``: the queue system's default queue).
    """
    pattern = conf.HOST_QUEUE
    if pattern and host:
        return pattern.format(host=host)
    return conf.QUEUE


def in_db_worker() -> bool:
    """Whether this process is a django-tasks-db worker (``manage.py db_worker``).

    The command sends no signal of its own, so its name on the command line
    says it.  Under ``--reload`` only the child that runs the tasks counts,
    not the process that watches the files.
    """
    args = sys.argv[1:]
    if args[:1] != ["db_worker"]:
        return False
    return "--reload" not in args or os.environ.get("RUN_MAIN") == "true"
