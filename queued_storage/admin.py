"""The file records in the Django admin: see every file's state, retry and verify transfers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.text import Truncator
from django.utils.timesince import timesince

from . import operations
from .models import FileRecord
from .registry import label_of

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[FileRecord]
    _Paginator = Paginator[FileRecord]
else:  # not subscriptable at runtime without django-stubs-ext
    _ModelAdmin = admin.ModelAdmin
    _Paginator = Paginator


class StorageFilter(admin.SimpleListFilter):
    """Filter by storage, shown by its STORAGES alias or model field rather than its identity."""

    title = "storage"
    parameter_name = "storage"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label_of(key)) for key in operations.identities()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FileRecord]) -> QuerySet[FileRecord]:
        value = self.value()
        return queryset.filter(storage=value) if value else queryset


class HostFilter(admin.SimpleListFilter):
    """Filter by host, offering the hosts that hold files not yet on the remote.

    Those are the files a host is needed for; the hosts of every record would
    take a read of the whole table to list.
    """

    title = "host"
    parameter_name = "host"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        waiting = FileRecord.objects.filter(state__in=operations.WAITING)
        hosts = set(waiting.order_by().values_list("host", flat=True).distinct())
        if self.value():
            hosts.add(str(self.value()))
        return [(host, host or "(none)") for host in sorted(hosts)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FileRecord]) -> QuerySet[FileRecord]:
        value = self.value()
        return queryset.filter(host=value) if value is not None else queryset


class CountingPaginator(_Paginator):
    """A paginator that counts at most :attr:`limit` records: a count of all of them reads them all.

    Past the limit it reports the limit, and ``capped`` is true.
    """

    limit = 10_000
    capped = False

    @cached_property
    def count(self) -> int:
        records = cast("QuerySet[FileRecord]", self.object_list)
        counted = int(records[: self.limit + 1].count())
        self.capped = counted > self.limit
        return min(counted, self.limit)


@admin.register(FileRecord)
class FileRecordAdmin(_ModelAdmin):
    list_display = ("name", "storage_label", "state", "size", "progress", "attempts", "error", "age", "host")
    list_filter = ("state", StorageFilter, HostFilter)
    search_fields = ("name",)
    # Newest first, in key order: an index gives any page of the list, filtered
    # by state or not, without reading the rest.  No date drill-down: listing
    # its years reads every record.
    ordering = ("-pk",)
    paginator = CountingPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice
    actions = ("retry_transfer", "verify_remote_copy")
    # The state machine lives in queued_storage.transitions; an edit by hand
    # (state, version, lease) would let a worker switch or skip the wrong copy.
    readonly_fields = tuple(f.name for f in FileRecord._meta.fields)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None and getattr(changelist.paginator, "capped", False):
            self.message_user(
                request,
                f"More than {CountingPaginator.limit:,} files match, and the count stops there: "
                "the pages show the newest. Filter by state, storage or host, or search, to see others.",
                messages.INFO,
            )
        return response

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

    # Records are numbered in the order they were created.
    @admin.display(description="age", ordering="pk")
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
