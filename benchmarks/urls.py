"""Views of the benchmark server: upload form handlers and three ways to serve a local file."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path


def _local_path(name: str) -> str:
    queued: Any = default_storage
    return str(queued.local.path(name))


def upload(request: HttpRequest, alias: str) -> HttpResponse:
    """Create a model with the posted file on the storage ``alias``, as a model form's save() would."""
    from .models import BY_ALIAS

    return HttpResponse(BY_ALIAS[alias].objects.create(file=request.FILES["file"]).file.name)


def record(name: str, size: int) -> None:
    """The record's ``INSERT`` + ``COMMIT`` as ``save()`` writes it."""
    from queued_storage import transitions

    queued: Any = default_storage
    with transaction.atomic():
        transitions.record_saved(queued.identity, name, size)


def upload_floor(request: HttpRequest) -> HttpResponse:
    """The upload view on ``FileSystemStorage`` that also commits one record: a recording storage's floor."""
    from .models import BY_ALIAS

    file: Any = request.FILES["file"]
    upload = BY_ALIAS["fs"].objects.create(file=file)
    record(f"uploads/floor/{uuid.uuid4().hex}.bin", file.size)
    return HttpResponse(upload.file.name)


def serve_file_response(request: HttpRequest, name: str) -> FileResponse:
    return FileResponse(open(_local_path(name), "rb"))


def serve_naive(request: HttpRequest, name: str) -> HttpResponse:
    """The trap of seed 002: HttpResponse iterates the file by lines."""
    return HttpResponse(open(_local_path(name), "rb"))


urlpatterns: list[URLPattern | URLResolver] = [
    path("upload/<str:alias>/", upload),
    path("upload-floor/", upload_floor),
    path("files/", include("queued_storage.urls")),
    path("serve/file-response/<path:name>", serve_file_response),
    path("serve/naive/<path:name>", serve_naive),
]
