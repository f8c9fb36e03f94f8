"""System checks: configurations under which files would be lost or never move."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .conf import conf
from .tasks import celery_configured

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
    from .storage import _duplicates, _load_all, _registry

    _load_all()
    errors = []
    for storage in list(_registry.values()) + _duplicates:
        first = _registry[storage.key]
        if storage is not first and (storage.task, storage.delete_local) != (first.task, first.delete_local):
            errors.append(
                Error(
                    f"Two QueuedStorages with the same local and remote storage ({storage.key}) differ "
                    "in 'task' or 'delete_local', so a worker could not tell which one a file belongs to.",
                    hint="Give one of them a distinct cache_prefix, or make their options equal.",
                    id="queued_storage.E005",
                )
            )
        same = storage.local_path == storage.remote_path and storage.local_options == storage.remote_options
        if same:
            errors.append(
                Error(
                    f"QueuedStorage {storage.key} uses {storage.local_path!r} as both local and "
                    "remote storage, so a transfer would copy each file onto itself.",
                    hint="Point 'remote' at the remote storage (e.g. storages.backends.s3.S3Storage).",
                    id="queued_storage.E003",
                )
            )
        if getattr(storage.remote, "gzip", False) is True:
            errors.append(
                Error(
                    f"QueuedStorage {storage.key} has a remote storage with gzip=True: the remote copy "
                    "would differ from the local file, so no transfer could be verified.",
                    hint="Set gzip=False in remote_options (compress files before saving them if needed).",
                    id="queued_storage.E006",
                )
            )
    return errors


@register()
def check_settings(**kwargs: Any) -> list[Error]:
    """Every QUEUED_STORAGE_* setting that has a valid range, read once now."""
    errors = []
    for name in ("RETRIES", "RETRY_DELAY", "RETRY_BACKOFF_MAX", "LEASE", "HOST_QUEUE", "BATCH_FILES"):
        try:
            getattr(conf, name)
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="queued_storage.E007"))
    return errors


@register()
def check_celery(**kwargs: Any) -> list[Error]:
    if not celery_configured():
        return [
            Error(
                "No Celery app is configured, so transfers would be sent nowhere.",
                hint="Create your project's Celery app (proj/celery.py) and import it in "
                "proj/__init__.py, as Celery's 'First steps with Django' shows.",
                id="queued_storage.E004",
            )
        ]
    return []


@register()
def check_worker_death(**kwargs: Any) -> list[CheckMessage]:
    """Celery settings under which a killed worker would leave a transfer undone for long."""
    from celery import current_app

    from .storage import _load_all, _registry
    from .tasks import resolve_task

    messages: list[CheckMessage] = []
    if not celery_configured():
        return messages  # E004 says it all
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
                "than your longest transfer, and run `manage.py queued_storage requeue` periodically.",
                id="queued_storage.W002",
            )
        )
    _load_all()
    for path in sorted({storage.task for storage in _registry.values()}):
        task = resolve_task(path)
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


@register()
def check_nested_roots(**kwargs: Any) -> list[CheckMessage]:
    """Queued storages whose local directories nest while one of them serves its files by URL."""
    from .storage import _load_all, _registry, label_of

    _load_all()
    roots = []
    for storage in _registry.values():
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
            if inner_root == outer_root and outer.key > inner.key:
                continue  # one directory shared by two: reported once
            where = "shares" if inner_root == outer_root else "lies inside"
            messages.append(
                Warning(
                    f"The local directory of queued storage {label_of(inner.key)!r} ({inner_root}) "
                    f"{where} that of {label_of(outer.key)!r} ({outer_root}), and serve_url is set: "
                    "a name of one storage can then reach a file of the other.",
                    hint="Give each queued storage a local directory of its own, side by side "
                    "(e.g. MEDIA_ROOT/files and MEDIA_ROOT/photos), not one inside the other.",
                    id="queued_storage.W004",
                )
            )
    return messages
