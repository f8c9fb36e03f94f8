"""End to end on real parts: Redis broker and cache, a Celery worker process, moto's S3 over HTTP."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from queued_storage.models import FileRecord

from .conftest import s3_body, sha256, wait_for
from .testapp.models import Photo

pytestmark = pytest.mark.django_db(transaction=True)


def state_of(storage, name):
    return FileRecord.objects.get(storage=storage.key, name=name).state


def test_save_then_worker_switches_url_to_s3(start_worker, services, s3):
    start_worker()
    data = b"hello queued world\n" * 1000
    name = default_storage.save("docs/hello world+%.txt", ContentFile(data))
    assert default_storage.url(name) == "/media/docs/hello%20world%2B%25.txt"
    wait_for(lambda: state_of(default_storage, name) == "remote", what="remote")
    url = default_storage.url(name)
    assert url.startswith(services.s3_proxy.endpoint_url + "/qs-bucket/")
    assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)
    with default_storage.open(name) as fh:
        assert fh.read() == data
    status = default_storage.status(name)  # type: ignore[attr-defined]
    assert (status.state, status.size, status.attempts) == ("remote", len(data), 1)


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
    wait_for(lambda: state_of(storage, photo.image.name) == "remote", what="remote")
    url = Photo.objects.get().image.url
    assert url.startswith(services.s3_proxy.endpoint_url + "/qs-photos/img/")
    assert "Signature=" in url or "X-Amz-Signature=" in url
    wait_for(lambda: not __import__("os").path.exists(local_path), what="local copy deleted")
    assert s3_body(s3, "qs-photos", photo.image.name) == buf.getvalue()
