"""Progress of a running copy through ``status()``, and the log line of each finished transfer."""

from __future__ import annotations

import logging
import time
from typing import cast

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage

from queued_storage import QueuedStorage

from .conftest import s3_body, sha256, transfer_now, wait_for

default_storage = cast(QueuedStorage, _default_storage)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

SIZE = 20_000_000


def test_status_shows_bytes_done_mid_copy(start_worker, services, s3):
    # Lease 1.5 s: the worker's lease keeper writes progress every 0.5 s.
    # Small parts, one in memory: the worker reads the file as fast as S3 takes it.
    worker = start_worker(env={"QS_LEASE": "1.5", "QS_S3_SMALL_PARTS": "1"})
    services.s3_proxy.bandwidth = 6_000_000  # about 3.5 s for the file
    data = bytes(range(256)) * (SIZE // 256) + b"!" * (SIZE % 256)
    name = default_storage.save("progress/big.bin", ContentFile(data))

    def midway():
        status = default_storage.status(name)
        return status if status.state == "transferring" and 0 < status.bytes_done < SIZE else None

    seen = wait_for(midway, timeout=20, what="a copy seen mid-way")
    assert seen.size == SIZE
    assert default_storage.url(name).startswith("/media/")  # still served locally meanwhile
    wait_for(lambda: default_storage.status(name).state == "remote", timeout=30, what="remote")
    status = default_storage.status(name)
    assert (status.state, status.bytes_done, status.size, status.attempts) == ("remote", SIZE, SIZE, 1)
    assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)
    log = worker.log_text()
    assert f"queued_storage: transferred {name} ({SIZE} bytes) in " in log
    assert f"MB/s, attempt 1, by {worker.hostname}" in log


def test_the_lease_keeper_renews_a_file_until_it_is_discarded(settings):
    from queued_storage import threads, transitions
    from queued_storage.models import FileRecord

    settings.QUEUED_STORAGE_QUEUE = "nobody-consumes-this"
    name = default_storage.save("progress/lease.txt", ContentFile(b"x"))
    version = FileRecord.objects.get(name=name).version
    transitions.claim(default_storage.identity, name, version, owner="test")
    claimed = default_storage.status(name)
    settings.QUEUED_STORAGE_LEASE = 0.6  # a beat every 0.2 s
    keeper = threads.LeaseKeeper()
    keeper.start()
    progress = keeper.add(default_storage.identity, name, version)
    progress(123)

    def renewed():
        status = default_storage.status(name)
        return status if status.bytes_done == 123 else None

    assert wait_for(renewed, timeout=5, what="a heartbeat").updated_at > claimed.updated_at
    keeper.discard(default_storage.identity, name)
    # A second file added after the discard: every beat that renews it took its
    # list of files after the discard, so it must leave the first one alone.
    other = default_storage.save("progress/lease-other.txt", ContentFile(b"y"))
    other_version = FileRecord.objects.get(name=other).version
    transitions.claim(default_storage.identity, other, other_version, owner="test")
    keeper.add(default_storage.identity, other, other_version)(456)
    wait_for(lambda: default_storage.status(other).bytes_done == 456, timeout=5, what="the other's heartbeat")
    last = FileRecord.objects.get(name=name).lease_until
    renewed_at = FileRecord.objects.get(name=other).lease_until
    wait_for(
        lambda: FileRecord.objects.get(name=other).lease_until > renewed_at,
        timeout=5,
        what="another beat of the other file",
    )
    keeper.discard(default_storage.identity, other)
    assert FileRecord.objects.get(name=name).lease_until == last  # no longer renewed


def test_the_lease_keeper_outlives_an_invalid_lease_setting(settings, monkeypatch):
    import threading
    import types

    from queued_storage import threads

    settings.QUEUED_STORAGE_LEASE = -5
    keeper = threads.LeaseKeeper()
    beats: list[float] = []
    enough, never = threading.Event(), threading.Event()

    def sleep(seconds):
        if threading.current_thread() is not keeper:
            return time.sleep(seconds)
        beats.append(seconds)
        if len(beats) == 3:
            enough.set()
            never.wait()  # parks the thread for good: a daemon that touches nothing more

    fake = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    fake.sleep = sleep
    monkeypatch.setattr(threads, "time", fake)
    keeper.start()
    assert enough.wait(5), f"the keeper stopped beating: {beats}"
    assert keeper.is_alive()
    assert beats == [20.0, 20.0, 20.0]  # a third of the default lease, 60 s


def test_a_worker_names_a_setting_out_of_range_at_its_start(settings, caplog):
    from celery.signals import worker_init

    from queued_storage import tasks

    assert any(key[0] == "queued_storage.tasks.settings" for key, _ in worker_init.receivers)
    settings.QUEUED_STORAGE_LEASE = -5
    tasks.report_settings()
    assert "QUEUED_STORAGE_LEASE must be a positive number of seconds; got -5" in caplog.text


def test_one_structured_log_record_per_transfer(caplog):
    from celery.utils.nodenames import gethostname

    from queued_storage.conf import conf

    name = default_storage.save("progress/log.txt", ContentFile(b"logged" * 100))
    with caplog.at_level(logging.INFO, logger="queued_storage"):
        assert transfer_now(default_storage, name) == "remote"
        assert transfer_now(default_storage, name) == "done"  # a redelivery logs nothing more
    records = [r for r in caplog.records if hasattr(r, "queued_storage")]
    assert len(records) == 1
    fields = records[0].queued_storage
    assert fields["event"] == "transferred"
    assert (fields["name"], fields["size"], fields["attempts"]) == (name, 600, 1)
    assert fields["storage"] == default_storage.identity
    assert fields["seconds"] >= 0 and fields["mb_per_s"] >= 0
    assert (fields["worker"], fields["host"]) == (gethostname(), conf.HOST)
    assert records[0].getMessage().startswith(f"queued_storage: transferred {name} (600 bytes) in ")
