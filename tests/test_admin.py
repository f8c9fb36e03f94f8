"""The admin pages of the location records, rendered with the test client, actions exercised."""

from __future__ import annotations

from typing import cast

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage

from queued_storage import QueuedStorage, transitions
from queued_storage.admin import CountingPaginator, FileRecordAdmin
from queued_storage.models import FileRecord

from .conftest import transfer_now

default_storage = cast(QueuedStorage, _default_storage)

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/queued_storage/filerecord/"


def record(name: str) -> FileRecord:
    return FileRecord.objects.get(storage=default_storage.identity, name=name)


def fail(name: str, error: str = "ConnectionError: S3 is down") -> None:
    rec = record(name)
    transitions.claim(rec.storage, name, rec.version, owner="test")
    transitions.release(rec.storage, name, rec.version, error=error, failed=True)


def test_changelist_filters_and_search(admin_client):
    a = default_storage.save("admin/alpha.txt", ContentFile(b"a" * 10))
    b = default_storage.save("admin/beta.txt", ContentFile(b"b"))
    fail(b)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "admin/alpha.txt" in page and "admin/beta.txt" in page
    assert "ConnectionError: S3 is down" in page
    assert ">default<" in page  # the storage shown by its STORAGES alias
    failed = admin_client.get(CHANGELIST, {"state__exact": "failed"}).content.decode()
    assert "admin/beta.txt" in failed and "admin/alpha.txt" not in failed
    found = admin_client.get(CHANGELIST, {"q": "alpha"}).content.decode()
    assert "admin/alpha.txt" in found and "admin/beta.txt" not in found
    by_storage = admin_client.get(CHANGELIST, {"storage": default_storage.identity}).content.decode()
    assert "admin/alpha.txt" in by_storage
    assert admin_client.get(CHANGELIST, {"storage": "other"}).status_code == 200
    assert a == "admin/alpha.txt"


def test_changelist_counts_to_its_limit_and_says_so(admin_client, monkeypatch):
    monkeypatch.setattr(CountingPaginator, "limit", 3)
    monkeypatch.setattr(FileRecordAdmin, "list_per_page", 2)
    names = [default_storage.save(f"admin/many-{i}.txt", ContentFile(b"m")) for i in range(5)]
    fail(names[0])
    page = admin_client.get(CHANGELIST).content.decode()
    assert "More than 3 files match, and the count stops there" in page
    assert "3 queued files" in page
    assert names[4] in page and names[3] in page and names[0] not in page  # the newest first
    assert "More than" not in admin_client.get(CHANGELIST, {"state__exact": "failed"}).content.decode()


def test_host_filter_offers_the_hosts_of_files_not_yet_remote(admin_client):
    default_storage.save("admin/here.txt", ContentFile(b"h"))
    FileRecord.objects.create(storage="x", name="gone.txt", state="remote", version="v", host="old-host")
    FileRecord.objects.create(storage="x", name="stuck.txt", state="failed", version="v", host="dead-host")
    page = admin_client.get(CHANGELIST).content.decode()
    assert "?host=dead-host" in page and "?host=old-host" not in page
    chosen = admin_client.get(CHANGELIST, {"host": "old-host"}).content.decode()
    assert "gone.txt" in chosen and "stuck.txt" not in chosen and "?host=old-host" in chosen


def test_change_page_is_read_only_and_no_add_or_delete(admin_client):
    name = default_storage.save("admin/ro.txt", ContentFile(b"x"))
    url = f"{CHANGELIST}{record(name).pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="state"' not in page and 'name="version"' not in page
    assert "pending" in page
    admin_client.post(url, {"state": "remote", "version": "forged"})
    assert (record(name).state, record(name).version) != ("remote", "forged")
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{record(name).pk}/delete/").status_code == 403


def test_retry_action_requeues_failed_files(admin_client, broker):
    failed = default_storage.save("admin/failed.txt", ContentFile(b"f"))
    fail(failed)
    broker.flushdb()
    response = admin_client.post(
        CHANGELIST,
        {"action": "retry_transfer", "_selected_action": [record(failed).pk]},
        follow=True,
    )
    assert "Queued 1 file(s) again." in response.content.decode()
    rec = record(failed)
    # attempts keeps counting, so the next attempt may replace a partial remote copy
    assert (rec.state, rec.attempts, rec.last_error) == ("pending", 1, "")
    assert broker.llen("celery") == 1  # published to the queue transfers go to


@pytest.mark.services  # the default storage's remote is S3
def test_retry_action_skips_remote_files(admin_client):
    name = default_storage.save("admin/done.txt", ContentFile(b"d"))
    transfer_now(default_storage, name)
    response = admin_client.post(
        CHANGELIST, {"action": "retry_transfer", "_selected_action": [record(name).pk]}, follow=True
    )
    assert "Queued 0 file(s) again; skipped 1 already remote." in response.content.decode()
    assert record(name).state == "remote"


def test_verify_action_records_the_result(admin_client, s3):
    name = default_storage.save("admin/verify.txt", ContentFile(b"verified bytes"))
    transfer_now(default_storage, name)
    pk = record(name).pk

    def verify() -> str:
        return admin_client.post(
            CHANGELIST, {"action": "verify_remote_copy", "_selected_action": [pk]}, follow=True
        ).content.decode()

    assert "1 remote copies match their record." in verify()
    assert record(name).last_error == ""

    s3.put_object(Bucket="qs-bucket", Key=name, Body=b"tampered")
    page = verify()
    assert "the remote copy has 8 bytes, the record 14" in page
    assert record(name).last_error == "Verification failed: the remote copy has 8 bytes, the record 14."

    s3.put_object(Bucket="qs-bucket", Key=name, Body=b"verified BYTES")  # same size, other bytes
    assert "does not match md5:" in verify()

    s3.delete_object(Bucket="qs-bucket", Key=name)
    assert "the remote copy is missing" in verify()
    assert "missing" in record(name).last_error


def test_verify_action_on_a_pending_file_records_nothing(admin_client):
    name = default_storage.save("admin/pending.txt", ContentFile(b"p"))
    page = admin_client.post(
        CHANGELIST, {"action": "verify_remote_copy", "_selected_action": [record(name).pk]}, follow=True
    ).content.decode()
    assert "File admin/pending.txt: is pending, not on the remote yet" in page
    assert record(name).last_error == ""
