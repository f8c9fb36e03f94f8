"""The demo's Celery transfer task: the built-in one, optionally slowed down to watch its progress.

It shows the ``task`` option and the ``transfer()`` hook of
``queued_storage.tasks.Transfer``: the copy, its verification and the switch
are still the library's.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage

from queued_storage.tasks import Transfer

from .throttle import throttled


class DemoTransfer(Transfer):
    name = "uploads.tasks.DemoTransfer"

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> Any:
        return super().transfer(name, throttled(local), remote, **kwargs)
