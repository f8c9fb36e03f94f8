from __future__ import annotations

from unittest import mock

import pytest
from django.core.checks import run_checks

from queued_storage import QueuedStorage, registry

FS = "django.core.files.storage.FileSystemStorage"


@pytest.fixture(autouse=True)
def forget_registered():
    yield
    registry.unregister_all()


def known(storage: QueuedStorage) -> QueuedStorage:
    """``storage`` registered, as if the project declared it."""
    registry.register(storage)
    return storage


def ids(**kwargs):
    return sorted(e.id for e in run_checks(**kwargs) if e.id.startswith("queued_storage."))


def test_the_test_project_is_clean():
    assert ids() == []


def test_missing_cache_alias(settings):
    settings.QUEUED_STORAGE_CACHE = "nope"
    assert ids() == ["queued_storage.E001"]


@pytest.mark.parametrize(
    "backend",
    ["django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache"],
)
def test_process_local_cache(settings, backend):
    settings.CACHES = {"default": {"BACKEND": backend}}
    assert ids() == ["queued_storage.E002"]


def test_same_local_and_remote():
    known(
        QueuedStorage(
            local=FS,
            remote=FS,
            local_options={"location": "/tmp/same"},
            remote_options={"location": "/tmp/same"},
        )
    )
    assert ids() == ["queued_storage.E003"]


def test_no_celery_app(monkeypatch, settings):
    from celery import _state

    settings.QUEUED_STORAGE_QUEUE_BACKEND = "celery"  # TASKS is set: unset, Django Tasks would be chosen
    monkeypatch.setattr(_state._tls, "current_app", None)
    monkeypatch.setattr(_state, "default_app", None)
    assert ids() == ["queued_storage.E004"]


def test_same_identity_but_different_behaviour():
    options = {
        "local": FS,
        "remote": FS,
        "local_options": {"location": "/tmp/l5"},
        "remote_options": {"location": "/tmp/r5"},
    }
    first = known(QueuedStorage(**options))
    same = QueuedStorage(**options)
    second = QueuedStorage(**options, delete_local=True)
    # As if all three were declared (fields of three models, say): E005 names the one that differs.
    declared = [("a.A.f", first), ("b.B.g", same), ("c.C.h", second)]
    with mock.patch.object(registry, "everything", return_value=declared):
        assert registry.conflicts() == [(first, second)]
        assert ids() == ["queued_storage.E005"]


def test_prefetch_above_one_warns(monkeypatch):
    from .celery_app import app

    monkeypatch.setitem(app.conf, "worker_prefetch_multiplier", 4)
    assert ids() == ["queued_storage.W001"]


def test_redis_broker_without_visibility_timeout_warns(monkeypatch):
    from .celery_app import app

    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setitem(app.conf, "broker_transport_options", {})
    assert ids() == ["queued_storage.W002"]


def test_task_without_acks_late_warns():
    known(
        QueuedStorage(
            local=FS,
            remote=FS,
            remote_options={"location": "/tmp/w3"},
            task="queued_storage.tasks.requeue_stale",
        )
    )
    assert ids() == ["queued_storage.W003"]


@pytest.mark.parametrize(
    ("task", "says"),
    [("tests.nope.Task", "does not import"), ("queued_storage.conf.Settings", "not a Celery task")],
)
def test_task_option_that_is_no_task_is_named(task, says):
    known(QueuedStorage(local=FS, remote=FS, remote_options={"location": "/tmp/e8"}, task=task))
    errors = [e for e in run_checks() if e.id == "queued_storage.E008"]
    assert [e.id for e in errors] == ["queued_storage.E008"] and says in errors[0].msg


def test_gzip_remote_cannot_be_verified():
    known(
        QueuedStorage(
            local=FS,
            remote="storages.backends.s3.S3Storage",
            remote_options={"bucket_name": "gz", "gzip": True},
        )
    )
    assert ids() == ["queued_storage.E006"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("QUEUED_STORAGE_BATCH_FILES", 0), ("QUEUED_STORAGE_LEASE", -5), ("QUEUED_STORAGE_HOST_QUEUE", "x")],
)
def test_a_setting_out_of_range_is_named_at_startup(settings, setting, value):
    setattr(settings, setting, value)
    assert ids() == ["queued_storage.E007"]
    [error] = [e for e in run_checks() if e.id == "queued_storage.E007"]
    assert setting in error.msg


