"""The sweeper (``queued_storage requeue``, and each worker's own): what it queues, how often, how much
it holds at once, and that the workers' sweeps take turns."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connection, connections
from django.utils import timezone

from queued_storage import lock, operations, threads, transitions
from queued_storage.models import FileRecord
from queued_storage.tasks import LOST_AFTER, requeue, sweep, sweep_in_turn

pytestmark = pytest.mark.django_db(transaction=True)

LONG_AGO = timedelta(minutes=10)


def sent(broker: Any) -> list[str]:
    """The name of every file in every transfer message waiting in the broker."""
    names: list[str] = []
    for raw in broker.lrange("celery", 0, -1):
        args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        names += [name for name, _ in kwargs["files"]] if "files" in kwargs else [args[1]]
    return names


def untouched_for_long(**fields: Any) -> None:
    """Every record was last changed (and, with ``queued_at``, queued) ten minutes ago."""
    FileRecord.objects.update(updated_at=timezone.now() - LONG_AGO, **fields)


def test_three_runs_send_one_message_per_file_and_one_more_after_the_threshold(make, broker):
    storage = make()
    names = [storage.save(f"sweep/{i}.txt", ContentFile(b"s")) for i in range(3)]
    broker.flushdb()  # the saves' own messages: lost with the broker, say
    untouched_for_long()

    assert [requeue(300) for _ in range(3)] == [3, 0, 0]
    assert sorted(sent(broker)) == sorted(names)

    untouched_for_long(queued_at=timezone.now() - LONG_AGO)  # the threshold passed
    assert requeue(300) == 3
    assert sorted(sent(broker)) == sorted(names * 2)


def test_a_file_stuck_with_a_dead_worker_is_queued_once_per_threshold(make, broker):
    storage = make()
    name = storage.save("sweep/stuck.bin", ContentFile(b"s"))
    record = transitions.get(storage.identity, name)
    assert record is not None
    transitions.claim(storage.identity, name, record.version, owner="dead")
    broker.flushdb()
    untouched_for_long(lease_until=timezone.now() - timedelta(seconds=1))

    assert [requeue(300) for _ in range(3)] == [1, 0, 0]
    assert sent(broker) == [name]


def test_two_sweepers_at_once_queue_each_file_once(make):
    storage = make()
    pending = storage.save("sweep/pending.txt", ContentFile(b"p"))
    failed = storage.save("sweep/failed.txt", ContentFile(b"f"))
    FileRecord.objects.filter(name=failed).update(state="failed", last_error="boom")
    untouched_for_long()
    # The second sweeper read the same rows before the first one stamped them.
    read_by_both = list(FileRecord.objects.order_by("pk"))

    first = [record.name for chunk in transitions.stale(300, failed=True) for record in chunk]
    second = transitions.stale(300, failed=True)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(transitions, "chunked", lambda records, size=None: iter([read_by_both]))
        assert list(second) == []

    assert sorted(first) == sorted([pending, failed])
    assert FileRecord.objects.get(name=failed).state == "pending"


def test_a_delayed_file_is_swept_only_once_transfer_was_called(make, broker):
    storage = make(delayed=True)
    name = storage.save("sweep/delayed.txt", ContentFile(b"d"))
    untouched_for_long()

    assert requeue(300) == 0
    assert sent(broker) == []

    assert storage.transfer(name)
    assert sent(broker) == [name]
    broker.flushdb()  # that message was lost
    untouched_for_long(queued_at=timezone.now() - LONG_AGO)
    assert requeue(300) == 1
    assert sent(broker) == [name]


@contextmanager
def rows_per_query(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of records built from each query's rows, query by query."""
    counts: list[int] = []
    from_db = FileRecord.from_db

    def counting(cls: type[FileRecord], *args: Any, **kwargs: Any) -> FileRecord:
        counts[-1] += 1
        return from_db(*args, **kwargs)  # Django 6.1 passes fetch_mode

    def wrapper(execute: Callable[..., Any], *args: Any) -> Any:
        counts.append(0)
        return execute(*args)

    monkeypatch.setattr(FileRecord, "from_db", classmethod(counting))
    with connection.execute_wrapper(wrapper):
        yield counts


