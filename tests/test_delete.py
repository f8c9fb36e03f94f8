"""delete(): the tombstone first, then both copies, then the record; the sweeper finishes what is left.

The remote is a second FileSystemStorage (one whose delete() fails on
demand), transfers run in this process; test_faults.py deletes during a copy
by a real worker.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queued_storage import QueuedStorage, transitions
from queued_storage.models import FileRecord
from queued_storage.mover import Kind, Mover
from queued_storage.tasks import requeue

from .conftest import transfer_now

pytestmark = pytest.mark.django_db(transaction=True)

# How many more calls of FlakyRemote.delete() raise.
_failures = {"delete": 0}


class FlakyRemote(FileSystemStorage):
    """A remote whose delete() fails as S3 does when it is unreachable, as often as asked."""

    def delete(self, name: str) -> None:
        if _failures["delete"] > 0:
            _failures["delete"] -= 1
            raise ConnectionError("Could not connect to the endpoint URL")
        super().delete(name)


@pytest.fixture
def flaky(make: Any) -> Iterator[QueuedStorage]:
    _failures["delete"] = 0
    yield make(remote=f"{__name__}.FlakyRemote")
    _failures["delete"] = 0


def row(storage: QueuedStorage, name: str) -> FileRecord | None:
    return transitions.get(storage.identity, name)


def lapse(storage: QueuedStorage, name: str) -> None:
    """The lease holder died: its lease runs out."""
    past = timezone.now() - timedelta(seconds=1)
    FileRecord.objects.filter(storage=storage.identity, name=name).update(lease_until=past)


def test_a_failed_remote_delete_leaves_a_tombstone_the_sweeper_finishes(flaky):
    name = flaky.save("flaky.txt", ContentFile(b"data"))
    assert transfer_now(flaky, name) == "remote"
    _failures["delete"] = 1

    with pytest.raises(ConnectionError):  # Django's contract: a delete that failed raises
        flaky.delete(name)

    tombstone = row(flaky, name)
    assert tombstone is not None and tombstone.state == "deleted"
    assert tombstone.last_error == "ConnectionError: Could not connect to the endpoint URL"
    assert flaky.remote.exists(name) and not flaky.local.exists(name)
    # Deleted for every reader; the name stays taken until the sweeper is done.
    with pytest.raises(FileNotFoundError):
        flaky.status(name)
    with pytest.raises(FileNotFoundError):
        flaky.open(name)
    assert flaky.exists(name)
    assert flaky.save(name, ContentFile(b"other")) != name

    requeue(300)

    assert row(flaky, name) is None
    assert not flaky.remote.exists(name)
    assert not flaky.exists(name)
    assert flaky.save(name, ContentFile(b"new")) == name  # the name is free again


def test_delete_called_again_after_a_failure_finishes_at_once(flaky):
    name = flaky.save("again.txt", ContentFile(b"data"))
    transfer_now(flaky, name)
    _failures["delete"] = 1
    with pytest.raises(ConnectionError):
        flaky.delete(name)

    flaky.delete(name)

    assert row(flaky, name) is None
    assert not flaky.remote.exists(name)


def test_a_tombstone_whose_worker_died_is_finished_by_the_sweeper(make):
    storage = make()
    name = storage.save("dies.bin", ContentFile(b"data"))
    record = row(storage, name)
    assert record is not None
    # A worker takes the file and has copied it, then dies before it could switch.
    outcome, _ = transitions.claim(storage.identity, name, record.version, owner="doomed")
    assert outcome is transitions.Claim.CLAIMED
    storage.remote.save(name, ContentFile(b"data"))
    storage.delete(name)
    tombstone = row(storage, name)
    assert tombstone is not None and tombstone.state == "deleted"  # left to the lease holder
    assert storage.remote.exists(name)

    lapse(storage, name)
    requeue(300)

    assert row(storage, name) is None
    assert not storage.remote.exists(name)
    assert storage.save(name, ContentFile(b"new")) == name


def test_the_sweeper_leaves_the_tombstone_of_a_live_worker_alone(make):
    storage = make()
    name = storage.save("alive.bin", ContentFile(b"data"))
    record = row(storage, name)
    assert record is not None
    transitions.claim(storage.identity, name, record.version, owner="alive")
    storage.remote.save(name, ContentFile(b"data"))
    storage.delete(name)
    lapse(storage, name)
    # The worker's lease keeper beats: it keeps the tombstone, as it kept the copy.
    assert not transitions.heartbeat(storage.identity, name, record.version, 4)
    tombstone = row(storage, name)
    assert tombstone is not None and tombstone.lease_until is not None
    assert tombstone.lease_until > timezone.now()

    requeue(300)

    assert row(storage, name) is not None and storage.remote.exists(name)


def test_a_worker_that_cannot_remove_its_copy_leaves_it_to_the_sweeper(flaky):
    name = flaky.save("orphan.bin", ContentFile(b"data"))
    flaky.remote.save(name, ContentFile(b"data"))
    record = row(flaky, name)
    assert record is not None
    transitions.claim(flaky.identity, name, record.version, owner="worker")
    flaky.delete(name)  # the worker holds the lease: it removes the copy when its copy ends
    _failures["delete"] = 1

    assert Mover(flaky)._orphaned(name, record.version).kind is Kind.GONE

    tombstone = row(flaky, name)
    assert tombstone is not None and tombstone.lease_until is None  # given back at once
    assert flaky.remote.exists(name)
    requeue(300)
    assert row(flaky, name) is None and not flaky.remote.exists(name)


def test_a_pending_file_never_claimed_costs_no_remote_delete(flaky):
    name = flaky.save("never.txt", ContentFile(b"data"))
    _failures["delete"] = 1  # a remote delete would raise

    flaky.delete(name)

    assert row(flaky, name) is None and not flaky.local.exists(name)


def test_the_requeue_command_reports_the_deletions_it_finished(flaky):
    name = flaky.save("reported.txt", ContentFile(b"data"))
    transfer_now(flaky, name)
    _failures["delete"] = 1
    with pytest.raises(ConnectionError):
        flaky.delete(name)
    out = StringIO()

    call_command("queued_storage", "requeue", stdout=out)

    assert out.getvalue() == "Queued 0 file(s) again.\nFinished 1 deletion(s).\n"
    assert row(flaky, name) is None


_names = itertools.count()
STEPS = ["delete", "fail next remote delete", "holder dies", "sweep", "worker ends", "worker beats"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(copying=st.booleans(), steps=st.lists(st.sampled_from(STEPS), max_size=10))
def test_no_interleaving_orphans_a_copy_or_keeps_the_name_for_good(flaky, copying, steps):
    name = flaky.save(f"any/{next(_names)}.bin", ContentFile(b"data"))
    record = row(flaky, name)
    assert record is not None
    alive = copying  # a worker holds the lease and has copied the file so far
    if copying:
        transitions.claim(flaky.identity, name, record.version, owner="worker")
        flaky.remote.save(name, ContentFile(b"data"))
    deleted = False
    for step in steps:
        if step == "delete":
            deleted = True
            with contextlib.suppress(ConnectionError):  # the tombstone stays, as checked below
                flaky.delete(name)
        elif step == "fail next remote delete":
            _failures["delete"] += 1
        elif step == "holder dies":
            alive = False
            lapse(flaky, name)
        elif step == "sweep":
            requeue(300)
        elif step == "worker ends" and alive:
            alive = False
            if not transitions.switch_to_remote(flaky.identity, name, record.version, size=4, checksum=""):
                Mover(flaky)._orphaned(name, record.version)
        elif step == "worker beats" and alive:
            transitions.heartbeat(flaky.identity, name, record.version, 4)
        now = row(flaky, name)
        if now is None:  # no record left: no copy either
            assert not flaky.remote.exists(name) and not flaky.local.exists(name)
        if deleted:
            with pytest.raises(FileNotFoundError):
                flaky.status(name)
    if not deleted:
        return
    # Whoever held the deletion is gone and S3 is back: one sweeper run finishes it.
    _failures["delete"] = 0
    lapse(flaky, name)
    requeue(300)
    assert row(flaky, name) is None
    assert not flaky.remote.exists(name) and not flaky.local.exists(name)
    assert not flaky.exists(name)
