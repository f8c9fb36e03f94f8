"""One uploaded file: an image (ImageField) or any file (FileField), both on the queued default storage."""

from __future__ import annotations

from django.db import models
from django.db.models.fields.files import FieldFile


class Upload(models.Model):
    image = models.ImageField(upload_to="images/", blank=True)
    attachment = models.FileField(upload_to="files/", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.file.name

    @property
    def file(self) -> FieldFile:
        return self.image if self.image else self.attachment

    @property
    def is_image(self) -> bool:
        return bool(self.image)
