"""Fault injection on real processes: no upload is ever lost.

Each test starts real Celery workers against the Redis and S3 endpoint of
tests/plugin.py and breaks something for real: SIGKILL, a stopped server, a
throttled link (the TCP proxy in front of moto).  Every test ends by reading
each file back from S3 and comparing checksums.  What it saved goes in a
ledger, whose row in artifacts/reliability.jsonl (for docs/reliability.rst) is
written when the test ends, passed or failed, with the files lost counted
afresh from moto.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from queued_storage.conf import conf
from queued_storage.models import FileRecord
from queued_storage.tasks import LOST_AFTER

from .conftest import s3_body, save_at_once, sha256, wait_for
from .plugin import BUCKETS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def record(name: str) -> FileRecord:
    return FileRecord.objects.get(storage=default_storage.identity, name=name)  # type: ignore[attr-defined]


def all_remote(names: list[str]) -> bool:
    return FileRecord.objects.filter(name__in=names, state="remote").count() == len(names)


@dataclass
class Ledger:
    """What one fault test saved (name -> SHA-256 of its bytes) and whether it passed its checks."""

    fault: str
    test: str
    saved: dict[str, str] = field(default_factory=dict)
    passed: bool = False

    def add(self, files: dict[str, bytes]) -> dict[str, bytes]:
        self.saved.update((name, sha256(data)) for name, data in files.items())
        return files


def lost_files(s3: Any, saved: dict[str, str]) -> list[str]:
    """The saved names the bucket lacks or holds with other bytes, read from moto past the proxy.

    Ground truth for the reliability table: neither the records nor the
    test's assertions, so it counts a loss even where a check missed it.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    lost = []
    for name, digest in saved.items():
        try:
            body = s3_body(s3, "qs-bucket", name)
        except (BotoCoreError, ClientError):  # no such key, or S3 unreachable: not found either way
            lost.append(name)
            continue
        if sha256(body) != digest:
            lost.append(name)
    return lost


def write_row(path: Path, ledger: Ledger, lost: list[str]) -> dict[str, Any]:
    """Append the outcome of one fault test to the JSON lines file behind the table."""
    row = {
        "fault": ledger.fault,
        "test": ledger.test,
        "db": os.environ.get("QS_DB", "sqlite"),
        "passed": ledger.passed,
        "saved": len(ledger.saved),
        "remote_verified": len(ledger.saved) - len(lost),
        "lost": len(lost),
        "lost_names": lost,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


@pytest.fixture
def ledger(s3: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Ledger]]:
    """Opens the ledger of a fault; its row is written when the test ends, whether it passed or not."""
    opened: list[Ledger] = []

    def open_ledger(fault: str) -> Ledger:
        opened.append(Ledger(fault, request.node.name))
        return opened[-1]

    try:
        yield open_ledger
    finally:
        for book in opened:
            write_row(ARTIFACTS / "reliability.jsonl", book, lost_files(s3, book.saved))


def verify(s3, files: dict[str, bytes], book: Ledger) -> None:
    """Every file is remote and byte-identical on S3; the ledger then records a pass."""
    for name, data in files.items():
        assert record(name).state == "remote"
        assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)
    assert set(files) == set(book.saved)
    book.passed = True


def save_many(n: int, size: int, prefix: str, book: Ledger | None = None) -> dict[str, bytes]:
    """Save ``n`` random files, each entered in ``book`` as soon as it is saved."""
    files = {}
    for i in range(n):
        data = os.urandom(size)
        saved = {default_storage.save(f"{prefix}/{i}.bin", ContentFile(data)): data}
        files.update(book.add(saved) if book is not None else saved)
    return files


def test_worker_child_killed_mid_copy(start_worker, services, s3, ledger):
    book = ledger("worker child SIGKILLed mid-copy")
    services.s3_proxy.bandwidth = 1_000_000
    worker = start_worker()
    files = save_many(1, 3_000_000, "kill-child", book)
    (name,) = files
    wait_for(lambda: record(name).state == "transferring", what="copy started")
    wait_for(lambda: services.s3_proxy.bytes_up > 500_000, what="part of the file sent")
    old = worker.child_pids()
    worker.kill_child()
    worker.wait_for_new_child(old)
    services.s3_proxy.bandwidth = None
    wait_for(lambda: all_remote(list(files)), timeout=60, what="redone after the child was killed")
    assert record(name).attempts >= 2
    verify(s3, files, book)


