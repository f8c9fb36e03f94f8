"""A message of several files (the background publisher's bursts): each file as if alone."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from hypothesis import example, given
from hypothesis import strategies as st

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
    import threading

    from queued_storage import mover, transitions

    batch = mover.SWITCH_BATCH
    monkeypatch.setattr(mover, "MORE_FOR", 0.0)  # the message's own files alone: no commit that takes
    storage = make(delayed=True)
    files = _saved(storage, [f"{i:02d}.txt" for i in range(batch + 7)])
    task = resolve_task(storage.task)
    real_transfer, real_switch = task.transfer, transitions.switch_many
    switching = threading.Event()
    batches = []

    def transfer(name, local, remote, **kwargs):
        if name == f"{batch:02d}.txt":  # not copied before the first switch starts
            assert switching.wait(10)
        return real_transfer(name, local, remote, **kwargs)

    def switch_many(key, copies):
        batches.append([name for name, *_ in copies])
        if len(batches) == 1:  # the database makes it wait until every copy is done
            switching.set()
            wait_for(lambda: all(storage.remote.exists(name) for name, _ in files), 10, "every copy")
        return real_switch(key, copies)

    monkeypatch.setattr(task, "transfer", transfer)
    monkeypatch.setattr(transitions, "switch_many", switch_many)
    assert _run(storage, files) == f"remote: {batch + 7}"
    names = [name for name, _ in files]
    # A batch at a time; then every copy that finished while the first switch waited, at once.
    assert batches == [names[:batch], names[batch:]]
    assert all(storage.url(name).startswith("/remote/") for name in names)


def test_a_copy_does_not_wait_for_a_slow_one_to_be_switched(make, eager, monkeypatch):
    """A batch that does not fill is switched SWITCH_WITHIN after its first copy landed."""
    from queued_storage import mover

    monkeypatch.setattr(mover, "SWITCH_WITHIN", 0.05)
    storage = make(delayed=True)
    files = _saved(storage, ["fast.txt", "slow.txt"])
    task = resolve_task(storage.task)
    real_transfer = task.transfer

    def transfer(name, local, remote, **kwargs):
        if name == "slow.txt":  # a long copy: the one before it is readable remotely meanwhile
            wait_for(lambda: storage.status("fast.txt").state == "remote", 5, "fast.txt switched")
        return real_transfer(name, local, remote, **kwargs)

    monkeypatch.setattr(task, "transfer", transfer)
    assert _run(storage, files) == "remote: 2"


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


# -- files waiting in the table, taken after the message's own


@pytest.fixture
def lost(monkeypatch):
    """Saves whose messages never reach a worker: their files wait in the table, pending."""
    from queued_storage import publishing

    sent = []
    monkeypatch.setattr(
        publishing, "_publish", lambda storage, files, host, options: sent.append(files) or True
    )
    return sent


def _waiting(storage, names, **fields):
    """Save ``names`` (their messages lost); ``fields`` then set on their records."""
    files = _saved(storage, names)
    if fields:
        FileRecord.objects.filter(storage=storage.identity, name__in=[n for n, _ in files]).update(**fields)
    return files


def _states(storage, files):
    return {name: storage.status(name).state for name, _ in files}


def test_a_message_goes_on_to_small_files_waiting_on_its_host(make, eager, lost):
    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    waiting = _waiting(storage, [f"w{i}.txt" for i in range(3)])
    assert _run(storage, files) == "remote: 5"
    assert set(_states(storage, files + waiting).values()) == {"remote"}
    assert all(storage.url(name).startswith("/remote/") for name, _ in waiting)
    # Their own messages, when they come, find them done.
    assert _run(storage, waiting) == "done: 3"


def test_only_untried_small_files_of_the_same_storage_and_host_are_taken(make, eager, lost):
    from django.utils import timezone

    from queued_storage.conf import SMALL_FILE

    storage = make()
    other = make(remote_options={"location": str(storage.local.location) + "-other-remote"})
    assert other.identity != storage.identity
    files = _saved(storage, ["a.txt"]) + _saved(storage, ["b.txt"])
    taken = _waiting(storage, ["small.txt"])
    left = (
        _waiting(storage, ["elsewhere.txt"], host="another-host")
        + _waiting(storage, ["retrying.txt"], attempts=1)  # its retry keeps its backoff
        + _waiting(storage, ["unsized.txt"], size=None)
        + _waiting(storage, ["large.txt"], size=SMALL_FILE + 1)
        + _waiting(storage, ["failed.txt"], state="failed", attempts=1)
        + _waiting(storage, ["held.txt"], state="transferring", lease_until=timezone.now())
    )
    elsewhere = _waiting(other, ["other-storage.txt"])
    assert _run(storage, files) == "remote: 3"
    assert _states(storage, taken) == {"small.txt": "remote"}
    assert "remote" not in _states(storage, left).values()
    assert _states(other, elsewhere) == {"other-storage.txt": "pending"}


def test_nothing_more_is_taken_when_the_message_s_copies_fail(make, eager, lost, settings):
    settings.QUEUED_STORAGE_RETRIES = 0
    storage = make(task="tests.testapp.tasks.FailsOnBad")
    files = _saved(storage, ["bad1.txt", "bad2.txt"])
    waiting = _waiting(storage, ["w1.txt", "w2.txt"])
    assert _run(storage, files) == "failed: 2"
    assert set(_states(storage, waiting).values()) == {"pending"}


@pytest.mark.parametrize(("retries", "bad"), [(0, "failed"), (2, "left")])
def test_taking_stops_at_the_first_failure_among_the_waiting_files(
    make, eager, lost, settings, monkeypatch, retries, bad
):
    from queued_storage import mover

    monkeypatch.setattr(mover, "CLAIM_CHUNK", 2)  # two waiting files claimed at a time after the message
    settings.QUEUED_STORAGE_RETRIES = retries  # failed for good, or left to its own message
    storage = make(task="tests.testapp.tasks.FailsOnBad")
    files = _saved(storage, ["a.txt", "b.txt"])
    waiting = _waiting(storage, ["bad.txt", "w1.txt", "w2.txt", "w3.txt", "w4.txt"])
    # The files claimed with bad.txt, or while its copy ran, are given back untried.
    assert _run(storage, files) == f"{bad}: 1, remote: 2"
    assert _states(storage, waiting) == {
        "bad.txt": "failed" if bad == "failed" else "pending",
        "w1.txt": "pending",
        "w2.txt": "pending",
        "w3.txt": "pending",
        "w4.txt": "pending",
    }
    rows = FileRecord.objects.filter(storage=storage.identity, name__startswith="w")
    assert {(r.attempts, r.lease_until, r.last_error) for r in rows} == {(0, None, "")}
    # Never tried, so the next message that goes on takes them; bad.txt waits for its own.
    assert _run(storage, _saved(storage, ["c.txt", "d.txt"])) == "remote: 6"
    assert _states(storage, waiting)["bad.txt"] == ("failed" if bad == "failed" else "pending")


def test_a_file_given_back_after_a_failure_but_deleted_meanwhile_is_removed(make, eager, lost, monkeypatch):
    from queued_storage import mover

    monkeypatch.setattr(mover, "CLAIM_CHUNK", 2)
    storage = make(task="tests.testapp.tasks.FailsOnBad")
    task = resolve_task(storage.task)
    real = task.transfer

    def transfer(name, local, remote, **kwargs):
        if name == "bad.txt":  # w.txt, claimed with it and queued behind it, is deleted meanwhile
            storage.delete("w.txt")
        return real(name, local, remote, **kwargs)

    monkeypatch.setattr(task, "transfer", transfer)
    files = _saved(storage, ["a.txt", "b.txt"])
    _waiting(storage, ["bad.txt", "w.txt"])
    assert _run(storage, files) == "gone: 1, left: 1, remote: 2"
    assert not FileRecord.objects.filter(storage=storage.identity, name="w.txt").exists()
    assert not storage.local.exists("w.txt") and not storage.remote.exists("w.txt")


def test_what_became_of_each_file_is_reported_before_a_later_step_fails(make, eager, monkeypatch):
    import threading

    from queued_storage import mover, transitions
    from queued_storage.signals import file_transferred

    monkeypatch.setattr(mover, "SWITCH_BATCH", 5)
    storage = make(delayed=True)
    files = _saved(storage, [f"{i:02d}.txt" for i in range(12)])
    task = resolve_task(storage.task)
    real_transfer, real_switch = task.transfer, transitions.switch_many
    first_switched = threading.Event()
    switches = []

    def transfer(name, local, remote, **kwargs):
        if name == "05.txt":  # copied once the first five are switched
            assert first_switched.wait(10)
        return real_transfer(name, local, remote, **kwargs)

    def switch_many(key, copies):
        switches.append([name for name, *_ in copies])
        if len(switches) == 2:
            raise RuntimeError("the database went away")
        try:
            return real_switch(key, copies)
        finally:
            first_switched.set()

    transferred = []

    def on_transferred(sender, name, **kwargs):
        transferred.append(name)

    monkeypatch.setattr(task, "transfer", transfer)
    monkeypatch.setattr(transitions, "switch_many", switch_many)
    file_transferred.connect(on_transferred)
    try:
        result = resolve_task(storage.task).apply(args=(storage.identity,), kwargs={"files": files})
    finally:
        file_transferred.disconnect(on_transferred)
    assert isinstance(result.result, RuntimeError) and len(switches) == 2
    # The first batch switched: its files are remote, and said so, though the task failed after.
    names = [name for name, _ in files]
    assert switches[0] == names[:5] and transferred == names[:5]
    assert {storage.status(name).state for name in names[:5]} == {"remote"}


def test_a_message_whose_files_were_taken_already_goes_on_one_file_first(make, eager, lost, monkeypatch):
    from queued_storage import transitions

    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    assert _run(storage, files) == "remote: 2"
    waiting = _waiting(storage, [f"w{i}.txt" for i in range(4)])
    asked = []
    real = transitions.take_waiting
    monkeypatch.setattr(
        transitions, "take_waiting", lambda *a, most, **k: asked.append(most) or real(*a, most=most, **k)
    )
    # The message of a and b comes now, stale: nothing of its own to copy.
    assert _run(storage, files) == "done: 2, remote: 4"
    assert set(_states(storage, waiting).values()) == {"remote"}
    assert asked[:2] == [1, 50]  # one until a copy has landed, then a chunk


def test_going_on_each_commit_switches_a_batch_and_takes_enough_to_keep_the_queue_full(
    make, eager, lost, monkeypatch
):
    """One commit (one wait for the write lock) per batch switched, the next take in it, TAKE_AHEAD queued."""
    from contextlib import contextmanager

    from queued_storage import mover, transitions

    monkeypatch.setattr(mover, "SWITCH_WITHIN", 60.0)  # batches fill by count alone, however slow the run
    monkeypatch.setattr(mover, "MORE_FOR", 60.0)
    monkeypatch.setattr(mover, "AHEAD_SECONDS", 60.0)  # so the queue's depth is TAKE_AHEAD, whatever the pace
    # Smaller than by default, as many steps: fewer files to copy.
    monkeypatch.setattr(mover, "SWITCH_BATCH", 5)
    monkeypatch.setattr(mover, "CLAIM_CHUNK", 10)
    monkeypatch.setattr(mover, "TAKE_AHEAD", 20)
    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    count = 3 * mover.TAKE_AHEAD
    waiting = _waiting(storage, [f"w{i:03d}.txt" for i in range(count)])
    real_commit, real_switch = transitions.one_commit, transitions.switch_many
    real_take = transitions.take_waiting
    open_commits: list[list[int]] = []
    commits: list[tuple[int, int]] = []  # (switched, taken) in each commit of the mover

    @contextmanager
    def one_commit():
        open_commits.append([0, 0])
        with real_commit():
            yield
        switched, taken = open_commits.pop()
        commits.append((switched, taken))

    def switch_many(key, copies):
        assert open_commits, "a switch outside the mover's commits"
        open_commits[-1][0] += len(copies)
        return real_switch(key, copies)

    def take_waiting(*args, **kwargs):
        assert open_commits, "a take outside the mover's commits"
        taken = real_take(*args, **kwargs)
        open_commits[-1][1] += len(taken)
        return taken

    monkeypatch.setattr(transitions, "one_commit", one_commit)
    monkeypatch.setattr(transitions, "switch_many", switch_many)
    monkeypatch.setattr(transitions, "take_waiting", take_waiting)
    assert _run(storage, files) == f"remote: {count + 2}"
    assert set(_states(storage, waiting).values()) == {"remote"}
    # Every take rides on a commit that switches: no wait for the lock of its own.
    assert all(switched for switched, taken in commits if taken)
    assert len(commits) <= -(-(count + 2) // mover.SWITCH_BATCH) + 2
    # After each commit, until the table is empty, the queue is back at its depth:
    # the upload thread has those to copy while the next commit waits.
    queued, taken_in_all, full = 2, 0, []
    for switched, taken in commits:
        queued += taken - switched
        taken_in_all += taken
        if taken_in_all < count:
            full.append(queued)
    assert full[2:] and set(full[2:]) == {mover.TAKE_AHEAD}, commits


@given(pace=st.floats(0.0, 120.0))
@example(pace=2.2250738585e-313)  # found by Hypothesis: AHEAD_SECONDS / pace overflowed
def test_the_queue_holds_a_batch_and_ahead_seconds_of_copying_at_most_take_ahead_files(pace: float) -> None:
    from queued_storage.mover import AHEAD_SECONDS, SWITCH_BATCH, TAKE_AHEAD, queue_depth

    depth = queue_depth(pace)
    assert SWITCH_BATCH < depth <= TAKE_AHEAD
    if depth < TAKE_AHEAD:  # enough to copy while a commit waits that long
        assert (depth - SWITCH_BATCH) * pace >= AHEAD_SECONDS
    assert queue_depth(pace * 2) <= depth  # slower copies, fewer files queued


def test_a_stale_message_fails_one_waiting_file_when_the_remote_fails(make, eager, lost, settings):
    settings.QUEUED_STORAGE_RETRIES = 0
    storage = make(task="tests.testapp.tasks.FailsOnBad")
    files = _saved(storage, ["a.txt", "b.txt"])
    assert _run(storage, files) == "remote: 2"
    waiting = _waiting(storage, ["bad1.txt", "bad2.txt", "w.txt"])
    assert _run(storage, files) == "done: 2, failed: 1"
    assert _states(storage, waiting) == {"bad1.txt": "failed", "bad2.txt": "pending", "w.txt": "pending"}


def test_a_message_for_a_name_saved_again_on_another_host_takes_nothing_of_that_host(make, eager, lost):
    """The message came from this host's queue; the newer save, and what waits there, is another's."""
    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    assert _run(storage, files) == "remote: 2"
    FileRecord.objects.filter(storage=storage.identity).update(version="newer", host="another-host")
    waiting = _waiting(storage, ["w.txt"], host="another-host")
    assert _run(storage, files) == "gone: 2"
    assert _states(storage, waiting) == {"w.txt": "pending"}


def test_a_waiting_file_that_fails_is_left_to_its_own_message(make, eager, lost, settings):
    """No retry chain of its own: its message, still to come, is the one that retries it."""
    settings.QUEUED_STORAGE_RETRIES = 2
    storage = make(task="tests.testapp.tasks.FailsOnBad")
    files = _saved(storage, ["a.txt", "b.txt"])
    waiting = _waiting(storage, ["bad.txt"])
    lost.clear()
    assert _run(storage, files) == "left: 1, remote: 2"
    assert lost == []  # no retry message sent for it
    record = FileRecord.objects.get(storage=storage.identity, name="bad.txt")
    assert (record.state, record.attempts) == ("pending", 1) and "returned False" in record.last_error
    # Its own message comes: from there on it retries as a file of that message.
    assert _run(storage, waiting) == "retrying: 1"
    assert lost == [[("bad.txt", waiting[0][1])]]


def test_a_delayed_storage_s_files_are_taken_only_once_transfer_queued_them(make, eager, lost):
    from django.utils import timezone

    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "b.txt"])
    never = _saved(storage, ["not-yet.txt"])
    queued = _waiting(storage, ["queued.txt"], queued_at=timezone.now())
    assert _run(storage, files) == "remote: 3"
    assert _states(storage, never + queued) == {"not-yet.txt": "pending", "queued.txt": "remote"}


def test_a_one_file_message_takes_nothing_more(make, eager, lost):
    from .conftest import transfer_now

    storage = make()
    (name, _), *_ = _saved(storage, ["a.txt"])
    waiting = _waiting(storage, ["w.txt"])
    assert transfer_now(storage, name) == "remote"
    assert _states(storage, waiting) == {"w.txt": "pending"}


def test_taking_more_ends_after_more_for_seconds(make, eager, lost, monkeypatch):
    from queued_storage import mover

    monkeypatch.setattr(mover, "MORE_FOR", 0.0)
    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    waiting = _waiting(storage, ["w.txt"])
    assert _run(storage, files) == "remote: 2"
    assert _states(storage, waiting) == {"w.txt": "pending"}


def test_a_waiting_file_another_worker_took_first_is_left_to_it(make, eager, lost, monkeypatch):
    from queued_storage import transitions

    storage = make()
    files = _saved(storage, ["a.txt", "b.txt"])
    waiting = _waiting(storage, ["w.txt"])
    real = transitions.take_waiting

    def raced(*args, **kwargs):
        real(*args, **{**kwargs, "owner": "other@worker"})  # another worker takes them first
        return real(*args, **kwargs)

    monkeypatch.setattr(transitions, "take_waiting", raced)
    assert _run(storage, files) == "remote: 2"  # no outcome for w.txt: it was never this message's
    assert _states(storage, waiting) == {"w.txt": "transferring"}
    assert not storage.remote.exists("w.txt")


def test_the_files_another_worker_holds_go_back_in_one_message(make, eager, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from queued_storage import publishing

    sent = []
    monkeypatch.setattr(
        publishing, "_publish", lambda storage, files, host, options: sent.append((files, options)) or True
    )
    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "held1.txt", "held2.txt", "b.txt"])
    now = timezone.now()
    for name, seconds in (("held1.txt", 30), ("held2.txt", 90)):  # another worker's leases
        FileRecord.objects.filter(storage=storage.identity, name=name).update(
            state="transferring", lease_until=now + timedelta(seconds=seconds)
        )
    assert _run(storage, files) == "remote: 2, requeued: 2"
    ((back, options),) = sent
    assert back == [tuple(files[1]), tuple(files[2])]
    # For when the later of the two leases would have lapsed.
    assert 90 <= options["countdown"] <= 92


def test_what_a_failing_switch_reached_before_it_raised_is_reported(make, eager, monkeypatch):
    from queued_storage.mover import Mover
    from queued_storage.signals import file_transferred

    storage = make(delayed=True)
    files = _saved(storage, [f"{i}.txt" for i in range(3)])
    real = Mover._settle
    settled = []

    def settle(self, name, *args, **kwargs):
        settled.append(name)
        if len(settled) == 3:
            raise RuntimeError("the cache went away")
        return real(self, name, *args, **kwargs)

    transferred = []

    def on_transferred(sender, name, **kwargs):
        transferred.append(name)

    monkeypatch.setattr(Mover, "_settle", settle)
    file_transferred.connect(on_transferred)
    try:
        result = resolve_task(storage.task).apply(args=(storage.identity,), kwargs={"files": files})
    finally:
        file_transferred.disconnect(on_transferred)
    assert isinstance(result.result, RuntimeError)
    assert transferred == ["0.txt", "1.txt"]  # settled in the step that then raised


def test_a_receiver_that_raises_stops_neither_the_message_nor_its_other_files(make, eager, caplog):
    from queued_storage.signals import file_transferred

    storage = make(delayed=True)
    files = _saved(storage, ["a.txt", "b.txt", "c.txt"])
    heard = []

    def receiver(sender, name, **kwargs):
        heard.append(name)
        if name == "a.txt":
            raise ValueError(f"receiver bug on {name} https://user:hunter2@example.com/")

    file_transferred.connect(receiver)
    try:
        assert _run(storage, files) == "remote: 3"
    finally:
        file_transferred.disconnect(receiver)
    assert heard == ["a.txt", "b.txt", "c.txt"]
    logged = [r.getMessage() for r in caplog.records if "a receiver of a signal" in r.getMessage()]
    assert len(logged) == 1 and "receiver bug on a.txt" in logged[0] and "Traceback" in logged[0]
    assert "hunter2" not in caplog.text
