"""End to end on real parts: Redis broker and cache, a Celery worker process, moto's S3 over HTTP."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from queued_storage.models import FileRecord

from .conftest import s3_body, sha256, wait_for
from .testapp.models import Photo

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def state_of(storage, name):
    return FileRecord.objects.get(storage=storage.identity, name=name).state


@pytest.mark.integration
@pytest.mark.parametrize("background", [False, True], ids=["inline-publish", "default-background-publish"])
def test_save_then_worker_switches_url_to_s3(start_worker, services, s3, settings, background):
    if background:  # the default, which tests/settings.py turns off
        del settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND
    start_worker()
    data = b"hello queued world\n" * 1000
    folder = "bg" if background else "docs"
    name = default_storage.save(f"{folder}/hello world+%.txt", ContentFile(data))
    assert default_storage.url(name) == f"/media/{folder}/hello%20world%2B%25.txt"
    # What a user watches: the URL. The row turns remote a moment before the
    # worker's cache write, and url() reads the cache.
    s3_url = services.s3_proxy.endpoint_url + "/qs-bucket/"
    wait_for(lambda: default_storage.url(name).startswith(s3_url), what="url on S3")
    assert state_of(default_storage, name) == "remote"
    assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)
    with default_storage.open(name) as fh:
        assert fh.read() == data
    status = default_storage.status(name)
    assert (status.state, status.size, status.attempts) == ("remote", len(data), 1)


def test_a_burst_of_background_saves_travels_in_fewer_messages(start_worker, services, s3, settings):
    import re

    from queued_storage import publishing

    settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = True
    worker = start_worker()
    files = {f"burst/{i:02d}.txt": f"file {i}\n".encode() * 100 for i in range(25)}
    names = [default_storage.save(name, ContentFile(data)) for name, data in files.items()]
    assert publishing.flush(5)
    wait_for(lambda: all(state_of(default_storage, n) == "remote" for n in names), what="all remote")
    for name, data in files.items():
        assert s3_body(s3, "qs-bucket", name) == data
        assert default_storage.status(name).attempts == 1
    # Celery logs each task's result: "remote" for one file, "remote: N" for N
    # (with "done: M" for those of its own another message had taken from the table).
    results = re.findall(r"succeeded in [\d.]+s: '([^']*)'", worker.log_text())

    def copied_by(result: str) -> int:
        found = re.search(r"remote: (\d+)", result)
        return 1 if result == "remote" else int(found[1]) if found else 0

    copied = [n for n in map(copied_by, results) if n]
    assert sum(copied) == len(files) and max(copied) > 1 and len(copied) < len(files)


def test_cache_flush_answers_from_database_without_s3_requests(start_worker, services):
    worker = start_worker()
    remote = default_storage.save("a.txt", ContentFile(b"a"))
    wait_for(lambda: state_of(default_storage, remote) == "remote", what="remote")
    worker.stop()
    local = default_storage.save("b.txt", ContentFile(b"b"))  # stays pending: no worker runs
    caches["default"].clear()
    services.s3_proxy.reset_counts()
    for _ in range(20):
        assert default_storage.url(remote).startswith(services.s3_proxy.endpoint_url)
        default_storage.url(local)
    assert services.s3_proxy.count() == 0
    assert default_storage.url(local) == "/media/b.txt"


@pytest.mark.integration
def test_field_declared_storage_with_signed_urls_and_delete_local(start_worker, services, s3):
    import io

    from PIL import Image

    start_worker()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    photo = Photo.objects.create(image=ContentFile(buf.getvalue(), name="red.png"))
    storage = photo.image.storage
    assert photo.image.url.startswith("/media/photos/img/")
    local_path = storage.local.path(photo.image.name)
    s3_url = services.s3_proxy.endpoint_url + "/qs-photos/img/"
    url = wait_for(lambda: (u := Photo.objects.get().image.url).startswith(s3_url) and u, what="url on S3")
    assert state_of(storage, photo.image.name) == "remote"
    assert "Signature=" in url or "X-Amz-Signature=" in url
    wait_for(lambda: not __import__("os").path.exists(local_path), what="local copy deleted")
    assert s3_body(s3, "qs-photos", photo.image.name) == buf.getvalue()


def test_save_sends_nothing_to_s3(services):
    services.s3_proxy.reset_counts()
    for i in range(5):
        default_storage.save("same.txt", ContentFile(b"x" * i))
    assert services.s3_proxy.count() == 0
    assert FileRecord.objects.filter(state="pending").count() == 5


@pytest.mark.integration
def test_s3_outage_shorter_than_the_retries_recovers(start_worker, services, s3):
    services.s3_proxy.refuse()
    start_worker()
    name = default_storage.save("outage.txt", ContentFile(b"survives"))
    wait_for(lambda: FileRecord.objects.get(name=name).last_error, what="a failed attempt")
    # During the outage the local copy serves every read.
    assert default_storage.url(name) == f"/media/{name}"
    with default_storage.open(name) as fh:
        assert fh.read() == b"survives"
    services.s3_proxy.accept()
    wait_for(lambda: state_of(default_storage, name) == "remote", timeout=30, what="remote")
    assert FileRecord.objects.get(name=name).attempts >= 2
    assert s3_body(s3, "qs-bucket", name) == b"survives"


def test_s3_down_for_good_fails_visibly_then_requeue_recovers(start_worker, services, s3):
    from django.core.management import call_command

    services.s3_proxy.refuse()
    start_worker(env={"QS_RETRIES": "1"})
    name = default_storage.save("down.txt", ContentFile(b"later"))
    wait_for(lambda: state_of(default_storage, name) == "failed", timeout=30, what="failed")
    record = FileRecord.objects.get(name=name)
    assert record.attempts == 2
    kind, _, detail = record.last_error.partition(": ")
    # The refusing proxy resets the connection before or after the request went out.
    assert kind in ("EndpointConnectionError", "ConnectionClosedError"), record.last_error
    # The request of the last attempt: its PUT, or the retry's look for a multipart upload left over.
    assert "127.0.0.1" in detail and "/qs-bucket" in detail and name in detail, detail
    assert default_storage.url(name) == f"/media/{name}"
    services.s3_proxy.accept()
    call_command("queued_storage", "requeue", "--failed")
    wait_for(lambda: state_of(default_storage, name) == "remote", what="remote after requeue")
    assert s3_body(s3, "qs-bucket", name) == b"later"


@pytest.mark.integration
def test_task_message_carries_no_option_or_secret(services):
    import json

    import redis

    from .testapp.models import photos

    photos.save("secret.png", ContentFile(b"x" * 5_000_000))
    client = redis.Redis.from_url(services.redis.url + "/0")
    raw = client.lrange("celery", 0, -1)
    assert len(raw) == 1
    message = raw[0]
    assert b"s3cr3t-in-options" not in message and b"qs-photos" not in message
    envelope = json.loads(message)
    import base64

    body = base64.b64decode(envelope["body"])
    assert len(body) < 512
    args = json.loads(body)[0]
    assert args[0] == photos.identity and args[1] == "secret.png" and len(args) == 3


@pytest.mark.parametrize("name", ["ünïcödé ✓.txt", "with space.txt", "100%.txt", "a+b=c&d.txt", "empty.bin"])
def test_awkward_names_round_trip_to_s3_keys_and_urls(start_worker, s3, name):
    import urllib.request

    start_worker()
    data = b"" if name == "empty.bin" else name.encode() * 10
    saved = default_storage.save(f"odd/{name}", ContentFile(data))
    assert saved == f"odd/{name}"
    wait_for(lambda: default_storage.url(saved).startswith("http"), what="url on S3")
    assert state_of(default_storage, saved) == "remote"
    assert s3_body(s3, "qs-bucket", saved) == data  # the S3 key is the name, unmangled
    with urllib.request.urlopen(default_storage.url(saved)) as response:
        assert response.read() == data


@pytest.mark.integration
def test_delayed_storage_moves_only_on_transfer(start_worker):
    from .testapp.models import Legacy

    worker = start_worker()
    obj = Legacy.objects.create(file=ContentFile(b"wait for it", name="later.txt"))
    storage = obj.file.storage
    # Nothing was queued: a file saved after it reaches S3, and it was the only
    # message the worker received (one process, taking messages in order).
    after = default_storage.save("after-delayed.txt", ContentFile(b"queued"))
    wait_for(lambda: state_of(default_storage, after) == "remote", what="the file saved after it")
    assert worker.log_text().count("] received") == 1
    assert storage.status(obj.file.name).state == "pending"
    assert obj.file.transfer() is True
    wait_for(lambda: storage.status(obj.file.name).state == "remote", what="remote")
    # TransferAndDelete: the local copy goes after the switch, not with it.
    wait_for(lambda: not storage.local.exists(obj.file.name), what="local copy deleted")
    with storage.open(obj.file.name) as fh:
        assert fh.read() == b"wait for it"
