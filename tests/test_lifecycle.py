"""A property-based model of the whole life of files (Hypothesis, ``RuleBasedStateMachine``).

The machine drives the public behaviour with random interleavings of saves
(new name, same name, the name of a deleted file), deletes, a worker taking
one step or a whole message, a worker stalling or dying at any step, S3 and
the cache failing, the sweeper, ``cleanup-local``, ``retry``, ``verify`` and
reads, and after every step checks that

- every live name reads back the bytes last saved under it, through
  ``open()``, through the URL ``url()`` gives and through the serving view,
  and ``exists()`` and ``size()`` agree;
- a local copy is gone only when the record says remote and the remote
  holds the same bytes;
- the cache never routes a read of a live name to a copy that does not
  exist or holds other bytes;
- a name deleted without error never reads back.

After the system is left to settle (every fault healed, time passed, the
sweeper and the worker run until the broker is idle) every live file is
remote, or failed with its error; neither the remote, the local disk nor
the table holds anything for a name that is not live; and a ``delete()``
that raised (S3 failing) left its file either whole or entirely gone.

Choices:

- Storage: a ``QueuedStorage`` from ``STORAGES`` (so the serving view finds
  it by alias) between two directories: a ``FileSystemStorage`` and
  :class:`FlakyRemote`, a ``FileSystemStorage`` that overwrites, as S3 does,
  and whose ``save``, ``exists``, ``delete``, ``open`` and ``size`` fail on
  demand (all, or some after the next few succeed), before or after taking
  effect (a lost response).  Each example
  draws ``delete_local`` and ``serve_url``; the four storages have their own
  directories, hence their own identities.
- Broker: ``publishing._publish``, behind every transfer message (``publish`` on
  commit, the sweeper, ``retry``, a batch's retries), appends to a list; a
  broker outage makes it fail as the real one does (returns False).  A save
  publishes its own message; a burst of saves is published as the
  background publisher (the default) sends one, grouped by
  ``publishing.coalesce`` into several-file messages.
- Worker: the real task runs in this process, in a Celery request context
  like ``apply()`` builds, so ``self.retry`` raises ``Retry`` and the retry
  message goes back into the list.  A whole message runs ``Transfer.run``.
  A stepped job calls the task's own parts in its order (claim, copy with
  verification, switch, then the local delete or the orphan cleanup; for a
  message of several files, then the files waiting in the table, claimed and
  taken from the copy on, as ``Mover.many`` does), so a worker can stall
  (its lease lapses while it works on) or die between any two, or right
  after it took waiting files; its message is then redelivered or lost.
  A dead worker's lease lapses only when time passes (a rule), as it
  would.  The broker delivers at least once: any of the last ten messages
  taken may come again, stale.
- Retries: ``QUEUED_STORAGE_RETRIES`` is 1, so a file fails for good after
  two failed deliveries: failed files, their stale messages and the ways
  back from failed lie within the search's reach.
- Time: the lease is an hour, so a lease lapses only by a rule, which moves
  ``lease_until`` into the past; countdowns are ignored (any message may
  run at any time).
- Cache: Django's in-process ``LocMemCache``, so an example costs
  milliseconds (``QS_LIFECYCLE_CACHE=redis``: the test run's Redis).
  "Flushed" clears it; "unreachable" makes every cache call raise, as with
  Redis down, while the entries stay for when it answers again (a network
  partition).  The checks look at the raw entries.
- Names: a pool of three (one in a directory), so saves collide; the
  alternative names Django makes are deterministic, so a failing example
  replays.  Every saved content is unique.
- Settling happens at the end of each example, in ``teardown()``, unless a
  step failed already.
- Size: ``QS_HYPOTHESIS_EXAMPLES`` examples (default :data:`EXAMPLES`) of
  up to ``QS_HYPOTHESIS_STEPS`` steps (default :data:`STEPS`).

Failing examples it found are kept below the machine as plain tests.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch
from urllib.parse import unquote, urlsplit

import pytest
import redis
from celery.exceptions import Retry
from django.conf import settings
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.db.backends.signals import connection_created
from django.http import Http404, HttpResponseRedirect
from django.test import RequestFactory, override_settings
from django.utils import timezone
from django.utils.module_loading import import_string
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from queued_storage import QueuedStorage, operations, publishing, registry, tasks, transitions
from queued_storage.conf import conf
from queued_storage.mirror import ABSENT
from queued_storage.models import FileRecord, State
from queued_storage.mover import CLAIM_CHUNK, Kind, Mover, Outcome, busy_later, busy_wait
from queued_storage.transfer import Copied
from queued_storage.transitions import Claim
from queued_storage.views import serve

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 150
STEPS = 40
POOL = ("a.txt", "b.txt", "d/c.bin")
REMOTE_OPS = ("save", "exists", "delete", "open", "size")
OWNER = "model@worker"
STAGES = ("claim", "copy", "switch", "finish", "more")


# -- faults


class S3Down(ConnectionError):
    """What a request to the remote storage raises while it fails."""


class CacheDown(redis.exceptions.ConnectionError):
    """What a cache call raises while the cache is unreachable."""


@dataclass
class Faults:
    s3_down: bool = False
    # op -> (requests to let through first, requests then to fail, "before"
    # or "after" they take effect)
    s3_next: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    cache_down: bool = False
    broker_down: bool = False
    s3_suspended: int = 0
    cache_suspended: int = 0

    def s3(self, op: str) -> str | None:
        """Whether this request fails, and when: "before" or "after" it takes effect."""
        if self.s3_suspended:
            return None
        if self.s3_down:
            return "before"
        skip, left, when = self.s3_next.get(op, (0, 0, ""))
        if skip:
            self.s3_next[op] = (skip - 1, left, when)
            return None
        if not left:
            return None
        self.s3_next[op] = (0, left - 1, when)
        return when

    def heal(self) -> None:
        self.s3_down, self.cache_down, self.broker_down = False, False, False
        self.s3_next.clear()

    @contextmanager
    def suspend(self, *, cache: bool = True) -> Iterator[None]:
        """S3 (and unless ``cache=False`` the cache) healthy within the block: for the checks."""
        self.s3_suspended += 1
        self.cache_suspended += cache
        try:
            yield
        finally:
            self.s3_suspended -= 1
            self.cache_suspended -= cache

    @property
    def cache_fails(self) -> bool:
        return self.cache_down and not self.cache_suspended


FAULTS = Faults()


class FlakyRemote(FileSystemStorage):
    """The remote: a directory that overwrites (as S3 does) and fails on demand."""

    def __init__(self, **options: Any) -> None:
        super().__init__(allow_overwrite=True, **options)

    def _fails(self, op: str, name: str, effect: Callable[[], Any]) -> Any:
        when = FAULTS.s3(op)
        if when == "before":
            raise S3Down(f"remote {op} of {name!r} failed (model)")
        result = effect()
        if when == "after":
            raise S3Down(f"remote {op} of {name!r} failed after taking effect (model)")
        return result

    # django-stubs does not declare FileSystemStorage._save and _open.
    def _save(self, name: str, content: Any) -> str:
        save = super()._save  # type: ignore[misc]
        return str(self._fails("save", name, lambda: save(name, content)))

    def exists(self, name: str) -> bool:
        return bool(self._fails("exists", name, lambda: super(FlakyRemote, self).exists(name)))

    def delete(self, name: str) -> None:
        self._fails("delete", name, lambda: super(FlakyRemote, self).delete(name))

    def _open(self, name: str, mode: str = "rb") -> Any:
        # Failing after the effect would leak the open file: a read has no effect.
        if FAULTS.s3("open"):
            raise S3Down(f"remote open of {name!r} failed (model)")
        return super()._open(name, mode)  # type: ignore[misc]

    def size(self, name: str) -> int:
        return int(self._fails("size", name, lambda: super(FlakyRemote, self).size(name)))


_CACHE_METHODS = (
    "get",
    "set",
    "add",
    "delete",
    "get_many",
    "set_many",
    "delete_many",
    "has_key",
    "touch",
    "incr",
    "clear",
)


def _unreachable_when_down(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if FAULTS.cache_fails:
            raise CacheDown("Error 111 connecting to the cache (model)")
        return method(self, *args, **kwargs)

    return call


# -- the broker and the worker


@dataclass
class Message:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0

    @property
    def files(self) -> list[tuple[str, str]]:
        if "files" in self.kwargs:
            return [(n, v) for n, v in self.kwargs["files"]]
        return [(self.args[1], self.args[2])]


@dataclass
class Job:
    """A worker part-way through one message, between two of the task's steps."""

    message: Message
    stage: str = "claim"  # then copy, switch, finish, and for several files more, copy ...
    claimed: list[tuple[str, str, FileRecord]] = field(default_factory=list)
    failures: list[tuple[str, str, Exception]] = field(default_factory=list)
    landed: list[tuple[str, str, FileRecord, Copied]] = field(default_factory=list)
    won: list[bool] = field(default_factory=list)
    host: str | None = None  # where the message's files are, read at the claim
    copied: bool = False  # a copy of this message landed
    taken: bool = False  # the claimed files are waiting files taken from the table
    busy: list[Outcome] = field(default_factory=list)  # held by another worker: sent back at the end

    @property
    def alone(self) -> bool:
        return "files" not in self.message.kwargs

    @property
    def leases(self) -> set[Any]:
        return {record.lease_until for _, _, record in self.claimed}


