"""A message of several files (the background publisher's bursts): each file as if alone."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from queued_storage.models import FileRecord
from queued_storage.publishing import resolve_task

from .conftest import wait_for
from .testapp.tasks import Watched

pytestmark = pytest.mark.django_db(transaction=True)


def _saved(storage, names):
    """Save ``names`` without queueing them (delayed), and return their [name, version] pairs."""
    files = []
    for name in names:
        stored = storage.save(name, ContentFile(name.encode() * 10))
        files.append([stored, FileRecord.objects.get(storage=storage.identity, name=stored).version])
    return files


def _run(storage, files):
    return resolve_task(storage.task).apply(args=(storage.identity,), kwargs={"files": files}).get()


def test_every_file_of_a_message_is_transferred_and_switched(make, eager):
    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "b.txt", "c.txt"])
    files.append(["gone.txt", "no-such-version"])
    assert _run(storage, files) == "gone: 1, remote: 3"
    for name, _ in files[:3]:
        status = storage.status(name)
        assert (status.state, status.attempts) == ("remote", 1)
        with storage.remote.open(name) as fh:
            assert fh.read() == name.encode() * 10
        assert storage.url(name).startswith("/remote/")
    from queued_storage import threads

    assert not threads.lease_keeper().kept()  # each lease renewed only while its file copies


def test_a_second_delivery_finds_them_done(make, eager):
    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "b.txt"])
    _run(storage, files)
    assert _run(storage, files) == "done: 2"  # redelivered after a worker died: nothing copied twice


def test_a_failing_file_retries_alone_and_the_others_are_done(make, eager, settings):
    settings.QUEUED_STORAGE_RETRIES = 2
    storage = make(delayed=True, task="tests.testapp.tasks.FailsOnBad")
    files = _saved(storage, ["a.txt", "bad.txt", "c.txt"])
    assert _run(storage, files) == "remote: 2, retrying: 1"
    assert [storage.status(n).state for n, _ in files] == ["remote", "failed", "remote"]
    bad = storage.status("bad.txt")
    # The batch's attempt counts: 1 in the batch, then RETRIES one-file retries.
    assert bad.attempts == 3 and "returned False" in bad.last_error


def test_a_vanished_local_file_fails_at_once_without_stopping_the_rest(make, eager):
    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "lost.txt", "c.txt"])
    storage.local.delete("lost.txt")
    assert _run(storage, files) == "failed: 1, remote: 2"
    lost = storage.status("lost.txt")
    assert (lost.state, lost.attempts) == ("failed", 1) and "is gone" in lost.last_error


def test_one_copy_at_a_time_in_one_upload_thread(make, eager):
    Watched.running = Watched.most = 0
    Watched.threads.clear()
    Watched.task_ids.clear()
    storage = make(delayed=True, task="tests.testapp.tasks.Watched")
    files = _saved(storage, [f"{i}.txt" for i in range(6)])
    result = resolve_task(storage.task).apply(args=(storage.identity,), kwargs={"files": files})
    assert result.get() == "remote: 6"
    assert Watched.most == 1  # the same parallelism towards the remote as a one-file task
    assert len(Watched.threads) == 1 and next(iter(Watched.threads)).startswith("queued_storage upload")
    assert Watched.task_ids == {result.id}  # the hook sees the message's request there too


def test_copies_are_switched_in_batches_while_the_next_one_copies(make, eager, monkeypatch):
    from queued_storage import transitions

    storage = make(delayed=True)
    files = _saved(storage, [f"{i}.txt" for i in range(7)])
    batches = []
    real = transitions.switch_many

    def switch_many(key, copies):
        batches.append([name for name, *_ in copies])
        return real(key, copies)

    monkeypatch.setattr(transitions, "switch_many", switch_many)
    assert _run(storage, files) == "remote: 7"
    assert batches == [["0.txt", "1.txt", "2.txt", "3.txt", "4.txt"], ["5.txt", "6.txt"]]
    assert all(storage.url(name).startswith("/remote/") for name, _ in files)


def test_delete_local_applies_to_each_file(make, eager):
    storage = make(delayed=True, delete_local=True)
    files = _saved(storage, ["a.txt", "b.txt"])
    assert _run(storage, files) == "remote: 2"
    assert not any(storage.local.exists(name) for name, _ in files)


def test_a_forked_child_gets_its_own_upload_thread_and_lease_keeper():
    import os

    from queued_storage import threads

    parent = threads.upload_executor()
    assert parent.submit(lambda: 1).result(5) == 1
    parent_keeper = threads.lease_keeper()
    pid = os.fork()
    if pid == 0:  # the parent's threads do not exist here; new ones must be started
        ok = False
        try:
            child = threads.upload_executor()
            ok = child is not parent and child.submit(lambda: 2).result(5) == 2
            keeper = threads.lease_keeper()
            ok = ok and keeper is not parent_keeper and keeper.is_alive()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_database_error_stops_the_message_and_leaves_the_rest_to_the_sweeper(make, eager, monkeypatch):
    import threading

    from queued_storage import mover, threads, transitions

    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "b.txt", "c.txt"])
    task = resolve_task(storage.task)
    real_transfer = task.transfer
    copying_b, release_b = threading.Event(), threading.Event()

    def transfer(name, local, remote, **kwargs):
        if name == "b.txt":  # still copying when a's switch fails; c waits behind it
            copying_b.set()
            release_b.wait(10)
        return real_transfer(name, local, remote, **kwargs)

    def down(*args, **kwargs):
        assert copying_b.wait(10)
        raise RuntimeError("database went away")

    monkeypatch.setattr(task, "transfer", transfer)
    monkeypatch.setattr(transitions, "switch_many", down)
    monkeypatch.setattr(mover, "SWITCH_BATCH", 1)  # a's switch fails while b copies
    try:
        result = task.apply(args=(storage.identity,), kwargs={"files": files})
    finally:
        release_b.set()
    assert result.failed() and "database went away" in str(result.result)
    threads.upload_executor().submit(lambda: None).result(5)  # whatever was running has finished
    assert storage.remote.exists("b.txt")  # its copy ran to its end, unswitched
    assert not storage.remote.exists("c.txt")  # queued, never started once the message failed
    # Still claimed: the leases lapse and the sweeper queues them again.
    assert {storage.status(name).state for name, _ in files} == {"transferring"}
    assert not threads.lease_keeper().kept()  # no longer renewed


def test_a_switch_waiting_for_the_database_holds_no_copy_back(make, eager, monkeypatch):
    """The copies run back to back while a switch waits (SQLite's write lock, held by saves)."""
    from queued_storage import transitions

    storage = make(delayed=True)
    files = _saved(storage, [f"{i}.txt" for i in range(8)])
    real = transitions.switch_many
    copied_while_waiting = []

    def slow_switch_many(key, copies):
        if not copied_while_waiting:  # the first switch waits until every file is copied
            wait_for(lambda: all(storage.remote.exists(name) for name, _ in files), 10, "every copy")
            copied_while_waiting.append(True)
        return real(key, copies)

    monkeypatch.setattr(transitions, "switch_many", slow_switch_many)
    assert _run(storage, files) == "remote: 8"
    assert copied_while_waiting == [True]
