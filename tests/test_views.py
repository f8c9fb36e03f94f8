"""The stable URL view: local files streamed (Range, 304), remote ones redirected, bad names refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage
from django.core.files.storage import storages
from django.core.handlers.wsgi import WSGIHandler
from django.db import transaction
from django.http import FileResponse
from django.test import RequestFactory, override_settings

from queued_storage import QueuedStorage, views
from queued_storage.models import FileRecord
from queued_storage.views import BLOCK_SIZE, serve

from .conftest import transfer_now
from .testapp.models import photos

default_storage = cast(QueuedStorage, _default_storage)

DATA = bytes(range(256)) * 1000  # 256 000 bytes: several blocks

cache = caches["default"]


def only_staff(request, name):
    return request.user.is_staff


def body(response) -> bytes:
    return b"".join(response.streaming_content)


@pytest.fixture
def saved(db):
    name = default_storage.save("views/data.txt", ContentFile(DATA))
    yield name
    default_storage.delete(name)


def test_local_file_streamed_in_blocks_with_headers(client, saved):
    response = client.get(f"/files/{saved}")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/plain"
    assert response["Content-Length"] == str(len(DATA))
    assert response["Accept-Ranges"] == "bytes"
    assert response["ETag"].startswith('"')
    assert response["Last-Modified"].endswith("GMT")
    assert response["Content-Security-Policy"] == "sandbox"
    chunks = list(response.streaming_content)
    assert len(chunks) == -(-len(DATA) // BLOCK_SIZE)
    assert all(len(chunk) <= BLOCK_SIZE for chunk in chunks)
    assert b"".join(chunks) == DATA


def test_binary_with_newlines_is_not_split_by_lines(client, db):
    data = b"\n" * 300_000
    name = default_storage.save("views/newlines.bin", ContentFile(data))
    chunks = list(client.get(f"/files/{name}").streaming_content)
    assert len(chunks) == -(-len(data) // BLOCK_SIZE)
    assert b"".join(chunks) == data


def test_head_has_headers_and_no_body(client, saved):
    response = client.head(f"/files/{saved}")
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(DATA))
    assert body(response) == b""


def test_post_not_allowed(client, saved):
    assert client.post(f"/files/{saved}").status_code == 405


def test_conditional_get_304(client, saved):
    first = client.get(f"/files/{saved}")
    body(first)
    etag, modified = first["ETag"], first["Last-Modified"]
    assert client.get(f"/files/{saved}", headers={"If-None-Match": etag}).status_code == 304
    assert client.get(f"/files/{saved}", headers={"If-Modified-Since": modified}).status_code == 304
    changed = client.get(f"/files/{saved}", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert body(changed) == DATA


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=200000-", 200000, len(DATA) - 1),
        ("bytes=255990-999999", 255990, len(DATA) - 1),
        ("bytes=-999999", 0, len(DATA) - 1),
    ],
)
def test_range_206(client, saved, header, start, end):
    response = client.get(f"/files/{saved}", headers={"Range": header})
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response["Content-Length"] == str(end - start + 1)
    chunks = list(response.streaming_content)
    assert all(len(chunk) <= BLOCK_SIZE for chunk in chunks)
    assert b"".join(chunks) == DATA[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=256000-", "bytes=999999-1000000", "bytes=-0"])
def test_unsatisfiable_range_416(client, saved, header):
    response = client.get(f"/files/{saved}", headers={"Range": header})
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=abc"])
def test_unsupported_or_invalid_range_sends_everything(client, saved, header):
    response = client.get(f"/files/{saved}", headers={"Range": header})
    assert response.status_code == 200
    assert body(response) == DATA


def test_if_range(client, saved):
    head = client.head(f"/files/{saved}")
    etag = head["ETag"]
    body(head)
    fresh = client.get(f"/files/{saved}", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert (fresh.status_code, body(fresh)) == (206, DATA[:4])
    stale = client.get(f"/files/{saved}", headers={"Range": "bytes=0-3", "If-Range": '"old"'})
    assert (stale.status_code, body(stale)) == (200, DATA)


@pytest.mark.services  # the default storage's remote is S3
def test_unknown_and_deleted_names_404(client, saved):
    assert client.get("/files/views/nope.txt").status_code == 404
    default_storage.delete(saved)
    assert client.get(f"/files/{saved}").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2Fsecret.txt",
        "/files/views/..%2F..%2Fsecret.txt",
        "/files/%2E%2E/secret.txt",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/views%5C..%5C..%5Csecret.txt",
        "/files/views/a%00b.txt",
    ],
)
def test_traversal_never_leaves_the_storage(client, db, path):
    secret = Path(settings.MEDIA_ROOT).parent / "secret.txt"
    secret.write_bytes(b"top secret")
    response = client.get(path)
    assert response.status_code in (400, 404)
    content = body(response) if response.streaming else response.content
    assert b"top secret" not in content


@pytest.mark.django_db(transaction=True)
def test_remote_file_redirects_to_a_fresh_url(client, services):
    name = default_storage.save("views/remote.txt", ContentFile(b"remote bytes"))
    assert transfer_now(default_storage, name) == "remote"
    response = client.get(f"/files/{name}")
    assert response.status_code == 302
    # A signed URL carries its expiry second, so two signings may differ
    # there and in the signature; the object and the signing must agree.
    served, fresh = urlsplit(response["Location"]), urlsplit(default_storage.remote.url(name))
    assert served._replace(query="") == fresh._replace(query="")
    served_query, fresh_query = parse_qs(served.query), parse_qs(fresh.query)
    assert served_query.keys() == fresh_query.keys()
    assert abs(int(served_query["Expires"][0]) - int(fresh_query["Expires"][0])) <= 2
    assert response["Location"].startswith(services.s3_proxy.endpoint_url + "/qs-bucket/views/remote")
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True)
def test_private_bucket_redirect_is_signed_and_permission_hook(client, admin_client, services):
    name = photos.save("views/p.png", ContentFile(b"png"))
    assert client.get(f"/photos/{name}").status_code == 403  # tests.urls: only staff
    served = admin_client.get(f"/photos/{name}")
    assert (served.status_code, body(served)) == (200, b"png")
    transfer_now(photos, name)
    location = admin_client.get(f"/photos/{name}")["Location"]
    assert location.startswith(services.s3_proxy.endpoint_url + "/qs-photos/views/p")
    assert "Signature=" in location


def test_permission_setting_applies_to_every_storage(client, saved):
    with override_settings(QUEUED_STORAGE_SERVE_PERMISSION="tests.test_views.only_staff"):
        assert client.get(f"/files/{saved}").status_code == 403
    nowhere = override_settings(QUEUED_STORAGE_SERVE_PERMISSION="tests.test_views.nowhere")
    with nowhere, pytest.raises(ImproperlyConfigured, match="QUEUED_STORAGE_SERVE_PERMISSION"):
        client.get(f"/files/{saved}")


def test_serve_url_option_makes_url_stable(client, db):
    configured: dict[str, Any] = settings.STORAGES
    options = {**configured["default"]["OPTIONS"], "serve_url": "/files/"}
    stable = {**configured, "default": {**configured["default"], "OPTIONS": options}}
    before = cast(QueuedStorage, storages["default"]).identity
    with override_settings(STORAGES=stable):
        storage = cast(QueuedStorage, storages["default"])
        assert storage.identity == before  # the URL prefix is not part of where files are
        name = storage.save("views/a b+%.txt", ContentFile(b"stable"))
        url = storage.url(name)
        assert url == "/files/views/a%20b%2B%25.txt"
        assert body(client.get(url)) == b"stable"
        _, _, kwargs = storage.deconstruct()
        assert kwargs["serve_url"] == "/files/"
        assert QueuedStorage(**kwargs).url(name) == url
        storage.delete(name)


def test_serve_url_must_end_with_slash():
    with pytest.raises(ImproperlyConfigured, match="serve_url='/files'"):
        QueuedStorage(
            local="django.core.files.storage.FileSystemStorage",
            remote="storages.backends.s3.S3Storage",
            serve_url="/files",
        )


def test_unknown_storage_in_urls_is_a_configuration_error(db, rf):
    with pytest.raises(ImproperlyConfigured, match="storage='nope'"):
        serve(rf.get("/x"), "a.txt", storage="nope")


def test_served_from_disk_not_memory(rf, saved):
    """The response holds the open file, positioned at the start: nothing was read ahead."""
    response = cast(FileResponse, serve(rf.get(f"/files/{saved}"), saved))
    stream: Any = response.file_to_stream
    assert stream.tell() == 0
    assert os.path.samefile(stream.name, default_storage.local.path(saved))
    assert body(response) == DATA
    stream.close()


def _wsgi(path: str, **headers: str) -> tuple[str, dict[str, str], bytes, list[object]]:
    """One request through Django's real WSGI handler, with a server's wsgi.file_wrapper."""
    wrapped: list[object] = []

    class FileWrapper:
        def __init__(self, filelike, block_size):
            wrapped.append(filelike)
            self.filelike, self.block_size = filelike, block_size

        def __iter__(self):
            return iter(lambda: self.filelike.read(self.block_size), b"")

        def close(self):
            self.filelike.close()

    factory: Any = RequestFactory()
    environ = factory._base_environ(PATH_INFO=path, REQUEST_METHOD="GET", **headers)
    environ["wsgi.file_wrapper"] = FileWrapper
    started: list[tuple[str, list[tuple[str, str]]]] = []
    result = WSGIHandler()(environ, lambda status, headers: started.append((status, headers)))
    try:
        data = b"".join(result)
    finally:
        result.close()
    return started[0][0], dict(started[0][1]), data, wrapped


@pytest.mark.django_db(transaction=True)
def test_wsgi_file_wrapper_gets_the_file_and_ranges_stay_bounded():
    name = default_storage.save("views/wsgi.bin", ContentFile(DATA))
    status, headers, data, wrapped = _wsgi(f"/files/{name}")
    assert (status, data, headers["Content-Length"]) == ("200 OK", DATA, str(len(DATA)))
    # The server receives the open file itself (sendfile where it can).
    assert len(wrapped) == 1 and hasattr(wrapped[0], "fileno")
    status, headers, data, wrapped = _wsgi(f"/files/{name}", HTTP_RANGE="bytes=100-199")
    # A range is handed over without fileno(): a sendfile to the end of the file is impossible.
    assert (status, data) == ("206 Partial Content", DATA[100:200])
    assert not hasattr(wrapped[0], "fileno")


def allow_all(request, name):
    return True


@pytest.mark.services  # the default storage's remote is S3
@pytest.mark.django_db(transaction=True)
def test_a_file_nobody_recorded_is_404_and_stays_unrecorded(client):
    dropped = Path(default_storage.local.path("views/dropped.txt"))
    dropped.parent.mkdir(parents=True, exist_ok=True)
    dropped.write_bytes(b"dropped here by hand")
    # Another storage's file, its local directory nested inside this one's.
    nested = photos.save("views/nested.png", ContentFile(b"png"))
    assert Path(photos.local.path(nested)).is_relative_to(default_storage.local.location)
    try:
        for path in ("/files/views/dropped.txt", f"/files/photos/{nested}"):
            assert client.get(path).status_code == 404
            assert client.head(path).status_code == 404
        assert not FileRecord.objects.filter(storage=default_storage.identity).exists()
        assert cache.get(default_storage.get_cache_key("views/dropped.txt")) is None
        # The storage API still records a file saved before the app (see docs/migrating.rst) ...
        assert default_storage.status("views/dropped.txt").state == "pending"
        # ... and the view then serves it.
        assert body(client.get("/files/views/dropped.txt")) == b"dropped here by hand"
    finally:
        default_storage.delete("views/dropped.txt")
        photos.delete(nested)


@pytest.mark.django_db(transaction=True)
def test_a_name_probed_through_the_view_then_saved_is_served(client):
    assert client.get("/files/views/probed.txt").status_code == 404
    name = default_storage.save("views/probed.txt", ContentFile(b"new"))
    try:
        assert name == "views/probed.txt"
        response = client.get(f"/files/{name}")
        assert response.status_code == 200
        assert body(response) == b"new"
    finally:
        default_storage.delete(name)


@pytest.mark.services  # the default storage's remote is S3
@pytest.mark.django_db(transaction=True)
def test_a_cached_absent_does_not_hide_a_file_saved_since(client):
    name = "views/absent-then-saved.txt"
    key = default_storage.get_cache_key(name)
    with pytest.raises(FileNotFoundError):
        default_storage.size(name)  # a read through the storage API found it nowhere
    assert cache.get(key) == "absent"
    with transaction.atomic():
        assert default_storage.save(name, ContentFile(b"saved")) == name
    try:
        # The save leaves the cache alone (no round trip in the request) ...
        assert cache.get(key) == "absent"
        # ... and the first read checks the cached "absent" against the row.
        response = client.get(f"/files/{name}")
        assert response.status_code == 200
        assert body(response) == b"saved"
        assert cache.get(key) == default_storage.status(name).state != "absent"
    finally:
        default_storage.delete(name)


@pytest.mark.services  # the default storage's remote is S3
@pytest.mark.django_db(transaction=True)
def test_a_lookup_racing_a_save_of_the_name_does_not_hide_the_file(client, monkeypatch):
    name = "views/raced.txt"
    local = default_storage.local
    real_exists = local.exists
    raced: list[str] = []

    def exists_then_saved(path):
        found = real_exists(path)
        if path == name and not raced:
            # The lookup of an unknown name saw no local file; the save lands right after.
            raced.append(name)
            assert default_storage.save(name, ContentFile(b"raced")) == name
        return found

    monkeypatch.setattr(local, "exists", exists_then_saved)
    try:
        assert default_storage.using_local(name)
        assert raced == [name]
        assert cache.get(default_storage.get_cache_key(name)) in (None, "pending")
        response = client.get(f"/files/{name}")
        assert response.status_code == 200
        assert body(response) == b"raced"
    finally:
        monkeypatch.undo()
        default_storage.delete(name)


def test_files_behind_a_permission_are_private(client, saved):
    public = client.get(f"/files/{saved}")
    assert "Cache-Control" not in public  # a file anyone may fetch may be kept by a shared cache
    body(public)
    with override_settings(QUEUED_STORAGE_SERVE_PERMISSION="tests.test_views.allow_all"):
        full = client.get(f"/files/{saved}")
        assert (full.status_code, full["Cache-Control"]) == (200, "private")
        body(full)
        ranged = client.get(f"/files/{saved}", headers={"Range": "bytes=0-9"})
        assert (ranged.status_code, ranged["Cache-Control"]) == (206, "private")
        body(ranged)
        unchanged = client.get(f"/files/{saved}", headers={"If-None-Match": full["ETag"]})
        assert (unchanged.status_code, unchanged["Cache-Control"]) == (304, "private")


@pytest.mark.django_db(transaction=True)
def test_files_behind_the_permission_of_the_include_are_private(admin_client):
    name = photos.save("views/private.png", ContentFile(b"png"))
    try:
        response = admin_client.get(f"/photos/{name}")  # tests.urls: only staff
        assert (response.status_code, response["Cache-Control"]) == (200, "private")
        assert body(response) == b"png"
    finally:
        photos.delete(name)


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-9"}], ids=["full", "range"])
def test_the_file_is_closed_when_building_the_response_fails(rf, saved, monkeypatch, headers):
    opened: list[Any] = []
    real_open = default_storage.local.open
    monkeypatch.setattr(
        default_storage.local, "open", lambda *args: opened.append(real_open(*args)) or opened[-1]
    )

    def broken(*args, **kwargs):
        raise RuntimeError("building the response failed")

    monkeypatch.setattr(views, "FileResponse", broken)
    with pytest.raises(RuntimeError, match="building the response failed"):
        serve(rf.get(f"/files/{saved}", headers=headers), saved)
    assert len(opened) == 1 and opened[0].closed