@dataclass
class Env:
    """What outlives the examples of one test: the four storages and their directories."""

    storages: dict[tuple[bool, bool], QueuedStorage]
    aliases: dict[tuple[bool, bool], str]
    roots: dict[tuple[bool, bool], Path]
    broker: list[Message] = field(default_factory=list)
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


def _storage_settings(root: Path) -> tuple[dict[str, Any], dict[tuple[bool, bool], str]]:
    configured = dict(settings.STORAGES)
    aliases = {}
    for delete_local, served in itertools.product((False, True), repeat=2):
        alias = f"lifecycle-{int(delete_local)}{int(served)}"
        aliases[delete_local, served] = alias
        configured[alias] = {
            "BACKEND": "queued_storage.QueuedStorage",
            "OPTIONS": {
                "local": "django.core.files.storage.FileSystemStorage",
                "remote": f"{__name__}.FlakyRemote",
                "local_options": {"location": str(root / alias / "local"), "base_url": "/local/"},
                "remote_options": {"location": str(root / alias / "remote"), "base_url": "/remote/"},
                "delete_local": delete_local,
                "serve_url": f"/{alias}/" if served else None,
            },
        }
    return configured, aliases


def _without_fsync(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite commits without waiting for the disk: every step commits, the data need not survive a crash."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous = OFF")


