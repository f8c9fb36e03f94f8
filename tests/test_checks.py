from __future__ import annotations

import pytest
from django.core.checks import run_checks

from queued_storage import QueuedStorage
from queued_storage.storage import _registry

FS = "django.core.files.storage.FileSystemStorage"


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
    storage = QueuedStorage(
        local=FS, remote=FS, local_options={"location": "/tmp/same"}, remote_options={"location": "/tmp/same"}
    )
    try:
        assert ids() == ["queued_storage.E003"]
    finally:
        del _registry[storage.key]


def test_no_celery_app(monkeypatch):
    from celery import _state

    monkeypatch.setattr(_state._tls, "current_app", None)
    monkeypatch.setattr(_state, "default_app", None)
    assert ids() == ["queued_storage.E004"]


def test_same_identity_but_different_behaviour():
    from queued_storage.storage import _duplicates

    options = {
        "local": FS,
        "remote": FS,
        "local_options": {"location": "/tmp/l5"},
        "remote_options": {"location": "/tmp/r5"},
    }
    first = QueuedStorage(**options)
    QueuedStorage(**options)  # identical: fine
    QueuedStorage(**options, delete_local=True)
    try:
        assert ids() == ["queued_storage.E005"]
    finally:
        del _registry[first.key]
        _duplicates.clear()


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
    storage = QueuedStorage(
        local=FS, remote=FS, remote_options={"location": "/tmp/w3"}, task="queued_storage.tasks.requeue_stale"
    )
    try:
        assert ids() == ["queued_storage.W003"]
    finally:
        del _registry[storage.key]


def test_gzip_remote_cannot_be_verified():
    storage = QueuedStorage(
        local=FS, remote="storages.backends.s3.S3Storage", remote_options={"bucket_name": "gz", "gzip": True}
    )
    try:
        assert ids() == ["queued_storage.E006"]
    finally:
        del _registry[storage.key]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("QUEUED_STORAGE_BATCH_FILES", 0), ("QUEUED_STORAGE_LEASE", -5), ("QUEUED_STORAGE_HOST_QUEUE", "x")],
)
def test_a_setting_out_of_range_is_named_at_startup(settings, setting, value):
    setattr(settings, setting, value)
    assert ids() == ["queued_storage.E007"]
    [error] = [e for e in run_checks() if e.id == "queued_storage.E007"]
    assert setting in error.msg


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
