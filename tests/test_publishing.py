"""The background publisher: save() returns before the broker is reached, nothing is dropped."""

from __future__ import annotations

import os
import sys
import threading
import types

import pytest
from django.core.files.base import ContentFile

from queued_storage import publishing

pytestmark = pytest.mark.django_db(transaction=True)


def _broker(monkeypatch, enqueue_many):
    """Route both ways of publishing, one file or several, to ``enqueue_many``."""
    monkeypatch.setattr(
        publishing,
        "enqueue",
        lambda storage, name, version, host=None: enqueue_many(storage, [(name, version)], host),
    )
    monkeypatch.setattr(publishing, "enqueue_many", enqueue_many)


@pytest.fixture
def slow_broker(monkeypatch):
    """enqueue() and enqueue_many() block until released, and record each message's names."""
    release = threading.Event()
    sent: list[tuple[list[str], str]] = []

    def enqueue_many(storage, files, host=None):
        release.wait(10)
        sent.append(([name for name, _ in files], threading.current_thread().name))
        return True

    _broker(monkeypatch, enqueue_many)
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
    assert [name for names_, _ in sent for name in names_] == names  # all, in commit order
    assert {thread for _, thread in sent} == {"queued_storage publisher"}


def test_a_burst_of_small_saves_goes_out_in_fewer_messages(make, settings, slow_broker, monkeypatch):
    release, sent = slow_broker
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    monkeypatch.setattr(publishing, "BATCH_MAX_SIZE", 100)
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(24)]
    large = storage.save("large.bin", ContentFile(b"x" * 101))
    release.set()
    assert publishing.flush(5) is True
    # The first message holds what came within LINGER; the rest queued meanwhile.
    small = [batch for batch, _ in sent if batch != [large]]
    assert [name for batch in small for name in batch] == names
    assert all(len(batch) <= 10 for batch in small)
    assert len(small) <= 4  # 1 + ceil(23 / 10) at most, instead of 24
    assert [large] in [batch for batch, _ in sent]  # a large file travels alone


def test_a_large_file_waits_settle_off_the_saving_thread(make, settings, monkeypatch):
    sent: list[list[str]] = []
    _broker(monkeypatch, lambda storage, files, host=None: sent.append([n for n, _ in files]) or True)
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    monkeypatch.setattr(publishing, "BATCH_MAX_SIZE", 100)
    monkeypatch.setattr(publishing, "SETTLE", 2.0)  # well beyond the first flush below
    storage = make()
    large = storage.save("large.bin", ContentFile(b"x" * 101))
    assert publishing.flush(0.05) is False  # held, not sent while save()'s caller goes on
    assert publishing.flush(10) is True
    assert sent == [[large]]  # and alone


def test_a_large_file_does_not_wait_for_a_burst(make, settings, monkeypatch):
    sent: list[list[str]] = []
    _broker(monkeypatch, lambda storage, files, host=None: sent.append([n for n, _ in files]) or True)
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    monkeypatch.setattr(publishing, "BATCH_MAX_SIZE", 100)
    monkeypatch.setattr(publishing, "LINGER", 60.0)  # a flush that waited for it would time out
    storage = make()
    large = storage.save("large.bin", ContentFile(b"x" * 101))
    assert publishing.flush(10) is True
    assert sent == [[large]]


def test_batch_files_one_sends_each_file_alone(make, settings, slow_broker):
    release, sent = slow_broker
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    settings.QUEUED_STORAGE_BATCH_FILES = 1
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(5)]
    release.set()
    assert publishing.flush(5) is True
    assert [batch for batch, _ in sent] == [[name] for name in names]


def test_a_bad_batch_setting_loses_nothing(make, settings, slow_broker):
    release, sent = slow_broker
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    settings.QUEUED_STORAGE_BATCH_FILES = 0  # check E007 names it; the default applies meanwhile
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(5)]
    release.set()
    assert publishing.flush(5) is True
    assert sorted(name for batch, _ in sent for name in batch) == sorted(names)
    assert all(len(batch) <= 10 for batch, _ in sent)


def test_coalesce_groups_small_files_by_storage_and_host(make, tmp_path):
    one = make()
    other = make(local_options={"location": str(tmp_path / "other"), "base_url": "/other/"})
    big = publishing.BATCH_MAX_SIZE + 1
    messages = [
        (one, "a", "1", "web1", 10),
        (other, "b", "1", "web1", 10),
        (one, "c", "1", "web2", 10),
        (one, "d", "1", "web1", big),
        (one, "e", "1", "web1", None),
        (one, "f", "1", "web1", 10),
    ] + [(one, f"n{i}", "1", "web1", 10) for i in range(10)]
    groups = [
        (storage.identity, [name for name, _ in files], host)
        for storage, files, host in publishing.coalesce(messages, 10)
    ]
    first = ["a", "f"] + [f"n{i}" for i in range(10 - 2)]
    assert groups == [
        (one.identity, first, "web1"),
        (other.identity, ["b"], "web1"),
        (one.identity, ["c"], "web2"),
        (one.identity, ["d"], "web1"),
        (one.identity, ["e"], "web1"),
        (one.identity, [f"n{i}" for i in range(10 - 2, 10)], "web1"),
    ]