def _model_caches() -> dict[str, Any]:
    """An in-process cache, or with ``QS_LIFECYCLE_CACHE=redis`` the test run's Redis."""
    if os.environ.get("QS_LIFECYCLE_CACHE") == "redis":
        return dict(settings.CACHES)
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "lifecycle"}}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """Four storages in STORAGES, a fake broker, a cache that can go down, deterministic names."""
    configured, aliases = _storage_settings(tmp_path)
    world = Env(storages={}, aliases=aliases, roots={v: tmp_path / a for v, a in aliases.items()})
    broker = world.broker

    def publish(storage: Any, files: list[tuple[str, str]], host: Any, extra: dict[str, Any]) -> bool:
        if not files:
            return True
        if FAULTS.broker_down:
            return False  # as the real one does after logging the error
        retries = int(extra.get("retries", 0))
        if len(files) == 1:
            broker.append(Message((storage.identity, *files[0]), {}, retries))
        else:
            broker.append(Message((storage.identity,), {"files": [list(f) for f in files]}, retries))
        return True

    monkeypatch.setattr(publishing, "_publish", publish)
    monkeypatch.setattr(
        "django.core.files.storage.base.get_random_string",
        lambda length, *a, **k: f"r{next(world.names):06d}",
    )
    caches_ = _model_caches()
    backend = import_string(caches_["default"]["BACKEND"])
    for method in _CACHE_METHODS:
        monkeypatch.setattr(backend, method, _unreachable_when_down(getattr(backend, method)))
    connection_created.connect(_without_fsync)
    connection.close()  # reopened without fsync
    # A read through the serving view ends as a request does, which would close
    # the connection; as Django's test client does, the machine keeps it (on
    # PostgreSQL each new one costs a server process).
    request_finished.disconnect(close_old_connections)
    # The faults make the app log on every step; the machine's own report is what matters.
    monkeypatch.setattr(logging.getLogger("queued_storage"), "disabled", True)
    FAULTS.heal()
    # One retry: a file fails for good after two failed deliveries, within
    # reach of the search (failed files, their stale messages, the ways back).
    with override_settings(
        STORAGES=configured, CACHES=caches_, QUEUED_STORAGE_LEASE=3600, QUEUED_STORAGE_RETRIES=1
    ):
        for variant, alias in aliases.items():
            built = storages[alias]
            assert isinstance(built, QueuedStorage)
            world.storages[variant] = built
        yield world
    FAULTS.heal()
    request_finished.connect(close_old_connections)
    connection_created.disconnect(_without_fsync)
    connection.close()
    registry.unregister_all()


# -- the machine