def test_worker_child_killed_mid_batch(start_worker, services, s3, settings, ledger):
    from queued_storage import publishing

    book = ledger("worker child SIGKILLed mid-way through a several-file message")
    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True  # a burst goes as several-file messages
    services.s3_proxy.bandwidth = 1_000_000
    worker = start_worker()
    with transaction.atomic():  # one commit: the ten go out as one message
        files = save_many(10, 200_000, "kill-batch", book)
    assert publishing.flush(5)
    names = list(files)
    # Killed with some files of its message copied and the rest still to go.
    wait_for(
        lambda: 0 < FileRecord.objects.filter(name__in=names, state="remote").count() < 8, what="halfway"
    )
    old = worker.child_pids()
    worker.kill_child()
    worker.wait_for_new_child(old)
    services.s3_proxy.bandwidth = None
    # Redelivered: the copied files are done, the rest come back when their leases lapse.
    wait_for(lambda: all_remote(names), timeout=60, what="all remote after the child was killed")
    assert max(record(name).attempts for name in names) >= 2
    verify(s3, files, book)


def test_whole_worker_killed_mid_copy_recovered_with_nobody_running_anything(
    start_worker, services, s3, ledger
):
    book = ledger("whole worker SIGKILLed mid-copy, new worker sweeps by itself")
    sweeping = {"QS_SWEEP_INTERVAL": "1"}
    services.s3_proxy.bandwidth = 1_000_000
    worker = start_worker(env=sweeping)
    files = save_many(2, 2_000_000, "kill-worker", book)
    wait_for(lambda: FileRecord.objects.filter(state="transferring").exists(), what="copy started")
    wait_for(lambda: services.s3_proxy.bytes_up > 500_000, what="part of a file sent")
    worker.kill()
    killed = time.monotonic()
    assert FileRecord.objects.filter(state="transferring").count() == 1
    services.s3_proxy.bandwidth = None
    start_worker(env=sweeping)
    # The dead worker's message stays unacknowledged in Redis until the
    # visibility timeout (an hour); the new worker's own sweep queues the file
    # again once its lease lapsed.  No command, no beat.
    budget = 2 * conf.LEASE + 30
    wait_for(
        lambda: all_remote(list(files)),
        timeout=killed + budget - time.monotonic(),
        what=f"all remote within {budget:.0f} s of the kill",
    )
    verify(s3, files, book)


def test_lost_messages_are_sent_again_by_a_thread_pool_worker_by_itself(
    start_worker, services, s3, broker, ledger
):
    book = ledger("transfer messages lost, thread-pool worker sweeps by itself")
    files = save_many(3, 10_000, "lost-messages", book)
    broker.flushdb()  # the messages are lost with the broker
    FileRecord.objects.filter(name__in=list(files)).update(
        updated_at=timezone.now() - timedelta(seconds=LOST_AFTER + 1)
    )
    # The thread pool runs tasks in the main process: its sweeper starts on worker_ready.
    start_worker(env={"QS_SWEEP_INTERVAL": "1"}, pool="threads", concurrency=2)
    wait_for(lambda: all_remote(list(files)), timeout=30, what="all remote with nobody running anything")
    verify(s3, files, book)


def _parts_uploaded(s3, key: str) -> int:
    """Parts S3 holds for incomplete multipart uploads of ``key`` (asked of moto, past the proxy)."""
    uploads = s3.list_multipart_uploads(Bucket="qs-bucket", Prefix=key).get("Uploads", [])
    return sum(
        len(s3.list_parts(Bucket="qs-bucket", Key=key, UploadId=u["UploadId"]).get("Parts", []))
        for u in uploads
        if u["Key"] == key
    )


