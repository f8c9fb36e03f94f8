"""The worker's state changes wait for SQLite's write lock in short steps (queued_storage.contention).

On SQLite each test holds the write lock from a second connection to the
test database's file; on PostgreSQL the same calls must pass through untouched.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default
from django.db import OperationalError, connection, connections, transaction
from django.test import override_settings

from queued_storage import QueuedStorage, contention, transitions
from queued_storage.models import FileRecord, State

default_storage: QueuedStorage = _default  # type: ignore[assignment]

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def write_lock_held() -> Iterator[sqlite3.Connection]:
    """Another connection to the same file takes the write lock until the block ends (or it commits)."""
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def busy_timeout() -> int:
    connection.ensure_connection()
    return int(connection.connection.execute("PRAGMA busy_timeout").fetchone()[0])


@pytest.fixture
def pending() -> tuple[str, str]:
    with override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this"):
        name = default_storage.save("contended.txt", ContentFile(b"x"))
    record = FileRecord.objects.get(name=name)
    return name, record.version


@pytest.fixture
def sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock; test_other_databases_run_the_call_as_it_is covers the rest")


def in_thread(func: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``func`` in a thread of its own (its own connection); its result or error in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = func(*args)
        except Exception as exc:
            out["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_claim_waits_for_the_lock_in_short_steps_and_wins_once_it_is_free(sqlite_only, pending):
    name, version = pending
    before = busy_timeout()
    tried = threading.Event()
    pauses = []

    def pause() -> None:
        pauses.append(1)
        tried.set()

    with mock.patch.object(contention, "_pause", pause), write_lock_held():
        thread, out = in_thread(transitions.claim, default_storage.identity, name, version, "w1")
        assert tried.wait(10), "the claim never found the lock taken"
    thread.join(10)
    assert not thread.is_alive()
    claim, record = out["result"]
    assert claim is transitions.Claim.CLAIMED
    assert record.state == State.TRANSFERRING
    assert pauses  # refused at least once, then tried again rather than waiting in SQLite
    assert busy_timeout() == before  # this thread's connection was never touched


def test_the_connection_keeps_its_own_busy_timeout_after_each_call(sqlite_only, pending):
    name, version = pending
    before = busy_timeout()
    assert before > 0  # the test database's OPTIONS["timeout"]
    transitions.claim(default_storage.identity, name, version, "w1")
    assert busy_timeout() == before


def test_past_the_connections_busy_timeout_the_error_is_sqlites(sqlite_only, pending):
    name, version = pending

    def claim_with_a_short_timeout() -> Any:
        connection.ensure_connection()
        connection.connection.execute("PRAGMA busy_timeout = 30")
        try:
            return transitions.claim(default_storage.identity, name, version, "w1")
        finally:
            assert busy_timeout() == 30

    with write_lock_held():
        thread, out = in_thread(claim_with_a_short_timeout)
        thread.join(10)
    assert isinstance(out.get("error"), OperationalError)
    assert "database is locked" in str(out["error"])
    # Nothing was claimed: the row is as the save left it.
    assert FileRecord.objects.get(name=name).state == State.PENDING


def test_inside_a_transaction_the_call_is_not_tried_again(sqlite_only, pending):
    name, version = pending
    pause = mock.Mock()

    def claim_in_a_transaction() -> Any:
        connection.ensure_connection()
        connection.connection.execute("PRAGMA busy_timeout = 0")
        with transaction.atomic():
            return transitions.claim(default_storage.identity, name, version, "w1")

    with mock.patch.object(contention, "_pause", pause), write_lock_held():
        thread, out = in_thread(claim_in_a_transaction)
        thread.join(10)
    assert isinstance(out.get("error"), OperationalError)
    pause.assert_not_called()  # a failed statement inside a transaction is the caller's to handle


def test_another_error_is_raised_at_once(sqlite_only: None) -> None:
    calls = []
    before = busy_timeout()

    @contention.short_waits
    def broken() -> None:
        calls.append(1)
        raise OperationalError("no such table: elsewhere")

    with pytest.raises(OperationalError, match="no such table"):
        broken()
    assert calls == [1]
    assert busy_timeout() == before


def test_a_switch_refused_the_lock_is_rolled_back_whole_and_tried_again(sqlite_only, pending):
    name, version = pending
    transitions.claim(default_storage.identity, name, version, "w1")
    tried = threading.Event()
    with mock.patch.object(contention, "_pause", tried.set), write_lock_held():
        thread, out = in_thread(
            transitions.switch_many, default_storage.identity, [(name, version, 1, "c" * 32)]
        )
        assert tried.wait(10)
    thread.join(10)
    assert out["result"] == [True]
    assert FileRecord.objects.get(name=name).state == State.REMOTE


def test_other_databases_run_the_call_as_it_is(pending: tuple[str, str]) -> None:
    if connection.vendor == "sqlite":
        with mock.patch.object(type(connections["default"]), "vendor", "postgresql"):
            _pass_through()
    else:
        _pass_through()


def _pass_through() -> None:
    executed = []
    with mock.patch.object(contention, "_pause") as pause:

        @contention.short_waits
        def locked() -> None:
            executed.append(1)
            raise OperationalError("database is locked")

        with pytest.raises(OperationalError):
            locked()
    assert executed == [1]
    pause.assert_not_called()
