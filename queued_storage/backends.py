"""The storage classes of django-queued-storage 0.8, under their old import paths."""

from __future__ import annotations

from django.utils.deconstruct import deconstructible

from .storage import QueuedStorage

__all__ = ["QueuedFileSystemStorage", "QueuedS3BotoStorage", "QueuedS3Storage", "QueuedStorage"]


@deconstructible
class QueuedFileSystemStorage(QueuedStorage):
    """A QueuedStorage whose local storage is Django's FileSystemStorage."""

    local = "django.core.files.storage.FileSystemStorage"


@deconstructible
class QueuedS3Storage(QueuedFileSystemStorage):
    """FileSystemStorage locally, django-storages' S3Storage remotely."""

    remote = "storages.backends.s3.S3Storage"


@deconstructible
class QueuedS3BotoStorage(QueuedS3Storage):
    """0.8's name for :class:`QueuedS3Storage`; the boto 2 backend is gone, so it is S3Storage too."""