def test_the_sweeper_reads_the_backlog_a_chunk_at_a_time(make, broker, monkeypatch):
    monkeypatch.setattr(transitions, "CHUNK", 3)
    storage = make()
    names = [storage.save(f"sweep/backlog/{i}.txt", ContentFile(b"b")) for i in range(10)]
    broker.flushdb()
    untouched_for_long()

    with rows_per_query(monkeypatch) as counts:
        assert requeue(300) == 10

    assert max(counts) == 3
    assert sorted(sent(broker)) == sorted(names)


def test_cleanup_local_reads_its_candidates_a_chunk_at_a_time(make, monkeypatch):
    monkeypatch.setattr(transitions, "CHUNK", 3)
    storage = make()
    long_ago = timezone.now() - timedelta(days=30)
    FileRecord.objects.bulk_create(
        FileRecord(
            storage=storage.identity,
            name=f"old/{i}.txt",
            state="remote",
            version="v",
            transferred_at=long_ago,
        )
        for i in range(10)
    )

    with rows_per_query(monkeypatch) as counts:
        outcome = operations.cleanup_local(operations.cleanup_candidates(7), dry_run=True)

    assert max(counts) == 3
    assert outcome.considered == 10
    assert sorted(outcome.skipped["without a local copy"]) == sorted(f"old/{i}.txt" for i in range(10))


def claimed_by_a_dead_worker(storage: Any, name: str, seconds_ago: float) -> None:
    """``name`` is transferring, claimed ``seconds_ago`` by a worker that died then (its lease lapsed)."""
    record = transitions.get(storage.identity, name)
    assert record is not None
    transitions.claim(storage.identity, name, record.version, owner="dead")
    then = timezone.now() - timedelta(seconds=seconds_ago)
    FileRecord.objects.filter(name=name).update(
        updated_at=then, lease_until=then + timedelta(seconds=seconds_ago - 1)
    )


def test_a_dead_workers_file_is_queued_after_lapsed_for_and_a_pending_one_after_older_than(make, broker):
    storage = make()
    stuck = storage.save("sweep/stuck.bin", ContentFile(b"s"))
    pending = storage.save("sweep/pending.txt", ContentFile(b"p"))
    broker.flushdb()
    claimed_by_a_dead_worker(storage, stuck, seconds_ago=10)
    FileRecord.objects.filter(name=pending).update(updated_at=timezone.now() - timedelta(seconds=10))

    # One message per file per threshold, however often the sweep runs.
    assert [requeue_once(lapsed_for=6) for _ in range(3)] == [1, 0, 0]
    assert sent(broker) == [stuck]
    FileRecord.objects.filter(name=stuck).update(queued_at=timezone.now() - timedelta(seconds=7))
    assert [requeue_once(lapsed_for=6) for _ in range(2)] == [1, 0]
    assert sent(broker) == [stuck, stuck]
    assert requeue_once(lapsed_for=6, older_than=9) == 1  # the pending one, at its own threshold
    assert sorted(sent(broker)) == sorted([stuck, stuck, pending])


def requeue_once(*, lapsed_for: float, older_than: float = 300) -> int:
    return sweep(older_than, lapsed_for=lapsed_for).queued


def test_a_sweep_that_lost_its_lock_stops_after_the_chunk_it_took(make, broker, monkeypatch):
    monkeypatch.setattr(transitions, "CHUNK", 3)
    storage = make()
    names = [storage.save(f"sweep/lost/{i}.txt", ContentFile(b"b")) for i in range(7)]
    broker.flushdb()
    untouched_for_long()
    asked = []

    def held() -> bool:
        asked.append(True)
        return False  # another process took the sweep over at once

    assert sweep(300, held=held).queued == 3  # the chunk it had stamped is sent, not dropped
    assert asked
    assert sweep(300).queued == 4  # the rest were left for the next sweep, not stamped
    assert sorted(sent(broker)) == sorted(names)


def test_the_workers_sweep_queues_a_dead_workers_file_once_its_lease_lapsed(make, broker, settings):
    settings.QUEUED_STORAGE_LEASE = 6
    storage = make()
    stuck = storage.save("sweep/stuck.bin", ContentFile(b"s"))
    pending = storage.save("sweep/pending.txt", ContentFile(b"p"))
    broker.flushdb()
    claimed_by_a_dead_worker(storage, stuck, seconds_ago=7)
    FileRecord.objects.filter(name=pending).update(updated_at=timezone.now() - timedelta(seconds=7))

    assert sweep_in_turn(lambda: True).queued == 1
    assert sent(broker) == [stuck]  # the pending one's message may still be on its way
    FileRecord.objects.filter(name=pending).update(updated_at=timezone.now() - timedelta(seconds=LOST_AFTER))
    assert sweep_in_turn(lambda: True).queued == 1
    assert sorted(sent(broker)) == sorted([stuck, pending])


