"""A local copy is deleted only after the remote copy was checked in content, not only in size."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage

from queued_storage import operations
from queued_storage.models import FileRecord

pytestmark = pytest.mark.django_db(transaction=True)


class Corrupting(FileSystemStorage):
    """A remote that keeps what it is sent with its first byte changed: the size still matches."""

    def save(self, name: Any, content: Any, max_length: int | None = None) -> str:
        data = bytearray(content.read())
        data[0] ^= 0xFF
        return super().save(name, ContentFile(bytes(data)), max_length)


def test_delete_local_keeps_the_file_when_the_copy_read_back_differs(make, eager, settings):
    settings.QUEUED_STORAGE_RETRIES = 0
    storage = make(remote="tests.test_verification.Corrupting", delete_local=True)
    name = storage.save("kept.txt", ContentFile(b"the only good copy"))
    status = storage.status(name)
    assert status.state == "failed"
    assert "read back" in status.last_error
    with storage.local.open(name) as fh:  # never deleted, still served
        assert fh.read() == b"the only good copy"
    assert storage.url(name).startswith("/local/")


def test_delete_local_reads_back_a_remote_without_a_hash_then_deletes(make, eager):
    storage = make(delete_local=True)  # FileSystemStorage: no hash of its own
    name = storage.save("gone.txt", ContentFile(b"copied intact"))
    status = storage.status(name)
    assert status.state == "remote"
    assert not storage.local.exists(name)
    with storage.open(name) as fh:
        assert fh.read() == b"copied intact"


def test_cleanup_local_reads_back_a_remote_without_a_hash(make, eager):
    storage = make()
    good = storage.save("good.txt", ContentFile(b"good bytes"))
    bad = storage.save("bad.txt", ContentFile(b"bad bytes!"))
    # The same size, other bytes: a size check alone would pass it.
    os.remove(storage.remote.path(bad))
    storage.remote.save(bad, ContentFile(b"BAD BYTES!"))
    reported: list[str] = []
    records = FileRecord.objects.filter(storage=storage.identity).order_by("name")
    outcome = operations.cleanup_local(records, dry_run=False, report=reported.append)
    assert outcome.done == [good]
    assert not storage.local.exists(good) and storage.local.exists(bad)
    assert outcome.skipped == {"kept: remote copy not verified": [bad]}
    error = storage.status(bad).last_error
    assert error.startswith("Verification failed: the remote copy read back hashes to MD5 ")
    assert "not the MD5 recorded at transfer" in error
    assert any(line.startswith(f"kept {bad}: Verification failed") for line in reported)


def test_verify_says_which_check_it_made(make, eager):
    storage = make()
    name = storage.save("checked.txt", ContentFile(b"abc"))
    record = FileRecord.objects.get(storage=storage.identity, name=name)
    assert operations.verify(record).detail == "remote copy matches (size)"
    assert operations.verify(record, read_back=True).detail == "remote copy matches (size and MD5 read back)"