def _files(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


class Lifecycle(RuleBasedStateMachine):
    """Files saved, moved, read and deleted while workers, S3 and the cache misbehave."""

    env: Env  # set by the test before Hypothesis builds machines

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, bytes] = {}
        self.deleted: set[str] = set()
        # delete() raised: the file must end up either intact or gone, never half.
        self.doubtful: dict[str, bytes] = {}
        self.jobs: list[Job] = []
        # Messages workers took, which the broker may deliver again (at least once).
        self.delivered: list[Message] = []
        self.saves = 0
        # Name → version of each file failed for good at the last check.
        self.failed_for_good: dict[str, str] = {}
        self.storage: QueuedStorage = self.env.storages[False, False]
        self.label = self.env.aliases[False, False]
        self.root = self.env.roots[False, False]
        # A fresh world for each example.
        FAULTS.heal()
        self.env.broker.clear()
        FileRecord.objects.all().delete()
        caches["default"].clear()
        self.env.names = itertools.count(1)

    # -- set-up

    @initialize(delete_local=st.booleans(), serve_url=st.booleans())
    def variant(self, delete_local: bool, serve_url: bool) -> None:
        self.storage = self.env.storages[delete_local, serve_url]
        self.label = self.env.aliases[delete_local, serve_url]
        self.root = self.env.roots[delete_local, serve_url]
        # Files only: removing and making directories costs more than a whole example.
        for side in ("local", "remote"):
            for name in _files(self.root / side):
                (self.root / side / name).unlink()

    # -- files

    @rule(name=st.sampled_from(POOL), data=st.binary(max_size=24))
    def save(self, name: str, data: bytes) -> None:
        self.saves += 1
        content = b"%d|" % self.saves + data
        stored = self.storage.save(name, ContentFile(content))
        assert stored not in self.live, f"save({name!r}) overwrote the live file {stored!r}"
        self.live[stored] = content
        self.deleted.discard(stored)
        self.doubtful.pop(stored, None)

    @rule(files=st.lists(st.tuples(st.sampled_from(POOL), st.binary(max_size=24)), min_size=2, max_size=4))
    def save_burst(self, files: list[tuple[str, bytes]]) -> None:
        """Saves close together, published as the background publisher (the default) sends
        them: grouped by :func:`publishing.coalesce` into several-file messages."""
        held: list[publishing.Message] = []
        with patch.object(publishing, "publish", lambda *message: held.append(message)):
            for name, data in files:
                self.save(name, data)
        for storage, names, host in publishing.coalesce(held, conf.BATCH_FILES):
            publishing.enqueue_many(storage, names, host)

    @rule(pick=st.integers(0, 20))
    def delete(self, pick: int) -> None:
        names = sorted(set(POOL) | set(self.live) | set(self.doubtful))
        name = names[pick % len(names)]
        data = self.live.pop(name, None) or self.doubtful.pop(name, None)
        try:
            self.storage.delete(name)
        except S3Down:
            if data is not None:
                self.doubtful[name] = data  # deleted or intact: the user may try again
        else:
            self.deleted.add(name)

    @rule(pick=st.integers(0, 20), how=st.sampled_from(["open", "url", "view", "exists", "size"]))
    def read(self, pick: int, how: str) -> None:
        """A read of a live name gets its bytes; of a deleted or unknown one, nothing."""
        names = sorted(set(POOL) | set(self.live) | self.deleted)
        name = names[pick % len(names)]
        if name in self.doubtful:
            return
        try:
            if name not in self.live:
                if how in ("open", "view"):
                    assert self._read(name, how) is None, f"{how} of the deleted {name!r} reads back"
            elif how == "exists":
                assert self.storage.exists(name), f"exists({name!r}) is False for a live file"
            elif how == "size":
                assert self.storage.size(name) == len(self.live[name])
            else:
                got = self._read(name, how)
                assert got == self.live[name], self._mismatch(name, how, got)
        except S3Down:
            # Only a read that goes to S3 may fail with it: a remote file, or an unknown name.
            record = transitions.get(self.storage.identity, name)
            assert name not in self.live or State.REMOTE in (self._cached(name), record and record.state), (
                f"{how} of {name!r}, whose copy is local, failed because S3 did"
            )

    # -- the worker

    def _task(self) -> Any:
        return publishing.resolve_task(self.storage.task)

    def _as_worker(self, message: Message, step: Callable[[], Any]) -> Any:
        """Run ``step`` as the task would within ``message``; a retry goes back to the broker."""
        task = self._task()
        task.push_request(
            id=f"m{id(message)}",
            args=list(message.args),
            kwargs=dict(message.kwargs),
            retries=message.retries,
            hostname=OWNER,
            is_eager=True,
            called_directly=False,
            delivery_info={},
        )
        try:
            return step()
        except Retry as retry:
            sig = retry.sig  # type: ignore[attr-defined]  # not in celery-types
            assert sig is not None
            self.env.broker.append(Message(tuple(sig.args), dict(sig.kwargs), int(sig.options["retries"])))
            return "retry"
        finally:
            task.pop_request()

    def _take(self, pick: int) -> Message:
        return self.env.broker.pop(pick % len(self.env.broker))

    @precondition(lambda self: self.env.broker)
    @rule(pick=st.integers(0, 20), stops_after=st.sampled_from([None, "claim", "copy", "switch", "more"]))
    def worker_takes_message(self, pick: int, stops_after: str | None) -> None:
        """A worker takes a message: the real task runs it through, or it goes step by step.

        Step by step, the worker then holds the message between two steps
        (after the claim, the copy, or the switch and before the local copy
        goes; or, with "more", once it has taken waiting files and before it
        copies them) until a later rule moves it on, stalls it or kills it.
        """
        message = self.env.broker.pop(pick % len(self.env.broker))
        self.delivered = [*self.delivered[-9:], message]
        if stops_after is None:
            with suppress(S3Down):  # the task failed: acked, its leases lapse in time
                self._as_worker(message, lambda: self._task().run(*message.args, **message.kwargs))
            return
        job = Job(message)
        self.jobs.append(job)
        if stops_after == "more":
            while job in self.jobs and not (job.taken and job.stage == "copy"):
                self._advance(job)
            return
        while job in self.jobs and job.stage != STAGES[STAGES.index(stops_after) + 1]:
            self._advance(job)

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 20))
    def worker_step(self, pick: int) -> None:
        """A worker holding a message takes its next step."""
        self._advance(self.jobs[pick % len(self.jobs)])

    def _advance(self, job: Job) -> None:
        try:
            done = self._as_worker(job.message, lambda: self._step(job))
        except S3Down:
            done = True  # the task failed: acked, its leases lapse in time
        if done:
            # As the task's ``finally``: the busy files go back when the message ends, even in error.
            for host, files, delay in busy_later(job.busy):
                publishing.enqueue_many(self.storage, files, host, countdown=delay)
            self.jobs.remove(job)

    def _step(self, job: Job) -> bool:
        """One step of the task, as Transfer.run and Mover.many take them; True when the job ends."""
        task = self._task()
        storage = self.storage
        mover = Mover(
            storage,
            copy=task._copier(),
            copy_name=f"{type(task).__name__}.transfer()",
            delete_local=task.delete_local,
            retries=task.request.retries if job.alone else 0,
            owner=OWNER,
        )
        if job.stage == "claim":
            outcomes = transitions.claim_many(storage.identity, job.message.files, OWNER)
            for (name, version), (outcome, record) in zip(job.message.files, outcomes, strict=True):
                if job.host is None and record is not None and record.version == version:
                    job.host = record.host
                if outcome is Claim.CLAIMED:
                    assert record is not None
                    job.claimed.append((name, version, record))
                elif outcome is Claim.BUSY and job.alone:
                    assert record is not None
                    publishing.enqueue(
                        storage,
                        name,
                        version,
                        record.host,
                        countdown=busy_wait(record),
                        retries=task.request.retries,
                    )
                elif outcome is Claim.BUSY:
                    assert record is not None
                    job.busy.append(
                        Outcome(name, version, Kind.BUSY, retry_after=busy_wait(record), host=record.host)
                    )
            job.stage = "copy" if job.claimed else "more"
            return job.alone and not job.claimed
        if job.stage == "copy":
            for name, version, record in job.claimed:
                if job.taken and job.failures:
                    # Mover.many gives the taken files back once a copy of its message failed.
                    mover._give_back(name, version, record)
                    continue
                copied, _ = mover._copy(name, record, lambda n: None)
                if isinstance(copied, Exception):
                    job.failures.append((name, version, copied))
                else:
                    job.landed.append((name, version, record, copied))
            job.stage = "switch"
            return False
        if job.stage == "switch":
            for name, version, exc in job.failures:
                failed = mover._failed(name, version, exc, retries=mover.retries)
                if failed.kind is Kind.RETRY and not job.taken:  # a taken file's is left to its message
                    if job.alone:
                        raise task.retry(exc=exc, countdown=failed.retry_after, max_retries=conf.RETRIES)
                    publishing.enqueue(
                        storage,
                        name,
                        version,
                        failed.host,
                        countdown=failed.retry_after,
                        retries=failed.retries,
                    )
            job.won = transitions.switch_many(
                storage.identity, [(n, v, copied.size, copied.checksum) for n, v, _, copied in job.landed]
            )
            job.stage = "finish"
            job.copied = job.copied or bool(job.landed)
            return not job.landed
        if job.stage == "finish":
            for (name, version, record, copied), won in zip(job.landed, job.won, strict=True):
                mover._settle(name, version, record, copied, 0.0, won)
            # Mover.many goes on to waiting files unless a copy failed.
            job.stage = "more"
            return job.alone or bool(job.failures)
        # more: the waiting files of the same host, claimed as Mover.many claims them,
        # one until a copy of this message has landed.
        if job.host is None:
            return True
        most = CLAIM_CHUNK if job.copied else 1
        taken = transitions.take_waiting(
            storage.identity, job.host, most=most, delayed=storage.delayed, owner=OWNER
        )
        job.claimed = [(record.name, record.version, record) for record in taken]
        job.failures, job.landed, job.won = [], [], []
        job.taken = True
        job.stage = "copy"
        return not job.claimed

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 20), redelivered=st.booleans())
    def worker_dies(self, pick: int, redelivered: bool) -> None:
        """The worker stops between two steps; its leases lapse when time passes."""
        job = self.jobs.pop(pick % len(self.jobs))
        if redelivered:  # acks_late: the broker gives the message to another worker
            self.env.broker.append(job.message)

    @precondition(lambda self: self.delivered)
    @rule(pick=st.integers(0, 20))
    def broker_delivers_again(self, pick: int) -> None:
        """A message taken before comes again, stale now (a visibility timeout, a lost ack)."""
        self.env.broker.append(self.delivered[pick % len(self.delivered)])

    @rule(stalled=st.none() | st.integers(0, 20))
    def time_passes(self, stalled: int | None) -> None:
        """Leases nobody renews lapse (dead workers', failed tasks'), and a stalled worker's."""
        if stalled is not None and self.jobs:
            self._lapse(self.jobs[stalled % len(self.jobs)].leases)
        self._lapse_orphaned_leases()

    def _lapse(self, leases: set[Any]) -> None:
        leases.discard(None)
        if leases:
            past = timezone.now() - timedelta(seconds=1)
            FileRecord.objects.filter(lease_until__in=leases).update(lease_until=past)

    def _lapse_orphaned_leases(self) -> None:
        held = set().union(*(job.leases for job in self.jobs)) if self.jobs else set()
        past = timezone.now() - timedelta(seconds=1)
        FileRecord.objects.filter(lease_until__gt=past).exclude(lease_until__in=held - {None}).update(
            lease_until=past
        )

    # -- faults

    @rule(
        op=st.sampled_from(("every request", *REMOTE_OPS)),
        when=st.sampled_from(["before", "after"]),
        count=st.integers(1, 3),
        skip=st.integers(0, 2),
    )
    def s3_fails(self, op: str, when: str, count: int, skip: int = 0) -> None:
        """S3 fails every request until it is back, or ``count`` of kind ``op`` after
        the next ``skip`` of them, "before" or "after" they take effect (the
        response is lost).  With ``skip``, a message's later copy fails after
        its first ones went through."""
        if op == "every request":
            FAULTS.s3_down = True
        else:
            FAULTS.s3_next[op] = (skip, count, when)

    @rule()
    def s3_back(self) -> None:
        FAULTS.s3_down = False
        FAULTS.s3_next.clear()

    @rule(event=st.sampled_from(["flushed", "unreachable", "back"]))
    def cache(self, event: str) -> None:
        """The cache loses every entry, or stops answering (keeping its entries), or answers again."""
        if event == "flushed":
            with FAULTS.suspend():
                caches["default"].clear()
        else:
            FAULTS.cache_down = event == "unreachable"

    @rule(down=st.booleans())
    def broker(self, down: bool) -> None:
        """The broker refuses messages (a publish fails and is logged), or takes them again."""
        FAULTS.broker_down = down

    # -- operations

    @rule(command=st.sampled_from(["requeue", "requeue --failed", "cleanup-local", "retry", "verify"]))
    def operator(self, command: str) -> None:
        """What ``manage.py queued_storage`` and the admin do."""
        if command in ("requeue --failed", "retry"):
            self.failed_for_good = {}  # the ways back from failed
        if command.startswith("requeue"):
            tasks.requeue(older_than=0, failed=command.endswith("--failed"))
        elif command == "cleanup-local":
            operations.cleanup_local(operations.cleanup_candidates(0), dry_run=False)
        elif command == "retry":
            operations.retry(FileRecord.objects.filter(storage=self.storage.identity))
        else:
            for record in FileRecord.objects.filter(storage=self.storage.identity, state=State.REMOTE):
                operations.verify(record)

    # -- reading

    def _read(self, name: str, how: str) -> bytes | None:
        """The bytes a reader gets for ``name`` by ``how``; None for a 404."""
        if how == "open":
            try:
                with self.storage.open(name) as fh:
                    return bytes(fh.read())
            except FileNotFoundError:
                return None
        if how == "url":
            return self._fetch(self.storage.url(name))
        return self._view(name)

    def _fetch(self, url: str) -> bytes | None:
        """GET ``url``: a file of either directory, or the serving view."""
        path = unquote(urlsplit(url).path)
        for prefix, directory in (("/local/", "local"), ("/remote/", "remote")):
            if path.startswith(prefix):
                target = self.root / directory / path[len(prefix) :]
                return target.read_bytes() if target.is_file() else None
        serve_url = self.storage.serve_url
        assert serve_url and path.startswith(serve_url), f"url() gave {url!r}, which nothing serves"
        return self._view(path[len(serve_url) :])

    def _view(self, name: str) -> bytes | None:
        request = RequestFactory().get(f"/{self.label}/{name}")
        try:
            response = serve(request, name, storage=self.label)
        except Http404:
            return None
        if isinstance(response, HttpResponseRedirect):
            return self._fetch(response["Location"])
        try:
            assert response.status_code == 200, f"the view answered {response.status_code} for {name!r}"
            return b"".join(response.streaming_content)  # type: ignore[attr-defined]
        finally:
            response.close()

    def _assert_absent(self, name: str) -> None:
        assert self._read(name, "open") is None, f"the deleted file {name!r} still opens"
        assert self._view(name) is None, f"the serving view still serves the deleted file {name!r}"

    def _mismatch(self, name: str, how: str, got: bytes | None) -> str:
        record = transitions.get(self.storage.identity, name)
        where = "a 404" if got is None else f"{got!r}"
        others = [n for n, data in self.live.items() if data == got and n != name]
        return (
            f"{how} of live {name!r} gave {where}, not {self.live[name]!r}"
            f"{f' (the bytes of {others[0]!r})' if others else ''}; record: "
            f"{record and (record.state, record.version, record.last_error)}, "
            f"cache: {self._cached(name)!r}, local: {self._copy('local', name)!r}, "
            f"remote: {self._copy('remote', name)!r}"
        )

    def _copy(self, side: str, name: str) -> bytes | None:
        target = self.root / side / name
        return target.read_bytes() if target.is_file() else None

    def _cached(self, name: str) -> Any:
        with FAULTS.suspend():
            return caches["default"].get(self.storage.get_cache_key(name))

    # -- invariants

    @invariant()
    def consistent(self) -> None:
        with FAULTS.suspend():
            self._check_copies()
        # Reads go through the cache as it is now, reachable or not.
        with FAULTS.suspend(cache=False):
            self._check_reads()

    def _check_copies(self) -> None:
        records = {r.name: r for r in FileRecord.objects.filter(storage=self.storage.identity)}
        # Failed for good stays failed, whatever message comes, until an operator
        # revives it or the user deletes it (a tombstone while a copy may remain).
        for name, version in self.failed_for_good.items():
            record = records.get(name)
            if record is not None and record.version == version:
                assert record.state in (State.FAILED, State.DELETED), (
                    f"{name!r} failed for good and is {record.state} now, revived by no operator"
                )
        self.failed_for_good = {n: r.version for n, r in records.items() if r.state == State.FAILED}
        for name, data in self.live.items():
            record = records.get(name)
            assert record is not None, f"the live file {name!r} has no record"
            local, remote = self._copy("local", name), self._copy("remote", name)
            if local is None:
                assert record.state == State.REMOTE and remote == data, (
                    f"the local copy of {name!r} is gone while the record is {record.state} "
                    f"and the remote holds {remote!r}, not {data!r}"
                )
            else:
                assert local == data, f"the local copy of {name!r} holds {local!r}, not {data!r}"
            cached = self._cached(name)
            if cached is None or cached == ABSENT:
                # An ``absent`` a save could not clear (the cache was down) routes no
                # read: a read checks it against the row (the reads below hold it).
                continue
            routed = remote if cached == State.REMOTE else local
            assert cached in (State.PENDING, State.TRANSFERRING, State.FAILED, State.REMOTE), (
                f"the cache says {cached!r} for the live file {name!r} (record: {record.state})"
            )
            assert routed == data, (
                f"the cache routes reads of {name!r} to its {cached} copy, which holds "
                f"{routed!r}, not {data!r} (record: {record.state})"
            )

    def _check_reads(self) -> None:
        for name, data in self.live.items():
            assert self.storage.exists(name), f"exists({name!r}) is False for a live file"
            for how in ("open", "url", "view"):
                got = self._read(name, how)
                assert got == data, self._mismatch(name, how, got)
            assert self.storage.size(name) == len(data), f"size({name!r}) is not {len(data)}"

    # -- settling

    def _settle(self) -> None:
        """Heal every fault, let time pass, run the sweeper and the worker until idle; then check."""
        FAULTS.heal()
        for job in list(self.jobs):  # live workers finish what they hold
            while job in self.jobs:
                self._advance(job)
        self._lapse_orphaned_leases()
        for _ in range(20):
            queued = tasks.requeue(older_than=0)
            for _ in range(200):
                if not self.env.broker:
                    break
                self.worker_takes_message(0, None)
            assert not self.env.broker, "the worker did not drain the broker"
            if not queued:
                break
        else:
            raise AssertionError("the sweeper kept finding work after 20 rounds")
        self._check_settled()

    def _check_settled(self) -> None:
        records = {r.name: r for r in FileRecord.objects.filter(storage=self.storage.identity)}
        remote, local = _files(self.root / "remote"), _files(self.root / "local")
        intact = {}
        for name, data in self.doubtful.items():
            if name in records:
                intact[name] = data
            else:
                assert name not in remote and name not in local, (
                    f"delete({name!r}) raised and dropped the record, but left "
                    f"{'the remote copy' if name in remote else 'the local copy'}"
                )
        live = {**self.live, **intact}
        for name in live:
            record = records[name]
            assert record.state == State.REMOTE or (record.state == State.FAILED and record.last_error), (
                f"{name!r} settled as {record.state} ({record.last_error!r}), neither remote nor failed "
                "with its error"
            )
        stray = sorted(set(records) - set(live))
        assert not stray, f"records of names that are not live: {[(n, records[n].state) for n in stray]}"
        assert remote <= set(live), f"remote objects no live record names: {sorted(remote - set(live))}"
        assert local <= set(live), f"local files of no live name: {sorted(local - set(live))}"
        self.live, self.doubtful = live, {}  # a delete that raised and kept the file did not happen
        for name in self.deleted - set(self.live):
            assert not self.storage.exists(name), f"exists() is True for the deleted {name!r}"
            self._assert_absent(name)
        self.consistent()

    def teardown(self) -> None:
        """Settle and check, unless a step failed already (its error is the one to report)."""
        if sys.exc_info()[0] is None:
            self._settle()
        FAULTS.heal()


