"""Sending transfers through the chosen queue: Celery or Django's Tasks framework.

A storage asks for a transfer with the signal ``transfer_requested`` once its
transaction commits; :func:`connect` (from ``AppConfig.ready()``) makes this
module answer it, and the sweeper sends through it too.  A queue's module is
imported only when :func:`queued_storage.routing.chosen` names its queue, so a
project on Django Tasks never imports Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import routing
from .signals import transfer_requested

if TYPE_CHECKING:
    from .storage import QueuedStorage


def enqueue_many(storage: QueuedStorage, files: list[tuple[str, str]], host: str | None = None) -> bool:
    """Send the transfers of several ``(name, version)`` saved on ``host`` as one message.

    On failure it logs and returns False; the sweeper queues them again.
    """
    if routing.chosen() == routing.TASKS:
        from . import enqueuing

        return enqueuing.send(storage, files, host)
    from . import publishing

    return publishing.enqueue_many(storage, files, host)


def publish(
    storage: QueuedStorage, name: str, version: str, host: str | None, size: int | None = None
) -> None:
    """Send the transfer of a committed save, as the settings ask.

    Celery's side may send it from a background thread
    (``QUEUED_STORAGE_PUBLISH_IN_BACKGROUND``); a Tasks backend is given it at
    once (for django-tasks-db, one INSERT).
    """
    if routing.chosen() == routing.TASKS:
        from . import enqueuing

        enqueuing.send(storage, [(name, version)], host)
        return
    from . import publishing

    publishing.publish(storage, name, version, host, size)


def _on_transfer_requested(
    *, storage: QueuedStorage, name: str, version: str, host: str | None, size: int | None, **kwargs: Any
) -> None:
    publish(storage, name, version, host, size)


def connect() -> None:
    """Listen to the storages' transfer requests (from ``AppConfig.ready()``)."""
    transfer_requested.connect(_on_transfer_requested, dispatch_uid="queued_storage.queues")
