"""The django-queued-storage 0.8 API, used as its users wrote it."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from queued_storage import backends
from queued_storage.models import FileRecord
from queued_storage.signals import file_transferred, transfer_failed
from queued_storage.tasks import Transfer, TransferAndDelete

from .conftest import FS
from .testapp.models import Legacy

pytestmark = pytest.mark.django_db(transaction=True)


def test_backend_classes_preset_their_storages():
    s3 = backends.QueuedS3Storage()
    assert (s3.local_path, s3.remote_path) == (FS, "storages.backends.s3.S3Storage")
    assert backends.QueuedS3BotoStorage().remote_path == "storages.backends.s3.S3Storage"
    assert backends.QueuedStorage is backends.QueuedFileSystemStorage.__mro__[1]
    path, _, kwargs = backends.QueuedS3Storage(delayed=True).deconstruct()
    assert path == "queued_storage.backends.QueuedS3Storage" and kwargs == {"delayed": True}


def test_queued_file_field_transfer_and_delete(eager):
    obj = Legacy.objects.create(file=ContentFile(b"legacy", name="old.txt"))
    storage = obj.file.storage
    assert storage.using_local(obj.file.name)  # delayed
    received = []
    file_transferred.connect(lambda **kw: received.append(kw), weak=False, dispatch_uid="t")
    try:
        assert obj.file.transfer() is True
    finally:
        file_transferred.disconnect(dispatch_uid="t")
    assert storage.using_remote(obj.file.name)
    assert not storage.local.exists(obj.file.name)  # TransferAndDelete
    assert received[0]["name"] == obj.file.name
    assert received[0]["local"] is storage.local and received[0]["remote"] is storage.remote
    assert received[0]["sender"] is TransferAndDelete


def test_overridden_transfer_hook_true_means_done(make, eager):
    storage = make(task="tests.testapp.tasks.PlainCopy")
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.status(name).state == "remote"
    assert storage.remote.exists(name)


def test_overridden_transfer_hook_false_means_retry_then_failed(make, eager, settings):
    settings.QUEUED_STORAGE_RETRIES = 2
    failures = []
    transfer_failed.connect(lambda **kw: failures.append(kw), weak=False, dispatch_uid="f")
    try:
        name = make(task="tests.testapp.tasks.NeverDone").save("a.txt", ContentFile(b"abc"))
    finally:
        transfer_failed.disconnect(dispatch_uid="f")
    record = FileRecord.objects.get(name=name)
    assert (record.state, record.attempts) == ("failed", 3)
    assert "returned False" in record.last_error
    assert len(failures) == 1 and failures[0]["name"] == name


def test_hook_returning_nonsense_fails_at_once(make, eager):
    name = make(task="tests.testapp.tasks.Confused").save("a.txt", ContentFile(b"abc"))
    record = FileRecord.objects.get(name=name)
    assert (record.state, record.attempts) == ("failed", 1)
    assert "must return True or False" in record.last_error


def test_task_classes_are_celery_tasks():
    from celery import Task

    assert issubclass(Transfer, Task) and issubclass(TransferAndDelete, Transfer)
    assert Transfer.acks_late and Transfer.reject_on_worker_lost
