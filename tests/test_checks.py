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
    storage = QueuedStorage(local=FS, remote=FS, local_options={"location": "/tmp/same"}, remote_options={"location": "/tmp/same"})
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

    options = {"local": FS, "remote": FS, "local_options": {"location": "/tmp/l5"}, "remote_options": {"location": "/tmp/r5"}}
    first = QueuedStorage(**options)
    QueuedStorage(**options)  # identical: fine
    QueuedStorage(**options, delete_local=True)
    try:
        assert ids() == ["queued_storage.E005"]
    finally:
        del _registry[first.key]
        _duplicates.clear()