@pytest.mark.django_db
def test_records_of_an_identity_no_storage_has_warn_with_the_way_forward():
    from django.core.files.storage import default_storage

    from queued_storage.models import FileRecord

    def with_database():
        return [i for i in ids(databases=["default"]) if i != "queued_storage.I002"]  # SQLite's journal

    FileRecord.objects.create(storage=default_storage.identity, name="kept.txt", version="v")
    assert with_database() == []
    FileRecord.objects.create(storage="FileSystemStorage-S3Storage-0ldb0cket000", name="a.txt", version="v")
    assert ids() == []  # the query runs only with a database: migrate, check --database
    assert with_database() == ["queued_storage.W005"]
    [warning] = [e for e in run_checks(databases=["default"]) if e.id == "queued_storage.W005"]
    assert (
        "FileSystemStorage-S3Storage-0ldb0cket000" in warning.msg
        and default_storage.identity not in warning.msg
    )
    assert "queued_storage rekey OLD_IDENTITY LABEL" in warning.hint


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist"])
def test_i002_names_a_rollback_journal_and_the_setting_that_leaves_it(mode):
    from queued_storage.checks import sqlite_journal_advice

    [info] = sqlite_journal_advice("default", mode)
    assert info.id == "queued_storage.I002" and f"journal_mode={mode}" in info.msg
    assert """"init_command": "PRAGMA journal_mode=WAL;" to DATABASES['default']['OPTIONS']""" in info.hint


@pytest.mark.parametrize("mode", ["wal", "memory", "off"])
def test_i002_says_nothing_of_wal_or_of_a_database_off_disk(mode):
    from queued_storage.checks import sqlite_journal_advice

    assert sqlite_journal_advice("default", mode) == []


@pytest.mark.django_db
def test_i002_reads_the_journal_mode_of_the_records_database_when_given_one():
    from django.db import connection

    assert "queued_storage.I002" not in ids()  # a database check: migrate, check --database
    said = "queued_storage.I002" in ids(databases=["default"])
    if connection.vendor == "sqlite":
        assert said  # tests/settings.py leaves SQLite in its default journal, as startproject does
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "delete"
    else:
        assert not said


def test_nested_local_directories_with_serve_url_warn(make, tmp_path):
    def storage(local: str, **options):
        return make(
            local_options={"location": str(tmp_path / local)},
            remote_options={"location": str(tmp_path / f"remote-{local.replace('/', '-')}")},
            **options,
        )

    storage("media")
    storage("media/photos")
    storage("beside", serve_url="/beside/")
    assert ids() == []  # nested without serve_url, or on its own with it: nothing to say
    storage("beside/inner")
    assert ids() == ["queued_storage.W004"]
    [warning] = [m for m in run_checks() if m.id == "queued_storage.W004"]
    assert str(tmp_path / "beside/inner") in warning.msg and str(tmp_path / "beside") in warning.msg


def test_one_local_directory_shared_by_two_storages_warns_once(make, tmp_path):
    for remote in ("r1", "r2"):
        make(
            local_options={"location": str(tmp_path / "shared")},
            remote_options={"location": str(tmp_path / remote)},
            serve_url="/files/",
        )
    assert ids() == ["queued_storage.W004"]


def deployed() -> list[str]:
    """The messages of I001, with the checks ``manage.py check --deploy`` runs."""
    return [m.msg for m in run_checks(include_deployment_checks=True) if m.id == "queued_storage.I001"]


def test_i001_says_saves_publish_from_a_background_thread_by_default(settings):
    del settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND  # tests/settings.py asks for inline
    [said] = deployed()
    assert said.startswith("Transfer messages are sent from a background thread (the default)")
    assert "uWSGI without --enable-threads" in said


@pytest.mark.parametrize(
    ("eager", "reason"),
    [(False, "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND is False"), (True, "Celery runs tasks eagerly")],
)
def test_i001_says_why_saves_publish_inline(settings, monkeypatch, eager, reason):
    from .celery_app import app

    if eager:
        settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
        monkeypatch.setitem(app.conf, "task_always_eager", True)
    [said] = deployed()
    assert said.startswith("Transfer messages are sent inline") and reason in said


def test_i001_is_only_shown_with_the_deployment_checks():
    assert "queued_storage.I001" not in ids()
    assert ids(include_deployment_checks=True) == ["queued_storage.I001"]
