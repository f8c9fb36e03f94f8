"""The sweeper (``queued_storage requeue``): what it queues, how often, and how much it holds at once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from queued_storage import location, operations
from queued_storage.models import FileRecord
from queued_storage.tasks import requeue

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
    record = location.get(storage.key, name)
    assert record is not None
    location.claim(storage.key, name, record.version, owner="dead")
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

    first = [record.name for chunk in location.stale(300, failed=True) for record in chunk]
    second = location.stale(300, failed=True)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(location, "chunked", lambda records, size=None: iter([read_by_both]))
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

    def counting(cls: type[FileRecord], *args: Any) -> FileRecord:
        counts[-1] += 1
        return from_db(*args)

    def wrapper(execute: Callable[..., Any], *args: Any) -> Any:
        counts.append(0)
        return execute(*args)

    monkeypatch.setattr(FileRecord, "from_db", classmethod(counting))
    with connection.execute_wrapper(wrapper):
        yield counts


def test_the_sweeper_reads_the_backlog_a_chunk_at_a_time(make, broker, monkeypatch):
    monkeypatch.setattr(location, "CHUNK", 3)
    storage = make()
    names = [storage.save(f"sweep/backlog/{i}.txt", ContentFile(b"b")) for i in range(10)]
    broker.flushdb()
    untouched_for_long()

    with rows_per_query(monkeypatch) as counts:
        assert requeue(300) == 10

    assert max(counts) == 3
    assert sorted(sent(broker)) == sorted(names)


def test_cleanup_local_reads_its_candidates_a_chunk_at_a_time(make, monkeypatch):
    monkeypatch.setattr(location, "CHUNK", 3)
    storage = make()
    long_ago = timezone.now() - timedelta(days=30)
    FileRecord.objects.bulk_create(
        FileRecord(
            storage=storage.key, name=f"old/{i}.txt", state="remote", version="v", transferred_at=long_ago
        )
        for i in range(10)
    )

    with rows_per_query(monkeypatch) as counts:
        outcome = operations.cleanup_local(operations.cleanup_candidates(7), dry_run=True)

    assert max(counts) == 3
    assert outcome.considered == 10
    assert sorted(outcome.skipped["without a local copy"]) == sorted(f"old/{i}.txt" for i in range(10))
