"""Several web hosts, each with its own disk: every file is copied by the worker of its own host.

Two hosts are simulated on this machine: two media directories, two Celery
workers whose settings say which host they are on (``QS_HOST``,
``QS_MEDIA_ROOT``), each consuming only its host's queue; one Redis, one S3.
The test process plays the web server of either host by switching the same
two settings. A transfer routed to the wrong host would find no local file
and fail at once, so "all remote" already proves the routing; the worker logs
show who copied what.
"""

from __future__ import annotations

from typing import cast

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage
from django.core.management import call_command
from django.test import override_settings

from queued_storage import QueuedStorage, transitions
from queued_storage.models import FileRecord
from queued_storage.publishing import queue_for

from .conftest import s3_body, wait_for

default_storage = cast(QueuedStorage, _default_storage)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

PATTERN = "transfers.{host}"


def test_queue_for_is_the_one_routing_rule():
    assert queue_for("web-a") is None  # default: Celery's default queue
    with override_settings(QUEUED_STORAGE_QUEUE="files"):
        assert queue_for("web-a") == "files"
    with override_settings(QUEUED_STORAGE_HOST_QUEUE=PATTERN, QUEUED_STORAGE_QUEUE="files"):
        assert queue_for("web-a") == "transfers.web-a"
        assert queue_for("") == "files"
    from queued_storage.conf import problems

    # A pattern without {host} is named by check E007 and reads as unset meanwhile.
    with override_settings(QUEUED_STORAGE_HOST_QUEUE="transfers", QUEUED_STORAGE_QUEUE="files"):
        assert queue_for("web-a") == "files"
        assert [p.split(" must")[0] for p in problems()] == ["QUEUED_STORAGE_HOST_QUEUE"]


def test_each_file_is_copied_by_the_worker_of_its_host(start_worker, tmp_path, s3, broker):
    hosts = {"web-a": tmp_path / "a", "web-b": tmp_path / "b"}
    workers = {
        host: start_worker(
            env={"QS_HOST": host, "QS_MEDIA_ROOT": str(media), "QS_HOST_QUEUE": PATTERN},
            hostname=f"worker@{host}",
            queues=[PATTERN.format(host=host)],
        )
        for host, media in hosts.items()
    }
    files: dict[str, dict[str, bytes]] = {host: {} for host in hosts}
    with override_settings(QUEUED_STORAGE_HOST_QUEUE=PATTERN):
        for host, media in hosts.items():
            with override_settings(QUEUED_STORAGE_HOST=host, MEDIA_ROOT=str(media)):
                # Saved and queued the usual way.
                for i in range(3):
                    data = f"{host} file {i}\n".encode() * 50
                    files[host][default_storage.save(f"hosts/{i}.txt", ContentFile(data))] = data
                # Recorded, but the message was never published: the sweeper's job.
                data = f"{host} stranded\n".encode()
                name = default_storage.local.save(
                    default_storage.get_available_name("hosts/stranded.txt"), ContentFile(data)
                )
                transitions.record_saved(default_storage.identity, name, len(data))
                files[host][name] = data
                # Failed for good: the retry command's job.
                data = f"{host} failed\n".encode()
                name = default_storage.local.save(
                    default_storage.get_available_name("hosts/failed.txt"), ContentFile(data)
                )
                rec = transitions.record_saved(default_storage.identity, name, len(data))
                transitions.claim(rec.storage, name, rec.version, owner="test")
                transitions.release(rec.storage, name, rec.version, error="S3 was down", failed=True)
                files[host][name] = data
        # Both hosts save the same names: each host has its own disk, the
        # storage gives the second host's files free names.
        assert set(files["web-a"]).isdisjoint(files["web-b"])
        call_command("queued_storage", "requeue", "--older-than", "0")
        call_command("queued_storage", "retry", "--failed")

    everything = {name: data for per_host in files.values() for name, data in per_host.items()}
    wait_for(
        lambda: FileRecord.objects.filter(name__in=everything, state="remote").count() == len(everything),
        timeout=40,
        what="every file remote",
    )
    assert not FileRecord.objects.filter(state="failed").exists()
    for name, data in everything.items():
        assert s3_body(s3, "qs-bucket", name) == data
    for host, worker in workers.items():
        log = worker.log_text()
        for name in files[host]:
            assert f"transferred {name} (" in log and f"by worker@{host}" in log
        other = next(h for h in hosts if h != host)
        for name in files[other]:
            assert f"transferred {name} (" not in log
    for host in hosts:
        assert FileRecord.objects.filter(host=host).count() == 5
