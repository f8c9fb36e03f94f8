"""Models whose fields declare their own queued storages, as a user's models.py would."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from queued_storage import QueuedStorage
from queued_storage.backends import QueuedFileSystemStorage
from queued_storage.fields import QueuedFileField

photos = QueuedStorage(
    local="django.core.files.storage.FileSystemStorage",
    local_options={"location": f"{settings.MEDIA_ROOT}/photos", "base_url": "/media/photos/"},
    remote="storages.backends.s3.S3Storage",
    remote_options={"bucket_name": "qs-photos", "querystring_auth": True, "secret_key": "s3cr3t-in-options"},
    delete_local=True,
)


class Document(models.Model):
    file = models.FileField(upload_to="docs")


class Photo(models.Model):
    image = models.ImageField(upload_to="img", storage=photos)


legacy = QueuedFileSystemStorage(
    remote="django.core.files.storage.FileSystemStorage",
    local_options={"location": f"{settings.MEDIA_ROOT}/legacy-local"},
    remote_options={"location": f"{settings.MEDIA_ROOT}/legacy-remote"},
    delayed=True,
    task="queued_storage.tasks.TransferAndDelete",
)


class Legacy(models.Model):
    """A model written for django-queued-storage 0.8, unchanged."""

    file = QueuedFileField(upload_to="legacy", storage=legacy)
