"""System checks: configurations under which files would be lost or never move."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from .conf import conf

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
    return errors


@register()
def check_celery(**kwargs: Any) -> list[Error]:
    from celery import _state

    # With no app of the project's own, Celery falls back to an unconfigured
    # one named "default".
    if _state.get_current_app().main in (None, "default"):
        return [
            Error(
                "No Celery app is configured, so transfers would be sent nowhere.",
                hint="Create your project's Celery app (proj/celery.py) and import it in "
                "proj/__init__.py, as Celery's 'First steps with Django' shows.",
                id="queued_storage.E004",
            )
        ]
    return []
