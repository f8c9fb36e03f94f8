"""The worker's state changes wait for SQLite's write lock in short steps (queued_storage.contention).

On SQLite each test holds the write lock from a second connection to the
test database's file; on PostgreSQL the same calls must pass through untouched.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default
from django.db import OperationalError, connection, connections, transaction
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

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


# -- every interleaving: a transition tried again does what one call does ------------------------

OPS = ("claim", "heartbeat", "switch", "release", "fail")


@contextmanager
def lock_until_paused(kind: str, at: int, refusals: int) -> Iterator[list[int]]:
    """Another connection takes the write lock (``write``: other writes wait), all of the
    database (``exclusive``: reads wait too, as while a commit is written) or a read (``read``:
    a commit must wait for it) just before the statement number ``at`` that the call sends
    within :func:`contention.short_waits`, and lets it go once the call has paused ``refusals``
    times; the pauses taken are in the list."""
    pauses: list[int] = []
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, timeout=0)
    seen = [0]

    def take(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if busy_timeout():  # not in a short_waits call: SQLite's busy handler would wait here
            return execute(sql, params, many, context)
        if seen[0] == at and kind != "none" and refusals and not other.in_transaction:
            try:
                other.execute({"write": "BEGIN IMMEDIATE", "exclusive": "BEGIN EXCLUSIVE"}.get(kind, "BEGIN"))
                if kind == "read":
                    other.execute("SELECT count(*) FROM queued_storage_filerecord").fetchone()
            except sqlite3.OperationalError:  # this call holds the lock already: no lock taken
                if other.in_transaction:
                    other.execute("ROLLBACK")
        seen[0] += 1
        return execute(sql, params, many, context)

    def pause() -> None:
        pauses.append(1)
        if len(pauses) >= refusals and other.in_transaction:
            other.execute("ROLLBACK")

    try:
        with mock.patch.object(contention, "_pause", pause), connection.execute_wrapper(take):
            yield pauses
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def _expected(op: str, state: str) -> tuple[Any, str]:
    """What one uncontended call returns and leaves, for a row in ``state`` (every lease live)."""
    if op == "claim":
        if state in (State.PENDING, State.FAILED):
            return transitions.Claim.CLAIMED, State.TRANSFERRING
        return {State.REMOTE: transitions.Claim.DONE}.get(state, transitions.Claim.BUSY), state
    transferring = state == State.TRANSFERRING
    if op == "heartbeat":
        return transferring, state
    if op == "switch":
        return transferring, State.REMOTE if transferring else state
    after = {"release": State.PENDING, "fail": State.FAILED}[op] if transferring else state
    return after, after


def _run(op: str, name: str, version: str) -> Any:
    identity = default_storage.identity
    if op == "claim":
        return transitions.claim(identity, name, version, "w1")[0]
    if op == "heartbeat":
        return transitions.heartbeat(identity, name, version, 1)
    if op == "switch":
        return transitions.switch_many(identity, [(name, version, 1, "c" * 32)])[0]
    row = transitions.release(identity, name, version, error="boom", failed=op == "fail")
    assert row is not None
    return row.state


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(OPS),
            st.integers(0, 1),
            st.sampled_from(["none", "write", "exclusive", "read"]),
            st.integers(0, 3),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=10,
    )
)
@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this", QUEUED_STORAGE_LEASE=3600)
def test_a_transition_tried_again_does_what_one_call_does_whatever_holds_the_lock(
    sqlite_only: None, steps: list[tuple[str, int, str, int, int]]
) -> None:
    before = busy_timeout()
    prefix = uuid.uuid4().hex[:8]
    names = [default_storage.save(f"{prefix}/{i}.txt", ContentFile(b"x")) for i in range(2)]
    versions = {r.name: r.version for r in FileRecord.objects.filter(name__in=names)}
    model = {name: str(State.PENDING) for name in names}
    for op, index, kind, at, refusals in steps:
        name = names[index]
        returned, model[name] = _expected(op, model[name])
        with lock_until_paused(kind, at, refusals) as pauses:
            assert _run(op, name, versions[name]) == returned
        assert len(pauses) <= refusals  # it waited for exactly this lock, no longer
        # The invariant after every step: the rows are the model, the connection as it was.
        assert {r.name: r.state for r in FileRecord.objects.filter(name__in=names)} == model
        assert busy_timeout() == before
        assert not connection.connection.in_transaction


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this", QUEUED_STORAGE_LEASE=3600)
def test_a_claim_refused_between_its_update_and_its_select_is_still_claimed(sqlite_only: None) -> None:
    """Found by the property above: the UPDATE committed alone, and the claim tried again found
    its own lease and called the file busy (it then waited for that lease to lapse)."""
    name = default_storage.save("between.txt", ContentFile(b"x"))
    version = FileRecord.objects.get(name=name).version
    with lock_until_paused("exclusive", 1, 1) as pauses:
        assert _run("claim", name, version) is transitions.Claim.CLAIMED
    assert pauses == [1]
    assert FileRecord.objects.get(name=name).state == State.TRANSFERRING


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this", QUEUED_STORAGE_LEASE=3600)
def test_a_switch_refused_after_its_commit_is_not_switched_again(sqlite_only: None) -> None:
    """Found by the property above: the cache's check read after the switch's commit was
    refused, the switch ran again, lost to itself, and the copied file was called deleted."""
    name = default_storage.save("after.txt", ContentFile(b"x"))
    version = FileRecord.objects.get(name=name).version
    assert _run("claim", name, version) is transitions.Claim.CLAIMED
    with lock_until_paused("exclusive", 2, 1):
        assert _run("switch", name, version) is True
    assert FileRecord.objects.get(name=name).state == State.REMOTE
