from __future__ import annotations

from django.apps import AppConfig


class QueuedStorageConfig(AppConfig):
    name = "queued_storage"
    verbose_name = "Queued storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .storage import _load_all, _registry
        from .tasks import celery_configured, resolve_task

        # Build every declared queued storage now and register its task, so a
        # worker knows each one before the first message arrives.
        _load_all()
        if celery_configured():
            for storage in list(_registry.values()):
                resolve_task(storage.task)
