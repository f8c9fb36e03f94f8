"""copy_file() against moto's S3 server, through the request-counting proxy."""

from __future__ import annotations

import hashlib
import os
from unittest import mock

import pytest
from boto3.s3.transfer import TransferConfig
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from storages.backends.s3 import S3Storage

from queued_storage.transfer import LocalFileMissing, RemoteConflict, VerificationFailed, copy_file

from .conftest import s3_body

MiB = 1024 * 1024


@pytest.fixture
def local(tmp_path):
    return FileSystemStorage(location=str(tmp_path))


def test_small_file_is_one_put_verified_by_its_etag(local, services, s3):
    data = os.urandom(20_000)
    name = local.save("small/one.bin", ContentFile(data))
    services.s3_proxy.reset_counts()
    copied = copy_file(name, local, S3Storage())
    assert [method for method, _ in services.s3_proxy.requests] == ["PUT"]
    assert copied.size == len(data)
    assert copied.checksum == "md5:" + hashlib.md5(data).hexdigest()
    assert s3_body(s3, "qs-bucket", name) == data


def test_small_file_is_sent_without_waiting_for_100_continue(local, services, s3):
    remote = S3Storage()
    small = local.save("small/at-once.bin", ContentFile(os.urandom(20_000)))
    services.s3_proxy.reset_counts()
    copy_file(small, local, remote)
    assert services.s3_proxy.expecting == []  # one round trip: headers and body together
    # From 1 MiB the body again waits for the server's go-ahead.
    large = local.save("small/waits.bin", ContentFile(os.urandom(MiB)))
    copy_file(large, local, remote)
    assert services.s3_proxy.expecting == [("PUT", f"/qs-bucket/{large}")]
    # Every other request of the storage's client is sent as botocore sends it.
    remote.connection.meta.client.put_object(Bucket="qs-bucket", Key="theirs.bin", Body=b"x")
    assert services.s3_proxy.expecting[-1] == ("PUT", "/qs-bucket/theirs.bin")


def test_small_file_never_overwrites_a_foreign_remote_file(local, s3):
    s3.put_object(Bucket="qs-bucket", Key="small/taken.bin", Body=b"theirs")
    name = local.save("small/taken.bin", ContentFile(b"ours"))
    with pytest.raises(RemoteConflict):
        copy_file(name, local, S3Storage())
    assert s3_body(s3, "qs-bucket", name) == b"theirs"
    copy_file(name, local, S3Storage(), replace=True)  # our own partial copy of an earlier attempt
    assert s3_body(s3, "qs-bucket", name) == b"ours"


def test_large_file_goes_multipart_from_the_path_not_through_a_buffered_stream(local, s3):
    data = os.urandom(11 * MiB)
    name = local.save("big/parts.bin", ContentFile(data))
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    progress: list[int] = []
    with mock.patch("boto3.s3.inject.upload_fileobj", side_effect=AssertionError("buffered path")):
        copied = copy_file(name, local, S3Storage(transfer_config=config), progress=progress.append)
    assert copied.size == len(data)
    parts = [hashlib.md5(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    etag = hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert copied.checksum == "etag:" + etag  # verifiable later against the object's ETag
    assert progress[-1] == len(data)
    head = s3.head_object(Bucket="qs-bucket", Key=name)
    assert head["ETag"].strip('"') == etag
    assert head["ContentType"] == "application/octet-stream"
    assert s3_body(s3, "qs-bucket", name) == data


def test_gzip_remote_still_goes_through_s3storage_save(local):
    name = local.save("zipped/notes.css", ContentFile(b"body { color: red }\n" * 100))
    went = RuntimeError("went through S3Storage.save()")
    with mock.patch.object(S3Storage, "save", side_effect=went), pytest.raises(RuntimeError) as raised:
        copy_file(name, local, S3Storage(gzip=True))
    assert raised.value is went


def test_missing_local_file_is_permanent(local):
    with pytest.raises(LocalFileMissing, match="gone"):
        copy_file("never/saved.bin", local, S3Storage())


def _without_conditional_writes(client):
    """A client whose server answers If-None-Match with 501, as some S3-compatible servers do."""
    from botocore.exceptions import ClientError

    real = client.put_object

    def put_object(**kwargs):
        if "IfNoneMatch" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"}}, "PutObject")
        return real(**kwargs)

    return mock.patch.object(client, "put_object", side_effect=put_object)


def test_server_without_conditional_writes_still_gets_the_file(local, s3):
    remote = S3Storage()
    name = local.save("small/plain-server.bin", ContentFile(b"ours"))
    with _without_conditional_writes(remote.connection.meta.client):
        copied = copy_file(name, local, remote)
    assert copied.size == 4
    assert s3_body(s3, "qs-bucket", name) == b"ours"


def test_server_without_conditional_writes_still_never_overwrites(local, s3):
    s3.put_object(Bucket="qs-bucket", Key="small/theirs.bin", Body=b"theirs")
    remote = S3Storage()
    name = local.save("small/theirs.bin", ContentFile(b"ours"))
    with _without_conditional_writes(remote.connection.meta.client), pytest.raises(RemoteConflict):
        copy_file(name, local, remote)
    assert s3_body(s3, "qs-bucket", "small/theirs.bin") == b"theirs"


def test_large_file_whose_parts_do_not_match_is_not_verified(local, s3):
    name = local.save("big/bad.bin", ContentFile(os.urandom(11 * MiB)))
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    wrong = "0" * 32 + "-3"  # as if the bytes S3 stored were not the bytes of the file
    patched = mock.patch("queued_storage.transfer._multipart_etag", return_value=wrong)
    with patched, pytest.raises(VerificationFailed, match=wrong):
        copy_file(name, local, S3Storage(transfer_config=config))


def test_file_below_a_large_multipart_threshold_is_streamed_not_read_whole(local, services, s3):
    import tracemalloc

    data = os.urandom(20 * MiB)
    name = local.save("small/streamed.bin", ContentFile(data))
    # Straight to moto: the proxy's thread would count its own buffers.
    remote = S3Storage(
        endpoint_url=services.moto.endpoint_url,
        transfer_config=TransferConfig(multipart_threshold=5 * 1024 * MiB),
    )
    remote.connection.meta.client  # the client is built before measuring
    tracemalloc.start()
    try:
        copied = copy_file(name, local, remote)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copied.checksum == "md5:" + hashlib.md5(data).hexdigest()
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB held at once for a 20 MiB file"
    assert s3_body(s3, "qs-bucket", name) == data
