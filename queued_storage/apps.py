from __future__ import annotations

from django.apps import AppConfig


class QueuedStorageConfig(AppConfig):
    name = "queued_storage"
    verbose_name = "Queued storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .storage import _load_all

        # Build every declared queued storage now, so a worker has registered
        # each one's task before the first message arrives.
        _load_all()
