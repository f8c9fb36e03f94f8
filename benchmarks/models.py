"""The models the upload scenarios create, one per storage (``migrate --run-syncdb`` makes the tables)."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import storages
from django.db import models


def _fs() -> Any:
    return storages["fs"]


def _s3() -> Any:
    return storages["s3"]


def _s3_wan() -> Any:
    return storages["s3_wan"]


class _Upload(models.Model):
    class Meta:
        abstract = True

    def __str__(self) -> str:
        return str(getattr(self, "file", ""))


class Upload(_Upload):
    """On the default storage: the queued storage, as a project sets it in ``STORAGES``."""

    file = models.FileField(upload_to="uploads")


class FsUpload(_Upload):
    file = models.FileField(upload_to="uploads", storage=_fs)


class S3Upload(_Upload):
    file = models.FileField(upload_to="uploads", storage=_s3)


class S3WanUpload(_Upload):
    """Synchronous S3 through the WAN link (50 ms each way)."""

    file = models.FileField(upload_to="uploads", storage=_s3_wan)


# The storage alias each view of benchmarks.urls uploads with, and its model.
BY_ALIAS: dict[str, Any] = {
    "default": Upload,
    "fs": FsUpload,
    "s3": S3Upload,
    "s3_wan": S3WanUpload,
}
