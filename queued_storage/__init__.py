"""Save uploads locally at once; a Celery or Django Tasks task moves them to remote storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"
__all__ = ["QueuedRemoteStorage", "QueuedStorage"]

if TYPE_CHECKING:
    from .storage import QueuedRemoteStorage, QueuedStorage


def __getattr__(name: str) -> Any:
    # Lazy, so `import queued_storage` (from settings, say) loads no models.
    if name in __all__:
        from . import storage

        return getattr(storage, name)
    raise AttributeError(f"module 'queued_storage' has no attribute {name!r}")
