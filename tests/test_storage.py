"""QueuedStorage in one process: routing, naming, options, pickling.

The remote here is a second FileSystemStorage and transfers run eagerly in
this process; test_integration.py covers the same flow on a real worker and S3.
"""

from __future__ import annotations

import pickle

import pytest
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.db import transaction
from django.db.migrations.writer import MigrationWriter
from django.utils import timezone

from queued_storage import QueuedRemoteStorage, QueuedStorage
from queued_storage.conf import conf
from queued_storage.mirror import cache_key
from queued_storage.models import FileRecord
from queued_storage.registry import lookup

from .conftest import FS

S3 = "storages.backends.s3.S3Storage"

pytestmark = pytest.mark.django_db(transaction=True)


def test_save_is_local_and_pending_until_transferred(make):
    storage = make(delayed=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.using_local(name)
    assert storage.url(name) == "/local/a.txt"
    status = storage.status(name)
    assert (status.state, status.size, status.attempts, status.last_error) == ("pending", 3, 0, "")
    assert not storage.remote.exists(name)


def test_the_record_of_a_save_is_the_row_the_orm_would_write(make):
    # save() writes its record with one prepared INSERT, not objects.create():
    # every column must still get what the model's fields give it.
    storage = make(delayed=True)
    before = timezone.now()
    name = storage.save("a.txt", ContentFile(b"abc"))
    after = timezone.now()
    saved = FileRecord.objects.get(storage=storage.identity, name=name)
    by_orm = FileRecord.objects.create(
        storage=storage.identity, name="b.txt", state="pending", version=saved.version, size=3, host=conf.HOST
    )

    def columns(record):
        return {f.attname: getattr(record, f.attname) for f in FileRecord._meta.concrete_fields}

    differ = {"id", "name", "created_at", "updated_at"}
    assert {k: v for k, v in columns(saved).items() if k not in differ} == {
        k: v for k, v in columns(by_orm).items() if k not in differ
    }
    assert before <= saved.created_at <= saved.updated_at <= after
    assert len(saved.version) == 16


def test_transfer_switches_reads_to_remote(make, eager):
    storage = make(delayed=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.transfer(name) is True
    assert storage.using_remote(name)
    assert storage.url(name) == "/remote/a.txt"
    assert storage.status(name).state == "remote"
    assert storage.status(name).checksum == "md5:900150983cd24fb0d6963f7d28e17f72"
    with storage.open(name) as fh:
        assert fh.read() == b"abc"
    assert storage.transfer(name) is False  # already remote: nothing queued
    assert storage.local.exists(name)  # delete_local is off


def test_delete_local_removes_the_local_copy_after_the_switch(make, eager):
    storage = make(delete_local=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.using_remote(name)
    assert not storage.local.exists(name)
    assert storage.size(name) == 3
    assert FileRecord.objects.get(name=name).local_deleted_at is not None  # cleanup-local passes it by


def test_delete_local_keeps_the_copy_when_the_cache_still_says_local(make, eager, monkeypatch):
    from django.core.cache import caches

    cache = caches["default"]
    real_set = cache.set

    def set_failing_on_remote(key, value, *args, **kwargs):
        if value == "remote":
            raise ConnectionError("cache down at the switch")
        return real_set(key, value, *args, **kwargs)

    def set_many_failing_on_remote(data, *args, **kwargs):
        if "remote" in data.values():
            raise ConnectionError("cache down at the switch")
        return real_set_many(data, *args, **kwargs)

    real_set_many = cache.set_many
    monkeypatch.setattr(cache, "set", set_failing_on_remote)
    monkeypatch.setattr(cache, "set_many", set_many_failing_on_remote)
    storage = make(delayed=True, delete_local=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.url(name) == "/local/a.txt"  # a read put "pending" in the cache
    storage.transfer(name)
    assert FileRecord.objects.get(name=name).state == "remote"
    # The cache still says "pending", so reads go local: that copy must stay.
    assert cache.get(cache_key(storage.identity, name)) == "pending"
    assert storage.local.exists(name)
    with storage.open(name) as fh:
        assert fh.read() == b"abc"


def test_local_delete_holds_the_row_so_a_delete_and_new_save_wait(make):
    import threading

    from queued_storage import transitions

    storage = make(delayed=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    record = FileRecord.objects.get(name=name)
    FileRecord.objects.filter(pk=record.pk).update(state="remote")
    storage.remote.save(name, ContentFile(b"abc"))
    deleted = threading.Event()
    refused: list[str] = []

    def delete() -> None:
        from django.db import connection

        try:
            storage.delete(name)
            deleted.set()
        finally:
            connection.close()

    def delete_without_waiting() -> None:
        from django.db import OperationalError, connection

        try:
            # A lock held elsewhere now refuses the delete at once instead of making it wait.
            with connection.cursor() as cursor:
                cursor.execute(
                    "PRAGMA busy_timeout = 0" if connection.vendor == "sqlite" else "SET lock_timeout = 1"
                )
            storage.delete(name)
        except OperationalError as exc:
            refused.append(str(exc))
        finally:
            connection.close()

    with transitions.local_copy_removable(storage.identity, name, record.version) as removable:
        assert removable
        probe = threading.Thread(target=delete_without_waiting)
        probe.start()
        probe.join(10)
        assert len(refused) == 1 and ("locked" in refused[0] or "lock timeout" in refused[0]), refused
        assert storage.local.exists(name) and FileRecord.objects.filter(name=name).exists()
        thread = threading.Thread(target=delete)
        thread.start()
        storage.local.delete(name)
    thread.join(10)
    assert deleted.is_set()
    assert not FileRecord.objects.filter(name=name).exists()
    with transitions.local_copy_removable(storage.identity, name, record.version) as removable:
        assert not removable  # gone, or saved anew under another version


def test_rolled_back_save_queues_nothing(make, eager):
    storage = make()
    with pytest.raises(RuntimeError), transaction.atomic():
        name = storage.save("a.txt", ContentFile(b"abc"))
        raise RuntimeError("rollback")
    assert not FileRecord.objects.filter(name=name).exists()
    assert not storage.remote.exists(name)


def test_queued_only_after_commit(make, eager):
    storage = make()
    with transaction.atomic():
        name = storage.save("a.txt", ContentFile(b"abc"))
        assert storage.status(name).state == "pending"
        assert not storage.remote.exists(name)
    assert storage.status(name).state == "remote"


def test_names_are_free_on_both_sides_without_asking_the_remote(make, eager):
    storage = make(delete_local=True)
    first = storage.save("a.txt", ContentFile(b"one"))
    assert not storage.local.exists(first) and storage.remote.exists(first)
    second = storage.save("a.txt", ContentFile(b"two"))
    assert second != first
    with storage.remote.open(first) as fh:
        assert fh.read() == b"one"


def test_a_recorded_name_is_never_written_locally_again(make, eager, monkeypatch):
    storage = make(delete_local=True)
    first = storage.save("a.txt", ContentFile(b"one"))  # now remote only
    assert storage.get_available_name(first) != first  # the public check asks the records
    written = []
    real_save = storage.local._save  # the write itself
    monkeypatch.setattr(
        storage.local, "_save", lambda name, content: written.append(name) or real_save(name, content)
    )
    second = storage.save("a.txt", ContentFile(b"two"))
    assert second != first
    assert written == [second]  # the INSERT refused "a.txt" before any byte was written
    with storage.open(second) as fh:
        assert fh.read() == b"two"


def test_a_local_file_appearing_after_the_check_moves_the_record(make, monkeypatch):
    storage = make(delayed=True)
    storage.local.save("a.txt", ContentFile(b"someone else's"))
    real_exists = storage.local.exists
    answers = iter([False])  # the first check misses it, as in a race
    monkeypatch.setattr(storage.local, "exists", lambda name: next(answers, None) or real_exists(name))
    name = storage.save("a.txt", ContentFile(b"ours"))
    assert name != "a.txt"
    assert list(FileRecord.objects.values_list("name", flat=True)) == [name]
    with storage.open(name) as fh:
        assert fh.read() == b"ours"
    with storage.local.open("a.txt") as fh:
        assert fh.read() == b"someone else's"


def test_unknown_file_is_looked_up_once_then_recorded(make):
    storage = make()
    storage.remote.save("old.txt", ContentFile(b"from before"))
    assert storage.using_remote("old.txt")
    assert FileRecord.objects.get(name="old.txt").state == "remote"
    storage.local.save("legacy.txt", ContentFile(b"local only"))
    assert storage.using_local("legacy.txt")
    assert FileRecord.objects.get(name="legacy.txt").state == "pending"
    assert not storage.exists("nowhere.txt")


def test_exists_and_delete_cover_both_sides(make, eager):
    storage = make()
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.exists(name)
    storage.delete(name)
    assert not storage.exists(name)
    assert not storage.local.exists(name) and not storage.remote.exists(name)
    assert not FileRecord.objects.filter(name=name).exists()
    with pytest.raises(FileNotFoundError):
        storage.status(name)


def test_listdir_merges_both_sides(make, eager):
    storage = make(delete_local=True)
    storage.save("d/remote.txt", ContentFile(b"r"))
    storage.local.save("d/local.txt", ContentFile(b"l"))
    assert storage.listdir("d") == ([], ["local.txt", "remote.txt"])


def test_times_and_path_follow_the_file(make):
    storage = make(delayed=True)
    name = storage.save("a.txt", ContentFile(b"abc"))
    assert storage.path(name) == storage.local.path(name)
    assert storage.get_modified_time(name) == storage.local.get_modified_time(name)
    assert storage.get_created_time(name) == storage.local.get_created_time(name)
    assert storage.get_accessed_time(name) == storage.local.get_accessed_time(name)


def test_zero_byte_file(make, eager):
    storage = make()
    name = storage.save("empty.bin", ContentFile(b""))
    assert storage.status(name).state == "remote"
    assert storage.size(name) == 0


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "a\x00b.txt"])
def test_bad_names_are_refused_and_nothing_is_written(make, tmp_path, name):
    storage = make()
    with pytest.raises(SuspiciousFileOperation):
        storage.save(name, ContentFile(b"x"))
    for _ in range(2):  # refused each time, never remembered as checked
        with pytest.raises(SuspiciousFileOperation):
            storage.url(name)
    assert not (tmp_path / "evil.txt").exists()
    assert not FileRecord.objects.exists()


def test_over_long_name_gets_a_clear_error(make):
    storage = make()
    with pytest.raises(OSError, match="too long"):
        storage.save("x" * 300 + ".txt", ContentFile(b"x"))
    assert not FileRecord.objects.exists()


@pytest.mark.parametrize("name", ["ünïcödé ✓.txt", "with space.txt", "100%.txt", "a+b.txt"])
def test_awkward_but_valid_names_round_trip(make, eager, name):
    storage = make()
    saved = storage.save(name, ContentFile(b"ok"))
    assert saved == name
    assert storage.using_remote(saved)
    with storage.open(saved) as fh:
        assert fh.read() == b"ok"


def test_unknown_option_names_the_key_and_the_valid_ones(make):
    with pytest.raises(ImproperlyConfigured, match=r"'colour'.*valid options are local, remote"):
        make(colour="blue")


@pytest.mark.parametrize("option", ["local", "remote"])  # task: check E008 (the queue's side)
def test_path_that_does_not_import_is_named(make, option):
    with pytest.raises(ImproperlyConfigured, match=f"{option}='nope.Missing'"):
        make(**{option: "nope.Missing"})


def test_storages_alias_as_local(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "scratch": {"BACKEND": FS, "OPTIONS": {"location": str(tmp_path / "scratch")}},
    }
    storage = QueuedStorage(local="scratch", remote=FS, remote_options={"location": str(tmp_path / "r")})
    assert storage.local.location == str(tmp_path / "scratch")


def test_deconstruct_and_migration_serialisation(make):
    storage = make(delayed=True)
    path, args, kwargs = storage.deconstruct()
    assert path == "queued_storage.QueuedStorage"
    assert kwargs["delayed"] is True and kwargs["local"] == FS
    rebuilt = QueuedStorage(*args, **kwargs)
    assert rebuilt.identity == storage.identity
    code, imports = MigrationWriter.serialize(storage)
    assert code.startswith("queued_storage.QueuedStorage(") and "import queued_storage" in imports


def test_pickle_round_trip_drops_connections(make, eager):
    storage = make()
    storage.local.exists("x")  # build the inner storage
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.identity == storage.identity
    name = clone.save("p.txt", ContentFile(b"p"))
    assert storage.using_remote(name)


def test_alias_and_identity():
    assert QueuedRemoteStorage is QueuedStorage


def test_identity_ignores_secrets_but_not_the_bucket(make):
    def s3(bucket, secret):
        return make(
            remote=S3, remote_options={"bucket_name": bucket, "access_key": "id", "secret_key": secret}
        )

    a, b, c = s3("x", "one"), s3("x", "two"), s3("y", "one")
    assert a.identity == b.identity != c.identity
    assert "one" not in a.identity


def test_storages_with_different_options_coexist_and_are_found(make, tmp_path, eager):
    a = make(
        local_options={"location": str(tmp_path / "la")}, remote_options={"location": str(tmp_path / "ra")}
    )
    b = make(
        local_options={"location": str(tmp_path / "lb")}, remote_options={"location": str(tmp_path / "rb")}
    )
    assert a.identity != b.identity
    assert lookup(a.identity) is a and lookup(b.identity) is b
    name_a = a.save("same.txt", ContentFile(b"a"))
    name_b = b.save("same.txt", ContentFile(b"b"))
    assert name_a == name_b == "same.txt"
    assert a.get_cache_key(name_a) != b.get_cache_key(name_b) == cache_key(b.identity, "same.txt")
    with a.remote.open(name_a) as fa, b.remote.open(name_b) as fb:
        assert (fa.read(), fb.read()) == (b"a", b"b")


def test_field_declared_storage_is_found_by_identity():
    from .testapp.models import Photo, photos

    assert Photo._meta.get_field("image").storage is photos
    assert lookup(photos.identity) is photos


def test_unknown_identity_says_what_to_check():
    with pytest.raises(LookupError, match="INSTALLED_APPS"):
        lookup("nope-123")


def test_requeue_task_for_celery_beat_queues_stale_files(make, eager):
    from queued_storage.tasks import requeue_stale

    storage = make()
    name = storage.save("stale.txt", ContentFile(b"s"))
    FileRecord.objects.filter(name=name).update(state="failed", last_error="boom")
    assert requeue_stale.apply(kwargs={"older_than": 0}).get() == 0  # failed ones only with failed=True
    assert requeue_stale.apply(kwargs={"older_than": 0, "failed": True}).get() == 1
    assert storage.status(name).state == "remote"


def test_without_a_celery_app_the_save_stays_pending_with_a_clear_error(make, monkeypatch, caplog, settings):
    from celery import _state

    settings.QUEUED_STORAGE_QUEUE_BACKEND = "celery"  # TASKS is set: unset, Django Tasks would be chosen
    monkeypatch.setattr(_state._tls, "current_app", None)
    monkeypatch.setattr(_state, "default_app", None)
    name = make().save("orphan.txt", ContentFile(b"o"))
    assert FileRecord.objects.get(name=name).state == "pending"
    assert "no Celery app is configured" in caplog.text


def test_storage_built_before_the_celery_app_still_uses_it(make, eager, monkeypatch):
    from celery import _state

    with monkeypatch.context() as m:  # as when models load before proj/celery.py is imported
        m.setattr(_state._tls, "current_app", None)
        m.setattr(_state, "default_app", None)
        storage = make()  # the built-in Transfer, already registered with the project app
    name = storage.save("late.txt", ContentFile(b"l"))
    assert storage.status(name).state == "remote"


class StampingStorage(FileSystemStorage):
    """A local storage whose save() does more than write, as a project's subclass may."""

    def save(self, name, content, max_length=None):
        return super().save(name, ContentFile(b"stamped " + content.read()), max_length)


def test_a_local_storage_with_its_own_save_is_saved_through_it(make):
    storage = make(local=f"{__name__}.StampingStorage", delayed=True)
    name = storage.save("a.txt", ContentFile(b"x"))
    with storage.open(name) as fh:
        assert fh.read() == b"stamped x"