def test_lifecycle(env: Env) -> None:
    """The machine; ``QS_HYPOTHESIS_EXAMPLES=5000`` runs it deeper."""
    Lifecycle.env = env
    run_state_machine_as_test(
        Lifecycle,
        settings=hsettings(
            max_examples=int(os.environ.get("QS_HYPOTHESIS_EXAMPLES", EXAMPLES)),
            stateful_step_count=int(os.environ.get("QS_HYPOTHESIS_STEPS", STEPS)),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- failing sequences the machine found, replayed


@pytest.fixture
def state(env: Env) -> Lifecycle:
    """A fresh machine (storage without ``delete_local`` or ``serve_url``) for one replayed sequence."""
    Lifecycle.env = env
    machine = Lifecycle()
    machine.variant(delete_local=False, serve_url=False)
    return machine


def test_a_stale_message_leaves_a_file_failed_for_good_failed(state: Lifecycle) -> None:
    state.s3_fails(op="every request", when="before", count=1)
    state.save(name="a.txt", data=b"x")
    state.worker_takes_message(pick=0, stops_after=None)  # fails: its retry is queued
    state.worker_takes_message(pick=0, stops_after=None)  # fails again: failed for good
    state.consistent()
    state.broker_delivers_again(pick=0)  # the first message, stale now
    state.s3_back()
    state.worker_takes_message(pick=0, stops_after="claim")
    state.consistent()
    state.teardown()


def test_a_file_failed_for_good_may_be_deleted_while_s3_is_down(state: Lifecycle) -> None:
    """Found by the model, in the model: a delete is the user's, not a revival; the tombstone settles."""
    state.save(name="a.txt", data=b"")
    state.s3_fails(op="every request", when="before", count=1)
    state.worker_takes_message(pick=0, stops_after=None)  # fails: its retry is queued
    state.worker_takes_message(pick=0, stops_after=None)  # fails again: failed for good
    state.consistent()
    state.delete(pick=0)  # raises: S3 is down
    state.consistent()
    state.teardown()


def test_a_new_upload_under_a_deleted_name_is_served(state: Lifecycle) -> None:
    state.delete(pick=0)  # a.txt, never saved: the cache says absent
    state.save(name="a.txt", data=b"")
    state.consistent()


def test_a_delete_failing_on_s3_leaves_the_file_whole_or_gone(state: Lifecycle) -> None:
    state.save(name="a.txt", data=b"")
    state.worker_takes_message(pick=0, stops_after=None)
    state.s3_fails(op="every request", when="before", count=1)
    state.delete(pick=0)  # raises: the remote copy could not be deleted
    state.teardown()


def test_a_file_deleted_while_a_dead_worker_held_it_leaves_nothing(state: Lifecycle) -> None:
    state.save(name="a.txt", data=b"")
    state.worker_takes_message(pick=0, stops_after="claim")
    state.worker_dies(pick=0, redelivered=False)
    state.delete(pick=0)  # its lease still runs: a tombstone
    state.teardown()


def test_a_delete_while_the_cache_is_down_does_not_misroute_a_new_upload(state: Lifecycle) -> None:
    state.save(name="a.txt", data=b"")
    state.worker_takes_message(pick=0, stops_after=None)  # remote, and cached so
    state.cache(event="unreachable")
    state.delete(pick=0)
    state.cache(event="back")
    state.save(name="a.txt", data=b"")
    state.consistent()


def test_a_delete_and_a_new_save_while_the_cache_is_down_do_not_misroute_the_new_file(
    state: Lifecycle,
) -> None:
    """Found by the model: the delete and the new save both lost their cache writes.

    The cache kept ``remote`` from before the delete, and the new file of the
    name was read from the deleted remote copy.  A delete now keeps its
    tombstone (the name stays taken) until the cache forgets the file.
    """
    state.save(name="a.txt", data=b"old")
    state.worker_takes_message(pick=0, stops_after=None)  # remote, and cached so
    state.read(pick=0, how="url")
    state.cache(event="unreachable")
    state.delete(pick=0)
    state.save(name="a.txt", data=b"new")
    state.consistent()
    state.cache(event="back")
    state.consistent()
    state.operator(command="requeue")  # the sweeper finishes the tombstone
    state.consistent()


def test_a_stalled_worker_does_not_make_a_new_file_of_the_same_name_fail(state: Lifecycle) -> None:
    state.save(name="a.txt", data=b"")
    state.worker_takes_message(pick=0, stops_after="claim")
    state.time_passes(stalled=0)  # its lease lapses while it still works
    state.delete(pick=0)  # no tombstone: the lease has lapsed
    state.save(name="a.txt", data=b"")  # the same name, free again
    for _ in range(3):  # the stalled worker copies what is now the new file, and loses the switch
        state.worker_step(pick=0)
    state.worker_takes_message(pick=0, stops_after=None)  # the new file's own message
    record = transitions.get(state.storage.identity, "a.txt")
    assert record is not None
    assert record.state == State.REMOTE, f"the new a.txt is {record.state}: {record.last_error}"


def test_a_message_finding_the_file_busy_comes_back_without_spending_a_retry(state: Lifecycle) -> None:
    # Busy as often as it takes (Celery's retry() stops at the task's max_retries), and each
    # time with the retries it came with: waiting is not a failed attempt.
    state.save(name="a.txt", data=b"")
    state.worker_takes_message(pick=0, stops_after="claim")
    state.worker_dies(pick=0, redelivered=True)
    for _ in range(5):  # the dead worker's lease still runs: busy every time
        state.worker_takes_message(pick=0, stops_after=None)
        assert [(m.files[0][0], m.retries) for m in state.env.broker] == [("a.txt", 0)]
    state.time_passes(stalled=None)
    state.teardown()


def test_files_taken_behind_a_failed_copy_go_back_untried(state: Lifecycle) -> None:
    """Two bursts, the first message takes the second's files, and the first copy of those fails."""
    state.save_burst([("a.txt", b"1"), ("b.txt", b"2")])
    state.save_burst([("d/c.bin", b"3"), ("a.txt", b"4")])
    state.worker_takes_message(pick=0, stops_after="more")
    [job] = state.jobs
    assert [name for name, _, _ in job.claimed] == ["d/c.bin", "a_r000001.txt"]
    state.consistent()
    state.s3_fails(op="save", when="before", count=1)
    state.worker_step(pick=0)  # the copies: the first fails, the second is not tried
    given_back = FileRecord.objects.get(name="a_r000001.txt")
    assert (given_back.state, given_back.attempts, given_back.lease_until) == (State.PENDING, 0, None)
    state.consistent()
    state.worker_step(pick=0)  # the failure recorded: left to its own message
    failed = FileRecord.objects.get(name="d/c.bin")
    assert (failed.state, failed.attempts, failed.lease_until) == (State.PENDING, 1, None)
    state.consistent()
    state.teardown()  # the second burst's message still carries both: they end remote
