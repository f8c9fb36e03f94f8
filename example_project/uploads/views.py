"""The upload page, the JSON endpoint it polls, and delete / retry."""

from __future__ import annotations

import os
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .forms import UploadForm
from .models import Upload


def describe(upload: Upload) -> dict[str, Any]:
    """What the page shows of one upload; the state comes from ``storage.status()``."""
    file = upload.file
    item: dict[str, Any] = {
        "id": upload.pk,
        "name": os.path.basename(file.name),
        "path": file.name,
        "kind": "image" if upload.is_image else "file",
        "created": upload.created_at.isoformat(),
    }
    try:
        status = file.storage.status(file.name)
    except FileNotFoundError:
        return {**item, "state": "missing", "size": None, "bytes_done": 0, "attempts": 0, "url": None}
    return {
        **item,
        "state": status.state,
        "size": status.size,
        "bytes_done": status.bytes_done,
        "attempts": status.attempts,
        "last_error": status.last_error,
        "url": file.url,
    }


def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            # One transaction: every transfer is queued only once all rows are committed.
            with transaction.atomic():
                for image in form.cleaned_data["images"]:
                    Upload.objects.create(image=image)
                for attachment in form.cleaned_data["files"]:
                    Upload.objects.create(attachment=attachment)
            count = len(form.cleaned_data["images"]) + len(form.cleaned_data["files"])
            messages.success(request, f"Saved {count} file(s) locally; the worker is moving them to S3.")
            return redirect("index")
    else:
        form = UploadForm()
    uploads = [describe(u) for u in Upload.objects.all()[:100]]
    return render(request, "uploads/index.html", {"form": form, "uploads": uploads})


def api_uploads(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"uploads": [describe(u) for u in Upload.objects.all()[:100]]})


@require_POST
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    upload = get_object_or_404(Upload, pk=pk)
    upload.file.delete(save=False)  # both copies and the location record
    upload.delete()
    return redirect("index")


@require_POST
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    upload = get_object_or_404(Upload, pk=pk)
    upload.file.storage.transfer(upload.file.name)
    return redirect("index")
