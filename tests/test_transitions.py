"""The location record and its cache mirror, on the real Redis cache."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default
from django.db import connection
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from queued_storage import QueuedStorage, mirror, transitions, views
from queued_storage.conf import conf
from queued_storage.models import FileRecord
from queued_storage.mover import Kind, Mover
from queued_storage.views import serve

default_storage: QueuedStorage = _default  # type: ignore[assignment]

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_save_leaves_the_cache_alone_and_the_first_read_fills_it():
    cache = caches["default"]
    name = default_storage.save("fresh.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    assert cache.get(key) is None  # no round trip in save()
    assert default_storage.url(name) == "/media/fresh.txt"
    assert cache.get(key) == "pending"


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_cache_miss_reads_the_state_of_exactly_this_name_and_checks_its_fill():
    names = ['o\'brien "q".txt', "ünïcode/ß.txt", 'o\'brien "q".txt.bak']
    saved = [default_storage.save(n, ContentFile(b"x")) for n in names]
    FileRecord.objects.filter(name=saved[1]).update(state="remote")
    caches["default"].clear()
    with CaptureQueriesContext(connection) as queries:
        assert mirror.cached_state(default_storage.identity, saved[0]) == "pending"
    # The state, then the same read once the cache is filled (see location's docstring).
    assert [q["sql"] for q in queries] == [queries[0]["sql"]] * 2
    with CaptureQueriesContext(connection) as queries:
        assert mirror.cached_state(default_storage.identity, saved[0]) == "pending"
    assert len(queries) == 0
    assert mirror.cached_state(default_storage.identity, saved[1]) == "remote"
    assert mirror.cached_state(default_storage.identity, "o'brien") is None
    assert mirror.cached_state("another-storage", saved[1]) is None


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_name_taken_answers_from_the_database_even_over_a_stale_cache_entry():
    name = default_storage.save("taken.txt", ContentFile(b"x"))
    caches["default"].set(default_storage.get_cache_key(name), "absent")
    default_storage.local.delete(name)  # only the record still holds the name
    assert transitions.name_taken(default_storage.identity, name)
    assert default_storage.exists(name)
    assert default_storage.get_available_name(name) != name


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_reader_filling_the_cache_never_overwrites_a_newer_transition():
    name = default_storage.save("race.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    # The worker switched (and wrote the cache) after a reader read "pending" from the row.
    caches["default"].set(key, "remote")
    mirror.fill(default_storage.identity, name, key, "pending")
    assert caches["default"].get(key) == "remote"


def test_a_read_racing_the_switch_leaves_the_switch_in_the_cache(monkeypatch):
    name = default_storage.save("race2.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    real_get = mirror.read

    def miss_then_switch(k):
        value = real_get(k)
        caches["default"].set(k, "remote")  # the worker's switch lands right after our miss
        return None if k == key else value

    monkeypatch.setattr(mirror, "read", miss_then_switch)
    assert mirror.cached_state(default_storage.identity, name) == "pending"  # the row as read
    assert caches["default"].get(key) == "remote"  # not overwritten by the stale read


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_delete_leaves_a_short_tombstone_so_a_racing_reader_cannot_refill():
    name = default_storage.save("gone.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    default_storage.url(name)
    default_storage.delete(name)
    # A reader that read the row just before the delete fills the cache after it.
    mirror.fill(default_storage.identity, name, key, "remote")
    assert caches["default"].get(key) == "absent"
    assert not default_storage.exists(name)


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_claiming_no_files_claims_nothing():
    name = default_storage.save("unclaimed.txt", ContentFile(b"x"))
    assert transitions.claim_many(default_storage.identity, [], owner="test") == []
    assert default_storage.status(name).state == "pending"


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_switching_several_copies_sets_each_on_its_own_and_the_cache_once(monkeypatch):
    names = [default_storage.save(f"batch/{n}.txt", ContentFile(b"x")) for n in "abc"]
    key = default_storage.identity
    rows = {r.name: r for r in FileRecord.objects.filter(storage=key, name__in=names)}
    for name in names:
        [(outcome, _)] = transitions.claim_many(key, [(name, rows[name].version)], owner="test")
        assert outcome is transitions.Claim.CLAIMED
    default_storage.url(names[1])  # a reader cached "transferring" meanwhile
    FileRecord.objects.filter(name=names[2]).update(version="saved-again")  # c changed while it copied
    cache = caches["default"]
    writes = []
    real_set_many = type(cache).set_many
    monkeypatch.setattr(
        type(cache), "set_many", lambda self, *a, **k: writes.append(a) or real_set_many(self, *a, **k)
    )
    copies = [(name, rows[name].version, 1, "md5:x") for name in names]
    assert transitions.switch_many(key, copies) == [True, True, False]
    assert [r.state for r in FileRecord.objects.filter(name__in=names).order_by("name")] == [
        "remote",
        "remote",
        "transferring",
    ]
    assert len(writes) == 1  # one round trip for the batch
    assert [mirror.cached_state(key, name) for name in names] == ["remote", "remote", "transferring"]
    assert transitions.switch_many(key, copies) == [False, False, False]  # each set happens once


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_switch_and_a_take_under_one_commit_land_together_or_not_at_all(monkeypatch):
    """The cache learns of a switch only once its commit holds, whatever else that commit did."""
    key = default_storage.identity
    name = default_storage.save("together/copied.txt", ContentFile(b"x"))
    waiting = default_storage.save("together/waiting.txt", ContentFile(b"y"))
    version = FileRecord.objects.get(storage=key, name=name).version
    host = FileRecord.objects.get(storage=key, name=waiting).host
    [(outcome, _)] = transitions.claim_many(key, [(name, version)], owner="test")
    assert outcome is transitions.Claim.CLAIMED
    default_storage.url(name)  # a reader cached "transferring"
    real_take = transitions.take_waiting

    def take_then_fail(*args: Any, **kwargs: Any) -> list[FileRecord]:
        assert real_take(*args, **kwargs)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(transitions, "take_waiting", take_then_fail)
    with pytest.raises(RuntimeError), transitions.one_commit():
        assert transitions.switch_many(key, [(name, version, 1, "md5:x")]) == [True]
        transitions.take_waiting(key, host, most=5, delayed=False, owner="test")
    # Neither happened: the copied file still transferring, in the row and in the cache.
    assert default_storage.status(name).state == "transferring"
    assert mirror.cached_state(key, name) == "transferring"
    assert default_storage.status(waiting).state == "pending"
    monkeypatch.setattr(transitions, "take_waiting", real_take)
    with transitions.one_commit():
        assert transitions.switch_many(key, [(name, version, 1, "md5:x")]) == [True]
        # Not in the cache before the commit: the row may still roll back.
        assert mirror.cached_state(key, name) == "transferring"
        assert [r.name for r in transitions.take_waiting(key, host, most=5, delayed=False, owner="t")] == [
            waiting
        ]
    assert mirror.cached_state(key, name) == "remote"
    assert default_storage.status(waiting).state == "transferring"


_BEAT_KEY = "beating-" + default_storage.identity[:40]


@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "state": st.sampled_from(["pending", "transferring", "transferring", "remote", "deleted"]),
                "leased": st.booleans(),
                "beat": st.sampled_from([None, "same", "same", "another version"]),
                "done": st.sampled_from([0, 0, 7, 100]),
                "storage": st.sampled_from([_BEAT_KEY, _BEAT_KEY, "another-storage"]),
            }
        ),
        max_size=12,
    ),
    chunk=st.sampled_from([1, 2, 200]),
)
@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_one_beat_renews_what_heartbeat_would_renew_file_by_file_and_nothing_else(
    rows: list[dict[str, Any]], chunk: int
) -> None:
    """``heartbeat_many`` under one commit against :func:`heartbeat` for each file, row by row."""
    from datetime import timedelta

    from django.utils import timezone

    FileRecord.objects.filter(storage__in=[_BEAT_KEY, "another-storage"]).delete()
    old = timezone.now() - timedelta(seconds=5)
    FileRecord.objects.bulk_create(
        FileRecord(
            storage=row["storage"],
            name=f"b{i:02d}.txt",
            version="v1",
            state=row["state"],
            lease_until=old if row["leased"] else None,
            bytes_done=1,
        )
        for i, row in enumerate(rows)
    )
    beats = [
        (row["storage"], f"b{i:02d}.txt", "v1" if row["beat"] == "same" else "v0", row["done"])
        for i, row in enumerate(rows)
        if row["beat"] is not None
    ]

    def snapshot() -> dict[tuple[str, str], tuple[Any, ...]]:
        return {
            (r.storage, r.name): (r.state, r.bytes_done, r.lease_until)
            for r in FileRecord.objects.filter(storage__in=[_BEAT_KEY, "another-storage"])
        }

    before = snapshot()
    started = timezone.now()
    with mock.patch.object(transitions, "_BEAT_CHUNK", chunk):
        transitions.heartbeat_many(beats)
    after = snapshot()
    renewed = {}
    for storage, name, version, done in beats:
        state, _, lease = before[storage, name]
        if version != "v1":
            continue  # saved again since: not this worker's any more
        if state == "transferring":
            renewed[storage, name] = ("transferring", done)
        elif state == "deleted" and lease is not None:
            renewed[storage, name] = ("deleted", 1)  # its copy is removed when it ends: kept, no progress
    for key, (state, done, lease) in after.items():
        if key in renewed:
            assert (state, done) == renewed[key]
            assert lease is not None
            assert lease >= started + timedelta(seconds=conf.LEASE) - timedelta(seconds=1)
        else:
            assert (state, done, lease) == before[key]
    FileRecord.objects.filter(storage__in=[_BEAT_KEY, "another-storage"]).delete()


class Interleave:
    """Runs ``step_in`` just before step ``at`` of a reader: its ``at``-th query or cache call.

    The reader is whatever runs while :meth:`installed` is active; what
    ``step_in`` itself does is not counted.  Stepping ``at`` through 0, 1, 2 ...
    places ``step_in`` at every point of the reader, then after it.
    """

    CALLS = ("get", "add", "set", "delete", "get_many", "set_many", "delete_many")

    def __init__(self, at: int, step_in: Callable[[], None]) -> None:
        self.at, self.step_in = at, step_in
        self.steps: list[str] = []
        self.fired = self._inside = False

    def _step(self, what: str) -> None:
        if self._inside:
            return
        if len(self.steps) == self.at:
            self._inside = True
            try:
                self.step_in()
            finally:
                self._inside = False
            self.fired = True
        self.steps.append(what)

    @contextmanager
    def installed(self) -> Iterator[None]:
        cache = caches["default"]

        def query(execute, sql, params, many, context):
            self._step(sql.split()[0])
            return execute(sql, params, many, context)

        def counted(call: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def call_cache(*args: Any, **kwargs: Any) -> Any:
                self._step(f"cache.{call}")
                return real(*args, **kwargs)

            return call_cache

        with ExitStack() as stack:
            for call in self.CALLS:
                stack.enter_context(mock.patch.object(cache, call, counted(call, getattr(cache, call))))
            stack.enter_context(connection.execute_wrapper(query))
            yield


def _read(storage: QueuedStorage, name: str) -> None:
    with storage.open(name) as fh:
        fh.read()


READERS: dict[str, Callable[[QueuedStorage, str], Any]] = {
    "transfer": lambda storage, name: storage.transfer(name),
    "url": lambda storage, name: storage.url(name),
    "open": _read,
    "view": lambda storage, name: serve(RequestFactory().get("/"), name).close(),
}


@pytest.mark.parametrize("flushed", [False, True], ids=["cache-kept", "cache-flushed"])
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.parametrize("reader", READERS)
@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_reads_never_stay_on_a_deleted_local_copy_whatever_ran_during_the_switch(
    make, monkeypatch, reader, warm, flushed
):
    """The worker switches a delete_local file (and the cache may be flushed) at every step of a reader.

    Among them the interleaving of issue 12: ``transfer(name)`` read the row
    while the file was copied, the worker switched and deleted the local
    copy, then ``transfer()`` wrote the state it had read to the cache.
    """
    storage = make(delayed=True, delete_local=True)
    monkeypatch.setattr(views, "_storage", lambda label: storage)  # the view serves this storage
    mover = Mover(storage)
    data = b"switched while read"
    for at in itertools.count():
        name = storage.save(f"f{at}.txt", ContentFile(data))
        if warm:
            storage.url(name)  # a read before the copy cached "pending"
        version = FileRecord.objects.get(storage=storage.identity, name=name).version
        outcome, record = transitions.claim(storage.identity, name, version, owner="test")
        assert outcome is transitions.Claim.CLAIMED and record is not None
        copied, _ = mover._copy(name, record, lambda done: None)

        def switch(name: str = name, record: FileRecord = record, copied: Any = copied) -> None:
            won = transitions.switch_to_remote(
                storage.identity, name, record.version, size=copied.size, checksum=copied.checksum
            )
            assert mover._settle(name, record.version, record, copied, 0.0, won).kind is Kind.REMOTE
            if flushed:
                caches["default"].clear()

        interleave = Interleave(at, switch)
        try:
            with interleave.installed():
                READERS[reader](storage, name)
        except FileNotFoundError:
            # Only a read in flight may miss: it chose the local copy before the worker deleted it.
            assert reader == "open" and interleave.fired
        if not interleave.fired:
            switch()  # the reader had ended: the worker switches after it
        where = f"worker switched before step {at} of {interleave.steps}"
        assert FileRecord.objects.get(storage=storage.identity, name=name).state == "remote", where
        assert not storage.local.exists(name), where
        assert caches["default"].get(storage.get_cache_key(name)) in (None, "remote"), where
        assert storage.get_storage(name) is storage.remote, where
        with storage.open(name) as fh:
            assert fh.read() == data, where
        if not interleave.fired:
            break


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_transitions_cache_write_that_lands_late_removes_itself():
    # The file was deleted and saved again (pending, a new version) while
    # these writes of older transitions were on their way.
    names = [default_storage.save(f"late/{n}.txt", ContentFile(b"x")) for n in "ab"]
    still = default_storage.save("late/still-remote.txt", ContentFile(b"x"))
    FileRecord.objects.filter(name=still).update(state="remote")
    key = default_storage.identity
    mirror.write_many(key, [*names, still], "remote")  # the switch of the old versions
    mirror.write(key, names[0], "deleted")  # forget() of an old version
    cache = caches["default"]
    assert [cache.get(default_storage.get_cache_key(n)) for n in names] == [None, None]
    assert cache.get(default_storage.get_cache_key(still)) == "remote"  # still true: kept
    assert [default_storage.url(n) for n in names] == ["/media/late/a.txt", "/media/late/b.txt"]


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_stale_message_for_a_file_failed_for_good_leaves_it_failed_until_a_requeue():
    name = default_storage.save("given-up.txt", ContentFile(b"x"))
    key = default_storage.identity
    version = FileRecord.objects.get(name=name).version
    assert transitions.claim(key, name, version, owner="w1")[0] is transitions.Claim.CLAIMED
    transitions.release(key, name, version, error="PermanentTransferError: no", failed=True)
    sent = []
    with mock.patch("queued_storage.mover.transfer_failed.send", lambda **kw: sent.append(kw)):
        # The message redelivered (acks_late) or sent before the last attempt: nothing to do.
        outcome = Mover(default_storage).one(name, version)
    assert outcome.kind is Kind.FAILED_BEFORE
    assert sent == []  # transfer_failed was sent once, when it failed
    record = FileRecord.objects.get(name=name)
    assert (record.state, record.attempts, record.last_error) == ("failed", 1, "PermanentTransferError: no")
    # A requeue (the command, the admin, storage.transfer()) makes it pending: then it is claimed.
    transitions.requeue(key, name)
    assert transitions.claim(key, name, version, owner="w1")[0] is transitions.Claim.CLAIMED


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_claim_is_not_given_back_once_another_worker_claimed_the_file_since():
    from datetime import timedelta

    from django.utils import timezone

    name = default_storage.save("given.txt", ContentFile(b"x"))
    key = default_storage.identity
    version = transitions.get(key, name).version
    [(claim, mine)] = transitions.claim_many(key, [(name, version)], owner="first")
    assert claim is transitions.Claim.CLAIMED
    # The first worker stalls past its lease; a second one claims the file.
    FileRecord.objects.filter(storage=key, name=name).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    [(claim, theirs)] = transitions.claim_many(key, [(name, version)], owner="second")
    assert claim is transitions.Claim.CLAIMED
    assert not transitions.give_back(key, name, version, attempts=mine.attempts)
    row = transitions.get(key, name)
    assert (row.state, row.attempts, row.lease_until) == ("transferring", 2, theirs.lease_until)


# -- claim_many, over every state a row can be in

_CLAIM_NAMES = ("a.txt", "b.txt", "c.txt", "d.txt")


@st.composite
def _claim_world(draw: Any) -> tuple[dict[str, tuple[str, str | None]], list[tuple[str, str]]]:
    """Rows (name → state, lease: none, lapsed or live) and the ``(name, version)`` a message names."""
    rows = draw(
        st.dictionaries(
            st.sampled_from(_CLAIM_NAMES),
            st.tuples(
                st.sampled_from(["pending", "transferring", "remote", "failed", "deleted"]),
                st.sampled_from([None, "lapsed", "live"]),
            ),
        )
    )
    asked = draw(
        st.lists(st.tuples(st.sampled_from(_CLAIM_NAMES), st.sampled_from(["v1", "v2"])), unique=True)
    )
    return rows, asked


@given(world=_claim_world())
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_claim_takes_exactly_the_free_rows_and_tells_each_other_what_it_found(world: Any) -> None:
    """CLAIMED iff the row at that version is pending or transferring, its lease not live; nothing else."""
    from datetime import timedelta

    from django.utils import timezone

    rows, asked = world
    key = "claims-" + default_storage.identity[:40]
    FileRecord.objects.filter(storage=key).delete()
    now = timezone.now()
    leases = {None: None, "lapsed": now - timedelta(seconds=5), "live": now + timedelta(hours=1)}
    for name, (state, lease) in rows.items():
        FileRecord.objects.create(
            storage=key, name=name, version="v1", state=state, lease_until=leases[lease]
        )
    before = {r.name: (r.state, r.lease_until, r.attempts) for r in FileRecord.objects.filter(storage=key)}
    outcomes = transitions.claim_many(key, asked, owner="prop")
    after = {r.name: (r.state, r.lease_until, r.attempts) for r in FileRecord.objects.filter(storage=key)}
    Claim = transitions.Claim
    claimed = set()
    for (name, version), (claim, _) in zip(asked, outcomes, strict=True):
        state, lease = rows.get(name, (None, None))
        free = version == "v1" and state in ("pending", "transferring") and lease != "live"
        if free:
            assert claim is Claim.CLAIMED, (name, version, state, lease, claim)
            claimed.add(name)
            assert after[name][0] == "transferring" and after[name][1] > now
            assert after[name][2] == before[name][2] + 1
        elif state is None or version != "v1" or state == "deleted":
            assert claim is Claim.GONE, (name, version, state, claim)
        else:
            expected = {"remote": Claim.DONE, "failed": Claim.FAILED}.get(state, Claim.BUSY)
            assert claim is expected, (name, version, state, lease, claim)
    assert {n: v for n, v in after.items() if n not in claimed} == {
        n: v for n, v in before.items() if n not in claimed
    }
    # Giving back what was claimed and never copied (a message that stopped at a failure):
    # those rows are pending again as before, their attempt not counted; nothing else changes.
    given = {
        name
        for name, version in asked
        if name in claimed and transitions.give_back(key, name, version, attempts=after[name][2])
    }
    assert given == claimed
    back = {r.name: (r.state, r.lease_until, r.attempts) for r in FileRecord.objects.filter(storage=key)}
    for name in claimed:
        assert back[name] == ("pending", None, before[name][2])
    assert {n: v for n, v in back.items() if n not in claimed} == {
        n: v for n, v in before.items() if n not in claimed
    }
    FileRecord.objects.filter(storage=key).delete()


# -- take_waiting: the waiting files a message goes on to

_WAITING_KEY = "taking-" + default_storage.identity[:40]


@st.composite
def _waiting_rows(draw: Any) -> list[dict[str, Any]]:
    """Rows of every kind a take must choose among, in insertion (key) order."""
    from queued_storage.conf import SMALL_FILE

    return draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "state": st.sampled_from(["pending", "pending", "transferring", "remote", "failed"]),
                    "host": st.sampled_from(["web1", "web2"]),
                    "attempts": st.sampled_from([0, 0, 1]),
                    "size": st.sampled_from([0, 10, SMALL_FILE, SMALL_FILE + 1, None]),
                    "queued": st.booleans(),
                    "storage": st.sampled_from([_WAITING_KEY, _WAITING_KEY, "another-storage"]),
                }
            ),
            max_size=12,
        )
    )


@given(rows=_waiting_rows(), delayed=st.booleans(), takes=st.lists(st.integers(1, 4), min_size=1, max_size=4))
@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_each_take_claims_the_oldest_untried_small_files_of_its_host_and_changes_nothing_else(
    rows: list[dict[str, Any]], delayed: bool, takes: list[int]
) -> None:
    """After every take: it got the first ``most`` of what waits, in key order, and only those changed."""
    from django.utils import timezone

    from queued_storage.conf import SMALL_FILE

    FileRecord.objects.filter(storage__in=[_WAITING_KEY, "another-storage"]).delete()
    now = timezone.now()
    for i, row in enumerate(rows):
        FileRecord.objects.create(
            storage=row["storage"],
            name=f"w{i:02d}.txt",
            version="v1",
            state=row["state"],
            host=row["host"],
            attempts=row["attempts"],
            size=row["size"],
            queued_at=now if row["queued"] else None,
        )

    def snapshot() -> dict[tuple[str, str], tuple[Any, ...]]:
        return {
            (r.storage, r.name): (r.state, r.attempts, r.lease_until)
            for r in FileRecord.objects.filter(storage__in=[_WAITING_KEY, "another-storage"])
        }

    def waits(record: FileRecord) -> bool:
        return (
            record.storage == _WAITING_KEY
            and record.host == "web1"
            and record.state == "pending"
            and record.attempts == 0
            and record.size is not None
            and record.size <= SMALL_FILE
            and (record.queued_at is not None or not delayed)
        )

    for most in takes:
        before = snapshot()
        expected = [r.name for r in FileRecord.objects.order_by("pk") if waits(r)][:most]
        taken = transitions.take_waiting(_WAITING_KEY, "web1", most=most, delayed=delayed, owner="prop")
        assert [r.name for r in taken] == expected
        after = snapshot()
        for record in taken:
            state, attempts, lease = after[(_WAITING_KEY, record.name)]
            assert (state, attempts) == ("transferring", 1)
            assert record.lease_until is not None and lease == record.lease_until > now
            assert record.state == "transferring"
        changed = {key for key in before if before[key] != after[key]}
        assert changed == {(_WAITING_KEY, name) for name in expected}
    FileRecord.objects.filter(storage__in=[_WAITING_KEY, "another-storage"]).delete()


def test_workers_taking_at_the_same_time_take_each_waiting_file_once() -> None:
    """On SQLite the one writer decides; on PostgreSQL, SKIP LOCKED: no file is taken twice or left."""
    import threading

    from django.db import connections

    names = [f"race{i:02d}.txt" for i in range(60)]
    FileRecord.objects.bulk_create(
        FileRecord(storage=_WAITING_KEY, name=name, version="v1", host="web1", size=1) for name in names
    )
    start = threading.Barrier(4)
    taken: dict[int, list[str]] = {}

    def worker(n: int) -> None:
        try:
            start.wait()
            mine = taken.setdefault(n, [])
            take = functools.partial(transitions.take_waiting, _WAITING_KEY, "web1", most=5, delayed=False)
            while found := take(owner=f"w{n}"):
                mine.extend(record.name for record in found)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [name for mine in taken.values() for name in mine]
    assert sorted(every) == names  # each once
    assert set(FileRecord.objects.filter(storage=_WAITING_KEY).values_list("state", "attempts")) == {
        ("transferring", 1)
    }
    FileRecord.objects.filter(storage=_WAITING_KEY).delete()