class Clock:
    """The time the lock reads, moved by the test."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(lock, "_now", fake)
    return fake


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``target`` started in a thread of its own (with its own connection, closed at its end)."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(target())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_while_one_process_sweeps_another_does_not(clock, settings):
    entered, finish = threading.Event(), threading.Event()
    swept: list[str] = []

    def slow(name: str) -> Callable[[Callable[[], bool]], None]:
        def sweep(held: Callable[[], bool]) -> None:
            swept.append(name)
            entered.set()
            finish.wait(10)

        return sweep

    first, second = threads.Sweeper(slow("first")), threads.Sweeper(slow("second"))
    thread, result = in_thread(first.turn)
    assert entered.wait(10)
    other, other_result = in_thread(second.turn)
    other.join(10)
    assert other_result == [False]  # refused at once, while the first one sweeps
    finish.set()
    thread.join(10)
    assert result == [True] and swept == ["first"]

    assert not second.turn()  # nobody sweeps, but the next turn is an interval after the last one began
    clock.now += timedelta(seconds=60.001)
    assert second.turn()
    assert swept == ["first", "second"]


def test_racing_sweepers_never_sweep_at_once(settings):
    settings.QUEUED_STORAGE_SWEEP_INTERVAL = 0  # every turn is due: the lock alone keeps them apart
    inside, most, attempts, turns = [0], [0], [0], []
    changed = threading.Condition()

    def sweep(held: Callable[[], bool]) -> None:
        with changed:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            # Stay in until another sweeper has tried its turn meanwhile (or the last one is done).
            seen = attempts[0]
            changed.wait_for(lambda: attempts[0] > seen, timeout=0.3)
        FileRecord.objects.count()
        assert held()
        with changed:
            inside[0] -= 1

    barrier = threading.Barrier(6)

    def sweeper() -> None:
        barrier.wait(10)
        mine = threads.Sweeper(sweep)
        for _ in range(10):
            with changed:
                attempts[0] += 1
                changed.notify_all()
            turns.append(mine.turn())

    started = [in_thread(sweeper)[0] for _ in range(6)]
    for thread in started:
        thread.join(60)
    assert most[0] == 1
    assert len(turns) == 60 and any(turns)


def test_a_failed_sweep_gives_the_lock_back_and_is_logged(settings, caplog):
    settings.QUEUED_STORAGE_SWEEP_INTERVAL = 0

    def broken(held: Callable[[], bool]) -> None:
        raise RuntimeError("the broker is down")

    assert not threads.Sweeper(broken).turn()
    assert "the sweep failed; the next turn tries again" in caplog.text
    assert threads.Sweeper(lambda held: None).turn()


def test_each_worker_process_starts_one_sweeper_unless_the_interval_is_off(settings):
    from celery.concurrency import prefork, thread

    from queued_storage import tasks

    def sweepers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "queued_storage sweeper" and t.is_alive()]

    settings.QUEUED_STORAGE_SWEEP_INTERVAL = None
    tasks.start_sweeper()
    assert sweepers() == []
    settings.QUEUED_STORAGE_SWEEP_INTERVAL = 60
    # A prefork main process runs no task: its children start theirs (worker_process_init).
    tasks._start_sweeper_in_main(sender=SimpleNamespace(pool=object.__new__(prefork.TaskPool)))
    assert sweepers() == []
    try:
        tasks._start_sweeper_in_main(sender=SimpleNamespace(pool=object.__new__(thread.TaskPool)))
        tasks.start_sweeper()  # both signals in one process (the solo pool): still one
        [running] = sweepers()
    finally:
        threads.stop_sweeper()
    running.join(5)
    assert not running.is_alive()


def test_a_forked_child_starts_its_own_sweeper(settings):
    settings.QUEUED_STORAGE_SWEEP_INTERVAL = 60
    parent = threads.start_sweeper(lambda held: None)
    try:
        pid = os.fork()
        if pid == 0:  # the parent's thread does not run here: the child needs one of its own
            child = threads.start_sweeper(lambda held: None)
            os._exit(0 if child is not None and child is not parent and child.is_alive() else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        threads.stop_sweeper()