def test_whole_worker_killed_mid_multipart_leaves_no_incomplete_upload(start_worker, services, s3, ledger):
    book = ledger("whole worker SIGKILLed mid-multipart, new worker + sweeper")
    small_parts = {"QS_S3_SMALL_PARTS": "1"}  # 5 MiB parts, one at a time
    services.s3_proxy.bandwidth = 2_000_000
    worker = start_worker(env=small_parts)
    files = save_many(1, 15 * 2**20, "kill-multipart", book)  # three parts
    (name,) = files
    wait_for(lambda: _parts_uploaded(s3, name) >= 1, timeout=60, what="a part uploaded")
    worker.kill()
    assert _parts_uploaded(s3, name) >= 1  # left behind by the killed worker
    services.s3_proxy.bandwidth = None
    start_worker(env=small_parts)
    wait_for(lambda: record(name).lease_until.timestamp() < time.time(), what="lease lapsed")
    call_command("queued_storage", "requeue", "--older-than", "0")
    wait_for(lambda: all_remote(list(files)), timeout=60, what="remote after the sweeper")
    assert record(name).attempts == 2
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="qs-bucket", Prefix=name)
    verify(s3, files, book)


def test_s3_endpoint_stopped_then_restarted(start_worker, services, s3, ledger):
    book = ledger("S3 endpoint stopped, then restarted")
    services.moto.stop()
    start_worker()
    files = save_many(4, 100_000, "s3-down", book)
    wait_for(
        lambda: FileRecord.objects.filter(name__in=list(files)).exclude(last_error="").count() == len(files),
        timeout=30,
        what="a failed attempt for every file",
    )
    for name, data in files.items():
        assert default_storage.url(name) == f"/media/{name}"
        with default_storage.open(name) as fh:
            assert fh.read() == data
    # Down for longer than a retry delay: a retry is claimed while S3 is still stopped.
    wait_for(
        lambda: FileRecord.objects.filter(name__in=list(files), attempts__gte=2).exists(),
        timeout=30,
        what="a retry during the outage",
    )
    services.moto.start(buckets=BUCKETS)
    wait_for(lambda: all_remote(list(files)), timeout=60, what="all remote after S3 came back")
    verify(s3, files, book)


def test_redis_down_while_saving_then_sweeper(start_worker, services, s3, ledger):
    book = ledger("Redis (broker and cache) stopped while saving, then sweeper")
    services.redis.stop()
    try:
        files = save_many(5, 10_000, "redis-down", book)  # every save succeeds
        assert FileRecord.objects.filter(name__in=list(files), state="pending").count() == 5
        for name in files:
            assert default_storage.url(name) == f"/media/{name}"
    finally:
        services.redis.start()
    start_worker()
    call_command("queued_storage", "requeue", "--older-than", "0")
    wait_for(lambda: all_remote(list(files)), timeout=60, what="all remote after Redis came back")
    verify(s3, files, book)


def test_publish_error_inside_on_commit_is_not_a_500(services):
    services.redis.stop()
    try:
        with transaction.atomic():
            name = default_storage.save("commit.txt", ContentFile(b"x"))
        # The commit went through and the on_commit publish failed quietly.
        assert record(name).state == "pending"
    finally:
        services.redis.start()


def test_cache_flushed_during_a_run(services, s3, start_worker, ledger):
    book = ledger("cache flushed during a run")
    # The worker runs the same settings (its storage has the same identity);
    # the S3 requests of this process alone are counted at its own client.
    start_worker()
    files = save_many(10, 200_000, "flush", book)
    cache = caches["default"]
    sent: list[str] = []
    client = default_storage.remote.connection.meta.client
    client.meta.events.register("before-send.s3", lambda request, **kw: sent.append(request.url))
    s3_url = services.s3_proxy.endpoint_url
    checked = 0
    deadline = time.monotonic() + 60
    while not all_remote(list(files)):
        assert time.monotonic() < deadline, "files not remote within 60 s"
        cache.clear()
        for name in files:
            before = record(name).state
            url = default_storage.url(name)
            if record(name).state == before:
                remote = url.startswith(s3_url)
                if before == "remote" and not remote:
                    # The row switched a moment before the worker's cache write
                    # (two systems, no shared commit): the local copy still
                    # serves, and the cache must catch up at once.
                    wait_for(
                        lambda name=name: default_storage.url(name).startswith(s3_url),
                        timeout=2,
                        what=f"the cache of {name} to follow its switch",
                    )
                else:
                    assert remote == (before == "remote"), (name, before, url)
                checked += 1
    assert checked > 0
    assert sent == []  # no read asked S3, flushed cache or not
    assert default_storage.remote.exists(next(iter(files))) and sent  # and the count sees a request
    verify(s3, files, book)


