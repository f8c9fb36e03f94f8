"""System checks: configurations under which files would be lost or never move."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router

from . import registry, routing
from .conf import conf, problems

_PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@register(Tags.caches)
def check_cache(**kwargs: Any) -> list[Error]:
    caches = getattr(settings, "CACHES", {})
    if conf.CACHE not in caches:
        return [
            Error(
                f"QUEUED_STORAGE_CACHE is {conf.CACHE!r}, which is not an alias in CACHES.",
                hint="Add that cache to CACHES, or point QUEUED_STORAGE_CACHE at one that exists.",
                id="queued_storage.E001",
            )
        ]
    backend = caches[conf.CACHE].get("BACKEND", "")
    if backend in _PROCESS_LOCAL_CACHES:
        return [
            Error(
                f"The cache {conf.CACHE!r} ({backend}) lives inside one process, so web and worker "
                "processes cannot share where each file is.",
                hint="Use a shared cache (Redis, Memcached, database or file-based) and name it "
                "in QUEUED_STORAGE_CACHE.",
                id="queued_storage.E002",
            )
        ]
    return []


@register()
def check_storages(**kwargs: Any) -> list[Error]:
    errors = []
    for _, storage in registry.conflicts():
        errors.append(
            Error(
                f"Two QueuedStorages with the same local and remote storage ({storage.identity}) differ "
                "in 'task' or 'delete_local', so a worker could not tell which one a file belongs to.",
                hint="Give one of them a distinct cache_prefix, or make their options equal.",
                id="queued_storage.E005",
            )
        )
    for label, storage in [*registry.everything(), *registry.registered()]:
        try:
            _check_task(storage.task)
        except ImproperlyConfigured as exc:
            errors.append(
                Error(
                    f"{label}: {exc}",
                    hint="Point 'task' at queued_storage.tasks.Transfer or a subclass of it."
                    if routing.chosen() == routing.CELERY
                    else "Point 'task' at queued_storage.tasks.Transfer or TransferAndDelete "
                    "(their Django Tasks twins run), or at a Django Tasks task.",
                    id="queued_storage.E008",
                )
            )
    for storage in {id(s): s for _, s in [*registry.everything(), *registry.registered()]}.values():
        same = storage.local_path == storage.remote_path and storage.local_options == storage.remote_options
        if same:
            errors.append(
                Error(
                    f"QueuedStorage {storage.identity} uses {storage.local_path!r} as both local and "
                    "remote storage, so a transfer would copy each file onto itself.",
                    hint="Point 'remote' at the remote storage (e.g. storages.backends.s3.S3Storage).",
                    id="queued_storage.E003",
                )
            )
        if getattr(storage.remote, "gzip", False) is True:
            errors.append(
                Error(
                    f"QueuedStorage {storage.identity} has a remote storage with gzip=True: the remote copy "
                    "would differ from the local file, so no transfer could be verified.",
                    hint="Set gzip=False in remote_options (compress files before saving them if needed).",
                    id="queued_storage.E006",
                )
            )
    return errors


def _check_task(path: str) -> None:
    """Raise ImproperlyConfigured if the chosen queue cannot run the task at ``path``.

    Says nothing when the queue itself is missing: E004 or E021 say that.
    """
    if routing.chosen() == routing.TASKS:
        if routing.tasks_framework() is not None:
            from .enqueuing import resolve

            resolve(path)
    elif find_spec("celery") is not None:
        from .publishing import import_task

        import_task(path)


@register()
def check_settings(**kwargs: Any) -> list[Error]:
    """Every ``QUEUED_STORAGE_*`` setting out of its range, with what a valid value is."""
    return [Error(problem, id="queued_storage.E007") for problem in problems()]


@register()
def check_celery(**kwargs: Any) -> list[Error]:
    if routing.chosen() != routing.CELERY or routing.celery_configured():
        return []
    if find_spec("celery") is None:
        return [
            Error(
                "Transfers go through Celery, which is not installed, so they would be sent nowhere.",
                hint="Configure Django's Tasks framework (TASKS, e.g. with django-tasks-db: pip install "
                "'django-queued-remote-storage[tasks]'), or install Celery "
                "('django-queued-remote-storage[celery]') and create your project's Celery app.",
                id="queued_storage.E004",
            )
        ]
    return [
        Error(
            "No Celery app is configured, so transfers would be sent nowhere.",
            hint="Create your project's Celery app (proj/celery.py) and import it in "
            "proj/__init__.py, as Celery's 'First steps with Django' shows; or, without Celery, "
            "configure TASKS and set QUEUED_STORAGE_QUEUE_BACKEND = 'tasks'.",
            id="queued_storage.E004",
        )
    ]


@register()
def check_worker_death(**kwargs: Any) -> list[CheckMessage]:
    """Celery settings under which a killed worker would leave a transfer undone for long."""
    messages: list[CheckMessage] = []
    if routing.chosen() != routing.CELERY or not routing.celery_configured():
        return messages  # E004 says it all
    from celery import current_app

    from .publishing import resolve_task

    app_conf = current_app.conf
    if app_conf.worker_prefetch_multiplier != 1:
        messages.append(
            Warning(
                f"CELERY_WORKER_PREFETCH_MULTIPLIER is {app_conf.worker_prefetch_multiplier}: a worker "
                "that dies holds that many reserved transfers per process until the broker redelivers them.",
                hint="Set CELERY_WORKER_PREFETCH_MULTIPLIER = 1 (see the deployment docs).",
                id="queued_storage.W001",
            )
        )
    broker = str(app_conf.broker_url or "")
    options = app_conf.broker_transport_options or {}
    if broker.startswith(("redis://", "rediss://")) and "visibility_timeout" not in options:
        messages.append(
            Warning(
                "The Redis broker redelivers an unacknowledged transfer after its visibility_timeout "
                "(1 hour by default); a transfer that runs longer is started twice.",
                hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': N} with N longer "
                "than your longest transfer; the workers' own sweeps (QUEUED_STORAGE_SWEEP_INTERVAL) "
                "queue again what a dead worker held.",
                id="queued_storage.W002",
            )
        )
    for path in sorted({storage.task for _, storage in [*registry.everything(), *registry.registered()]}):
        try:
            task = resolve_task(path)
        except ImproperlyConfigured:
            continue  # E008 names it
        if not (task.acks_late and task.reject_on_worker_lost):
            messages.append(
                Warning(
                    f"The transfer task {path} does not set acks_late and reject_on_worker_lost, so a "
                    "transfer whose worker is killed is not redelivered.",
                    hint="Subclass queued_storage.tasks.Transfer, which sets both.",
                    id="queued_storage.W003",
                )
            )
    return messages


@register(deploy=True)
def check_publishing(**kwargs: Any) -> list[CheckMessage]:
    """Which way this process sends transfer messages, and why (``manage.py check --deploy``)."""
    if routing.chosen() != routing.CELERY or not routing.celery_configured():
        return []  # Django Tasks enqueues at once; without a Celery app E004 says it all
    from .publishing import mode

    how = mode()
    if how.background:
        said = (
            f"Transfer messages are sent from a background thread ({how.reason}): save() returns "
            "without waiting for the broker. A process under uWSGI without --enable-threads sends "
            "them inline, and logs it."
        )
    else:
        said = f"Transfer messages are sent inline, so each save() waits for the broker: {how.reason}."
    return [Info(said, id="queued_storage.I001")]


@register(Tags.database)
def check_records(*, databases: Sequence[str] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Records whose storage identity no declared storage has: run by ``migrate`` and ``check --database``."""
    from .models import FileRecord
    from .operations import unknown_identities

    using = router.db_for_read(FileRecord)
    if not databases or using not in databases:
        return []
    try:
        unknown = unknown_identities(using)
    except DatabaseError:
        return []  # not migrated yet
    if not unknown:
        return []
    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return [
        Warning(
            f"Files are recorded under storage identities that no queued storage of this project has: "
            f"{shown}. Those records are no longer read: a file whose only copy is in a former remote "
            "is not found, and the transfers of the others cannot run.",
            hint="The identity changes with a storage's class paths, options, cache_prefix, and its remote's "
            "bucket, endpoint or location. After such a change, copy the files to the new remote and run "
            "`manage.py queued_storage rekey OLD_IDENTITY LABEL`; for a storage removed for good, delete "
            "its records.",
            id="queued_storage.W005",
        )
    ]


