"""The file field of django-queued-storage 0.8, whose file can be transferred on demand."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models.fields.files import FieldFile, FileField

from .storage import QueuedStorage


class QueuedFieldFile(FieldFile):
    def transfer(self) -> bool:
        """Queue the copy of this file to the remote storage; False if it is already there."""
        storage = self.storage
        assert isinstance(storage, QueuedStorage) and self.name
        return storage.transfer(self.name)


class QueuedFileField(FileField):
    """A FileField that requires a QueuedStorage."""

    attr_class = QueuedFieldFile

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.storage, QueuedStorage):
            raise ImproperlyConfigured(
                f"QueuedFileField needs storage=QueuedStorage(...), got {self.storage!r}."
            )