def test_rolled_back_save_never_transfers(start_worker, services, s3):
    import redis

    with pytest.raises(RuntimeError), transaction.atomic():
        default_storage.save("rollback.txt", ContentFile(b"x"))
        raise RuntimeError
    assert redis.Redis.from_url(services.redis.url + "/0").llen("celery") == 0
    start_worker()
    files = save_many(1, 10, "after-rollback")
    wait_for(lambda: all_remote(list(files)), what="the next file")
    assert not FileRecord.objects.filter(name="rollback.txt").exists()
    assert "Contents" not in s3.list_objects_v2(Bucket="qs-bucket", Prefix="rollback")


def test_delete_during_a_slow_copy_leaves_nothing(start_worker, services, s3):
    services.s3_proxy.bandwidth = 500_000
    start_worker()
    name = default_storage.save("deleted-mid-copy.bin", ContentFile(os.urandom(1_500_000)))
    wait_for(lambda: record(name).state == "transferring", what="copy started")
    default_storage.delete(name)
    # The worker holds the lease: the row stays as a tombstone for it to clean up.
    assert record(name).state == "deleted"
    with pytest.raises(FileNotFoundError):
        default_storage.status(name)
    services.s3_proxy.bandwidth = None
    wait_for(lambda: not FileRecord.objects.filter(name=name).exists(), timeout=30, what="record gone")
    assert "Contents" not in s3.list_objects_v2(Bucket="qs-bucket", Prefix="deleted-mid-copy")
    assert not Path(default_storage.local.path(name)).exists()


def test_same_name_saved_by_four_processes_at_once(start_worker, services, s3, tmp_path, ledger):
    book = ledger("same name saved concurrently by 4 processes")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    names = save_at_once("race/same.txt", 4, tmp_path, env)
    assert len(set(names)) == 4
    start_worker()
    contents = {}
    for name in names:
        with default_storage.local.open(name) as fh:
            contents[name] = fh.read()
    book.add(contents)
    assert sorted(c[:7] for c in contents.values()) == [b"writer0", b"writer1", b"writer2", b"writer3"]
    wait_for(lambda: all_remote(names), what="all remote")
    verify(s3, contents, book)


def test_local_file_removed_behind_the_apps_back(start_worker, services, broker):
    name = default_storage.save("vanished.txt", ContentFile(b"x"))
    os.remove(default_storage.local.path(name))
    worker = start_worker()
    wait_for(lambda: record(name).state == "failed", what="failed")
    # No retry storm: the task has ended, and a retry it scheduled would be in
    # the broker (queued, or held by the worker until its countdown) and logged.
    wait_for(lambda: "] succeeded in " in worker.log_text(), what="the task's end in the worker log")
    wait_for(lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 0, what="an empty broker")
    assert " retry" not in worker.log_text()
    rec = record(name)
    assert rec.attempts == 1
    assert "local copy of 'vanished.txt' is gone" in rec.last_error


def test_the_lost_column_counts_a_file_missing_or_changed_on_s3(s3, tmp_path):
    book = Ledger("a deliberately lost file", "unit")
    files = {"ledger/kept.bin": b"kept", "ledger/changed.bin": b"sent", "ledger/missing.bin": b"never sent"}
    book.add(files)
    s3.put_object(Bucket="qs-bucket", Key="ledger/kept.bin", Body=b"kept")
    s3.put_object(Bucket="qs-bucket", Key="ledger/changed.bin", Body=b"other bytes")
    lost = lost_files(s3, book.saved)
    assert lost == ["ledger/changed.bin", "ledger/missing.bin"]
    row = write_row(tmp_path / "reliability.jsonl", book, lost)
    written = json.loads((tmp_path / "reliability.jsonl").read_text())
    assert written == row
    assert (row["saved"], row["remote_verified"], row["lost"], row["passed"]) == (3, 1, 2, False)
