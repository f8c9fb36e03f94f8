"""The background publisher: save() returns before the broker is reached, nothing is dropped."""

from __future__ import annotations

import os
import threading

import pytest
from django.core.files.base import ContentFile

from queued_storage import publishing, tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_broker(monkeypatch):
    """enqueue() blocks until released, and records what it was asked to send."""
    release = threading.Event()
    sent: list[tuple[str, str]] = []

    def enqueue(storage, name, version, host=None):
        release.wait(10)
        sent.append((name, threading.current_thread().name))
        return True

    monkeypatch.setattr(tasks, "enqueue", enqueue)
    yield release, sent
    release.set()
    publishing.flush()


def test_background_save_returns_before_the_message_is_sent(make, settings, slow_broker):
    release, sent = slow_broker
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(3)]
    assert sent == []  # every save returned while the broker was still "busy"
    assert publishing.flush(0.2) is False
    release.set()
    assert publishing.flush(5) is True
    assert sent == [(name, "queued_storage publisher") for name in names]  # all, in commit order


def test_inline_is_the_default(make, slow_broker):
    release, sent = slow_broker
    release.set()
    name = make().save("a.txt", ContentFile(b"x"))
    assert sent == [(name, threading.current_thread().name)]


def test_a_failing_message_does_not_stop_the_thread(make, settings, monkeypatch):
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    sent = []

    def enqueue(storage, name, version, host=None):
        if name == "bad.txt":
            raise RuntimeError("boom")
        sent.append(name)
        return True

    monkeypatch.setattr(tasks, "enqueue", enqueue)
    storage = make()
    storage.save("bad.txt", ContentFile(b"x"))
    good = storage.save("good.txt", ContentFile(b"x"))
    assert publishing.flush(5) is True
    assert sent == [good]


def test_a_forked_child_starts_its_own_publisher(make, settings, slow_broker):
    release, _ = slow_broker
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    make().save("parent.txt", ContentFile(b"x"))  # the parent's thread now waits in enqueue()
    pid = os.fork()
    if pid == 0:  # the child must not inherit the parent's unsent message or its lock
        os._exit(0 if publishing.flush(1) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    release.set()
    assert publishing.flush(5) is True


def test_eager_celery_publishes_inline_even_when_asked_for_background(make, settings, eager):
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    storage = make()
    name = storage.save("a.txt", ContentFile(b"x"))
    assert storage.status(name).state == "remote"  # transferred before save() returned
