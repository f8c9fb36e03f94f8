"""The task's own threads: the lease keeper and the upload threads hold nothing past their use."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import worker_process_shutdown
from django.core.files.base import ContentFile
from django.db import connections
from django.db.backends.signals import connection_created

from queued_storage import threads
from queued_storage.models import FileRecord
from queued_storage.publishing import resolve_task

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class RecordsElsewhere:
    """Routes FileRecord to the ``records`` alias, as a project with a database of its own for it."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return "records" if model is FileRecord else None

    db_for_write = db_for_read


@pytest.fixture(scope="module")
def records_alias() -> Iterator[str]:
    """A second alias on the test database, a mirror of ``default`` with connections of its own.

    Module-scoped, so it exists before the test case is built and can be
    named in its ``databases``.
    """
    connections.settings["records"] = {**connections.settings["default"], "TEST": {"MIRROR": "default"}}
    yield "records"
    connections["records"].close()
    del connections.settings["records"]


@pytest.mark.django_db(transaction=True, databases=["default", "records"])
def test_a_beat_closes_the_connection_of_the_database_records_are_routed_to(records_alias, settings):
    settings.DATABASE_ROUTERS = ["tests.test_threads.RecordsElsewhere"]
    opened = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append(connection)

    keeper = threads.LeaseKeeper()
    keeper.add("storage", "name.txt", "v1")
    connection_created.connect(created, weak=False, dispatch_uid="test_threads")
    try:
        beat = threading.Thread(target=keeper.renew)  # one beat, in a thread of its own
        beat.start()
        beat.join()
    finally:
        connection_created.disconnect(dispatch_uid="test_threads")
    assert [c.alias for c in opened] == [records_alias]
    assert [c.connection for c in opened] == [None]  # closed, not left idle until the next beat


def _message(storage: Any, names: list[str]) -> str:
    files = []
    for name in names:
        stored = storage.save(name, ContentFile(name.encode()))
        files.append([stored, FileRecord.objects.get(storage=storage.identity, name=stored).version])
    result = resolve_task(storage.task).apply(args=(storage.identity,), kwargs={"files": files})
    return str(result.get())


def _upload_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("queued_storage upload")}


def test_the_worker_shutdown_stops_the_upload_threads(make, eager):
    storage = make(delayed=True)
    assert _message(storage, ["a.txt", "b.txt"]) == "remote: 2"  # in this thread, as a pool thread
    started = _upload_threads()
    assert started
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    for thread in started:
        thread.join(10)
    assert not [t for t in started if t.is_alive()]
    assert not threads._uploads
    # A later message in the same thread gets a new upload thread.
    assert _message(storage, ["c.txt"]) == "remote: 1"


def test_a_pool_thread_that_ends_takes_its_upload_thread_along(make, eager):
    storage = make(delayed=True)
    before = _upload_threads()
    results = []

    def pool_thread_task() -> None:
        try:
            results.append(_message(storage, ["a.txt", "b.txt"]))
        finally:
            connections.close_all()  # as Celery does after a task in a thread pool

    pool_thread = threading.Thread(target=pool_thread_task)
    pool_thread.start()
    pool_thread.join()
    assert results == ["remote: 2"]
    wait_for(lambda: not (_upload_threads() - before), timeout=10, what="its upload thread to end")
    assert len(threads._uploads) == len(before)