# SQLite journal modes that write a rollback journal on disk beside the database.
_ROLLBACK_JOURNALS = ("delete", "truncate", "persist")


@register(Tags.database)
def check_sqlite_journal(*, databases: Sequence[str] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """The records in SQLite with a rollback journal: run by ``migrate`` and ``check --database``."""
    from .models import FileRecord

    using = router.db_for_write(FileRecord)
    if not databases or using not in databases or connections[using].vendor != "sqlite":
        return []
    try:
        with connections[using].cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            mode = str(cursor.fetchone()[0]).lower()
    except DatabaseError:
        return []
    return sqlite_journal_advice(using, mode)


def sqlite_journal_advice(alias: str, mode: str) -> list[CheckMessage]:
    """What check ``I002`` says of the records' SQLite database in journal ``mode``."""
    if mode not in _ROLLBACK_JOURNALS:
        return []  # WAL, or a database that is not on disk
    return [
        Info(
            f"The file records are in the SQLite database {alias!r}, in journal_mode={mode} (SQLite's "
            "default, as startproject leaves it): every commit syncs the disk twice and locks the whole "
            "database, so the workers' claims and switches wait for the commits of the saves, and a "
            "burst of uploads reaches the remote storage later than it could.",
            hint="In WAL mode they do not wait on each other: add "
            '"init_command": "PRAGMA journal_mode=WAL;" '
            f"to DATABASES[{alias!r}]['OPTIONS'] (what each setting costs and risks: 'What a database "
            "setting costs' in the deployment docs). Or add 'queued_storage.I002' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="queued_storage.I002",
        )
    ]


@register()
def check_nested_roots(**kwargs: Any) -> list[CheckMessage]:
    """Queued storages whose local directories nest while one of them serves its files by URL."""
    roots = []
    unique = {s.identity: s for _, s in [*registry.everything(), *registry.registered()]}
    for storage in unique.values():
        root = getattr(storage.local, "location", None)
        if root:
            roots.append((storage, os.path.realpath(root)))
    messages: list[CheckMessage] = []
    for outer, outer_root in roots:
        for inner, inner_root in roots:
            if inner is outer or not (outer.serve_url or inner.serve_url):
                continue
            if os.path.commonpath([outer_root, inner_root]) != outer_root:
                continue
            if inner_root == outer_root and outer.identity > inner.identity:
                continue  # one directory shared by two: reported once
            where = "shares" if inner_root == outer_root else "lies inside"
            messages.append(
                Warning(
                    f"The local directory of queued storage {registry.label_of(inner.identity)!r} "
                    f"({inner_root}) {where} that of {registry.label_of(outer.identity)!r} "
                    f"({outer_root}), and serve_url is set: "
                    "a name of one storage can then reach a file of the other.",
                    hint="Give each queued storage a local directory of its own, side by side "
                    "(e.g. MEDIA_ROOT/files and MEDIA_ROOT/photos), not one inside the other.",
                    id="queued_storage.W004",
                )
            )
    return messages


def _testing() -> bool:
    """Whether Django's test environment is set up: ``setup_test_environment()`` gives mail an outbox."""
    from django.core import mail

    return hasattr(mail, "outbox")


@register()
def check_tasks(**kwargs: Any) -> list[CheckMessage]:
    """The Tasks backend that carries transfers, when they go through Django's Tasks framework."""
    if routing.chosen() != routing.TASKS:
        return []
    from . import enqueuing

    try:
        backend = enqueuing.backend()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Or set QUEUED_STORAGE_QUEUE_BACKEND = 'celery' to send transfers through Celery.",
                id="queued_storage.E021",
            )
        ]
    framework = enqueuing.framework()
    alias = backend.alias
    kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
    messages: list[CheckMessage] = []
    immediate = import_module(f"{framework.__name__}.backends.immediate").ImmediateBackend
    dummy = import_module(f"{framework.__name__}.backends.dummy").DummyBackend
    if isinstance(backend, (immediate, dummy)) and not _testing():
        does = (
            "runs each transfer inside the request that saved the file, so the save waits for the upload"
            if isinstance(backend, immediate)
            else "never runs a task, so files stay local"
        )
        messages.append(
            Warning(
                f"Transfers go through the tasks backend {alias!r} ({kind}), which {does}.",
                hint="Use a backend with a worker, such as django-tasks-db's DatabaseBackend "
                "(`manage.py db_worker`), in TASKS or QUEUED_STORAGE_TASKS_BACKEND; the in-process "
                "backends are for tests.",
                id="queued_storage.W021",
            )
        )
    if not backend.supports_defer:
        messages.append(
            Info(
                f"The tasks backend {alias!r} ({kind}) cannot defer a task, so a failed transfer is "
                "tried again when the sweeper runs, not after QUEUED_STORAGE_RETRY_DELAY.",
                hint="Run `manage.py queued_storage requeue` on a schedule, or use a backend that "
                "supports run_after (django-tasks-db's does).",
                id="queued_storage.I021",
            )
        )
    queue = routing.queue_for(conf.HOST) or framework.DEFAULT_TASK_QUEUE_NAME
    if backend.queues and queue not in backend.queues:
        messages.append(
            Error(
                f"Transfers from this host go to the queue {queue!r}, which TASKS[{alias!r}]['QUEUES'] "
                f"({sorted(backend.queues)}) does not list, so the backend would refuse every one.",
                hint=f"Add {queue!r} to that QUEUES (one per host with QUEUED_STORAGE_HOST_QUEUE), or "
                "set QUEUES to [] to accept any queue name.",
                id="queued_storage.E022",
            )
        )
    return messages
