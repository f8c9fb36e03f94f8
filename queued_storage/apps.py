from __future__ import annotations

from django.apps import AppConfig


class QueuedStorageConfig(AppConfig):
    name = "queued_storage"
    verbose_name = "Queued storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, queues, registry, routing  # checks registers the system checks

        del checks
        queues.connect()
        if routing.chosen() == routing.TASKS:
            # A db_worker sweeps by itself, as Celery's workers do from its
            # worker signals (queued_storage.tasks).  Other processes import
            # nothing of the Tasks side here: check E021 reports a framework
            # that is missing.
            if routing.in_db_worker():
                from . import sweeper

                sweeper.start()
        elif routing.celery_configured():
            from . import publishing

            # Build every declared queued storage now and register its task, so a
            # worker knows each one before the first message arrives.
            for _, storage in registry.everything():
                publishing.resolve_task(storage.task)
