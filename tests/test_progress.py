"""Progress of a running copy through ``status()``, and the log line of each finished transfer."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage

from queued_storage import QueuedStorage

from .conftest import s3_body, sha256, transfer_now, wait_for

default_storage = cast(QueuedStorage, _default_storage)

pytestmark = pytest.mark.django_db(transaction=True)

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
    done = wait_for(lambda: default_storage.status(name).state == "remote", timeout=30, what="remote")
    assert done
    status = default_storage.status(name)
    assert (status.bytes_done, status.size, status.attempts) == (SIZE, SIZE, 1)
    assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)
    log = worker.log_text()
    assert f"queued_storage: transferred {name} ({SIZE} bytes) in " in log
    assert f"MB/s, attempt 1, by {worker.hostname}" in log


def test_one_structured_log_record_per_transfer(caplog):
    name = default_storage.save("progress/log.txt", ContentFile(b"logged" * 100))
    with caplog.at_level(logging.INFO, logger="queued_storage"):
        assert transfer_now(default_storage, name) == "remote"
        assert transfer_now(default_storage, name) == "done"  # a redelivery logs nothing more
    records = [r for r in caplog.records if hasattr(r, "queued_storage")]
    assert len(records) == 1
    fields = records[0].queued_storage
    assert fields["event"] == "transferred"
    assert (fields["name"], fields["size"], fields["attempts"]) == (name, 600, 1)
    assert fields["storage"] == default_storage.key
    assert fields["seconds"] >= 0 and fields["mb_per_s"] >= 0
    assert fields["worker"] and fields["host"]
    assert records[0].getMessage().startswith(f"queued_storage: transferred {name} (600 bytes) in ")
