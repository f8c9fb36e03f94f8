"""The upload form: several images and several plain files in one POST."""

from __future__ import annotations

from typing import Any

from django import forms


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileMixin:
    """Django's recipe for a file field that accepts several files."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        kwargs.setdefault("required", False)
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean  # type: ignore[misc]
        if isinstance(data, (list, tuple)):
            return [single(d, initial) for d in data if d]
        return [single(data, initial)] if data else []


class MultipleImageField(MultipleFileMixin, forms.ImageField):
    pass


class MultipleFileField(MultipleFileMixin, forms.FileField):
    pass


class UploadForm(forms.Form):
    images = MultipleImageField(label="Images", widget=MultipleFileInput(attrs={"accept": "image/*"}))
    files = MultipleFileField(label="Other files")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("images") and not cleaned.get("files") and not self.errors:
            raise forms.ValidationError("Choose at least one file.")
        return cleaned
