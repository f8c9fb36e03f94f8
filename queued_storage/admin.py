"""The file records in the Django admin: see every file's state, retry and verify transfers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.timesince import timesince

from . import operations
from .models import FileRecord
from .registry import label_of

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[FileRecord]
else:  # not subscriptable at runtime without django-stubs-ext
    _ModelAdmin = admin.ModelAdmin


class StorageFilter(admin.SimpleListFilter):
    """Filter by storage, shown by its STORAGES alias or model field rather than its identity."""

    title = "storage"
    parameter_name = "storage"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        keys = FileRecord.objects.values_list("storage", flat=True).distinct().order_by("storage")
        return [(key, label_of(key)) for key in keys]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FileRecord]) -> QuerySet[FileRecord]:
        value = self.value()
        return queryset.filter(storage=value) if value else queryset


@admin.register(FileRecord)
class FileRecordAdmin(_ModelAdmin):
    list_display = ("name", "storage_label", "state", "size", "progress", "attempts", "error", "age", "host")
    list_filter = ("state", StorageFilter, "host")
    search_fields = ("name",)
    ordering = ("-updated_at",)
    date_hierarchy = "created_at"
    actions = ("retry_transfer", "verify_remote_copy")
    # The state machine lives in queued_storage.transitions; an edit by hand
    # (state, version, lease) would let a worker switch or skip the wrong copy.
    readonly_fields = tuple(f.name for f in FileRecord._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # records are created by saving a file

    def has_delete_permission(self, request: HttpRequest, obj: FileRecord | None = None) -> bool:
        # Deleting a row would leave its files behind; delete the file through its storage.
        return False

    @admin.display(description="storage", ordering="storage")
    def storage_label(self, record: FileRecord) -> str:
        return label_of(record.storage)

    @admin.display(description="copied")
    def progress(self, record: FileRecord) -> str:
        if record.state != "transferring" or not record.size:
            return ""
        return f"{100 * record.bytes_done // record.size} %"

    @admin.display(description="last error")
    def error(self, record: FileRecord) -> str:
        return Truncator(record.last_error).chars(80)

    @admin.display(description="age", ordering="created_at")
    def age(self, record: FileRecord) -> str:
        return timesince(record.created_at, timezone.now(), depth=1)

    @admin.action(description="Retry transfer of the selected files", permissions=["change"])
    def retry_transfer(self, request: HttpRequest, queryset: QuerySet[FileRecord]) -> None:
        outcome = operations.retry(queryset)
        skipped = outcome.describe_skipped()
        self.message_user(
            request,
            f"Queued {len(outcome.done)} file(s) again" + (f"; skipped {skipped}." if skipped else "."),
            messages.SUCCESS if outcome.done else messages.WARNING,
        )

    @admin.action(description="Verify the remote copy of the selected files", permissions=["change"])
    def verify_remote_copy(self, request: HttpRequest, queryset: QuerySet[FileRecord]) -> None:
        results = [operations.verify(record) for record in queryset]
        good = sum(1 for r in results if r.ok)
        if good:
            self.message_user(request, f"{good} remote copies match their record.", messages.SUCCESS)
        for result in results:
            if not result.ok:
                self.message_user(request, f"File {result.name}: {result.detail}", messages.ERROR)