def test_background_is_the_default(make, settings, slow_broker):
    release, sent = slow_broker
    del settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND  # tests/settings.py asks for inline
    assert publishing.mode() == (True, "the default")
    name = make().save("a.txt", ContentFile(b"x"))
    assert sent == []  # save() returned while the broker was still "busy"
    release.set()
    assert publishing.flush(5) is True
    assert sent == [([name], "queued_storage publisher")]


def test_the_setting_asks_for_inline(make, settings, slow_broker):
    release, sent = slow_broker
    release.set()
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = False
    assert publishing.mode() == (False, "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND is False")
    name = make().save("a.txt", ContentFile(b"x"))
    assert sent == [([name], threading.current_thread().name)]


@pytest.fixture
def uwsgi(monkeypatch):
    """Run as under uWSGI, with the options the test puts in the returned dict."""
    module = types.ModuleType("uwsgi")
    module.opt = {}
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    publishing.uwsgi_without_threads.cache_clear()
    yield module.opt
    publishing.uwsgi_without_threads.cache_clear()


@pytest.mark.parametrize(
    ("options", "background"),
    [
        ({}, False),
        ({"enable-threads": b"false"}, False),
        ({"threads": b"0"}, False),
        ({"enable-threads": True}, True),  # --enable-threads on the command line
        ({"enable-threads": b"true"}, True),  # enable-threads = true in an ini file
        ({"threads": b"4"}, True),  # --threads implies --enable-threads
        ({"enable-threads": [b"false", b"1"]}, True),  # given twice
    ],
)
def test_under_uwsgi_without_threads_saves_publish_inline(
    make, settings, slow_broker, uwsgi, caplog, options, background
):
    release, sent = slow_broker
    del settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND
    uwsgi.update(options)
    assert publishing.mode().background is background
    release.set()
    names = [make().save(f"{i}.txt", ContentFile(b"x")) for i in range(2)]
    assert publishing.flush(5) is True
    thread = "queued_storage publisher" if background else threading.current_thread().name
    assert [name for batch, _ in sent for name in batch] == names
    assert {sender for _, sender in sent} == {thread}
    said = [r.getMessage() for r in caplog.records if "--enable-threads" in r.getMessage()]
    assert len(said) == (0 if background else 1)  # once per process, not per save


def test_a_failing_message_does_not_stop_the_thread(make, settings, monkeypatch):
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    sent = []

    def enqueue_many(storage, files, host=None):
        if any(name == "bad.txt" for name, _ in files):
            raise RuntimeError("boom")
        sent.extend(name for name, _ in files)
        return True

    _broker(monkeypatch, enqueue_many)
    storage = make()
    storage.save("bad.txt", ContentFile(b"x"))
    assert publishing.flush(5) is True
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
    assert publishing.mode() == (
        False,
        "Celery runs tasks eagerly (task_always_eager), so a transfer runs within save()",
    )
    storage = make()
    name = storage.save("a.txt", ContentFile(b"x"))
    assert storage.status(name).state == "remote"  # transferred before save() returned


def test_every_way_of_turning_eager_on_or_off_is_seen_at_once(settings):
    """The eager answer is kept between saves, so each source of it must make it read again."""
    from .celery_app import app

    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    assert publishing.in_background() is True
    app.conf.task_always_eager = True  # app.conf, as the eager fixture does
    try:
        assert publishing.in_background() is False
        app.conf.task_always_eager = False
        assert publishing.in_background() is True
        app.conf.update(task_always_eager=True)
        assert publishing.in_background() is False
    finally:
        app.conf.task_always_eager = False
    assert publishing.in_background() is True
    settings.CELERY_TASK_ALWAYS_EAGER = True  # Django's settings, the layer under app.conf
    del app.conf.changes["task_always_eager"]
    assert publishing.in_background() is False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    assert publishing.in_background() is True
    for answer in (True, False):
        settings.CELERY_TASK_ALWAYS_EAGER = answer
        assert publishing.in_background() is (not answer) is (publishing.mode().background)


def test_an_app_whose_configuration_is_not_loaded_yet(settings):
    """As in a web process whose first save comes before anything read Celery's configuration."""
    from celery import Celery

    from .celery_app import app as project_app

    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    app = Celery("fresh", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.set_current()
    try:
        assert publishing.in_background() is True
        settings.CELERY_TASK_ALWAYS_EAGER = True
        assert publishing.in_background() is False
    finally:
        project_app.set_current()
