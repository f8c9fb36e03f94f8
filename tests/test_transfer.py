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

from queued_storage import remotes
from queued_storage.transfer import (
    Copied,
    LocalFileMissing,
    RemoteConflict,
    VerificationFailed,
    confirm_content,
    copy_file,
    remote_fingerprint,
)

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


def test_the_same_bytes_already_under_the_name_are_this_files_copy_not_a_conflict(local, s3):
    # A worker past its lease, or an attempt that completed before its worker died, put them there.
    s3.put_object(Bucket="qs-bucket", Key="small/same.bin", Body=b"ours")
    name = local.save("small/same.bin", ContentFile(b"ours"))
    copied = copy_file(name, local, S3Storage())
    assert (copied.size, copied.checksum) == (4, "md5:" + hashlib.md5(b"ours").hexdigest())
    assert copied.content_verified
    # Same size, other bytes: still another file's, never overwritten.
    s3.put_object(Bucket="qs-bucket", Key="small/other.bin", Body=b"them")
    name = local.save("small/other.bin", ContentFile(b"ours"))
    with pytest.raises(RemoteConflict):
        copy_file(name, local, S3Storage())
    assert s3_body(s3, "qs-bucket", name) == b"them"


def test_the_same_bytes_on_a_server_without_conditional_writes_are_this_files_copy(local, s3):
    s3.put_object(Bucket="qs-bucket", Key="small/plain-same.bin", Body=b"ours")
    remote = S3Storage()
    name = local.save("small/plain-same.bin", ContentFile(b"ours"))
    with _without_conditional_writes(remote.connection.meta.client):
        assert copy_file(name, local, remote).content_verified


def test_a_large_file_already_uploaded_in_the_same_parts_is_this_files_copy(local, s3):
    data = os.urandom(11 * MiB)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    name = local.save("big/same.bin", ContentFile(data))
    first = copy_file(name, local, S3Storage(transfer_config=config))
    with mock.patch("boto3.s3.transfer.create_transfer_manager", side_effect=AssertionError("sent again")):
        again = copy_file(name, local, S3Storage(transfer_config=config))
    assert again == first and again.content_verified
    changed = data[:-1] + bytes([data[-1] ^ 1])
    other = local.save("big/other.bin", ContentFile(changed))
    s3.upload_file(local.path(name), "qs-bucket", other, Config=config)  # same size, other bytes
    with pytest.raises(RemoteConflict):
        copy_file(other, local, S3Storage(transfer_config=config))


@pytest.mark.services  # the default storage's remote is S3
def test_the_same_bytes_in_any_other_remote_are_this_files_copy(local, tmp_path):
    remote = FileSystemStorage(location=str(tmp_path / "fs"))
    remote.save("fs/same.bin", ContentFile(b"plain"))
    name = local.save("fs/same.bin", ContentFile(b"plain"))
    copied = copy_file(name, local, remote)
    assert copied.checksum == "md5:" + hashlib.md5(b"plain").hexdigest() and copied.content_verified
    remote.save("fs/other.bin", ContentFile(b"other"))
    name = local.save("fs/other.bin", ContentFile(b"plain"))
    with pytest.raises(RemoteConflict):
        copy_file(name, local, remote)
    with remote.open(name) as theirs:
        assert theirs.read() == b"other"


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


@pytest.mark.services  # the default storage's remote is S3
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
    wrong = "AAAAAA==-3"  # as if the bytes S3 stored were not the bytes of the file
    patched = mock.patch("queued_storage.s3._composite_crc32", return_value=wrong)
    with patched, pytest.raises(VerificationFailed, match=wrong):
        copy_file(name, local, S3Storage(transfer_config=config))


def _multipart_etag_of(data: bytes, part: int) -> str:
    parts = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return hashlib.md5(b"".join(parts)).hexdigest() + f"-{len(parts)}"


def test_large_file_is_checked_by_the_crc32_s3_keeps_of_its_parts_without_an_md5_pass(local, s3):
    data = os.urandom(11 * MiB)
    name = local.save("big/crc.bin", ContentFile(data))
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with mock.patch("queued_storage.s3._multipart_etag", side_effect=AssertionError("an MD5 pass")):
        copied = copy_file(name, local, S3Storage(transfer_config=config))
    assert copied.content_verified
    assert copied.checksum == "etag:" + _multipart_etag_of(data, 5 * MiB)  # comparable later, as before
    assert s3_body(s3, "qs-bucket", name) == data


def _checked_by_the_etag(local, remote, data: bytes, stem: str) -> None:
    """A copy of ``data`` is verified by its multipart ETag, and one whose parts hash otherwise fails."""
    copied = copy_file(local.save(f"{stem}.bin", ContentFile(data)), local, remote)
    assert copied.content_verified and copied.checksum == "etag:" + _multipart_etag_of(data, 5 * MiB)
    other = local.save(f"{stem}-bad.bin", ContentFile(data))
    wrong = "0" * 32 + "-3"
    with (
        mock.patch("queued_storage.s3._multipart_etag", return_value=wrong),
        pytest.raises(VerificationFailed, match=wrong),
    ):
        copy_file(other, local, remote)


def test_a_client_that_sends_no_checksums_gets_the_etag_checked(local, s3):
    from botocore.config import Config

    data = os.urandom(11 * MiB)
    remote = S3Storage(
        transfer_config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
        client_config=Config(request_checksum_calculation="when_required"),
    )
    with mock.patch("queued_storage.s3._composite_crc32", side_effect=AssertionError("no CRC32 was sent")):
        _checked_by_the_etag(local, remote, data, "big/no-crc")


def test_a_server_that_keeps_no_crc32_gets_the_etag_checked_after_the_upload(local, s3):
    data = os.urandom(11 * MiB)
    remote = S3Storage(
        transfer_config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    )
    client = remote.connection.meta.client
    real = client.head_object

    def without_checksums(**kwargs):
        return {k: v for k, v in real(**kwargs).items() if not k.startswith("Checksum")}

    with mock.patch.object(client, "head_object", side_effect=without_checksums):
        _checked_by_the_etag(local, remote, data, "big/plain-server")


def test_file_below_a_large_multipart_threshold_is_streamed_not_read_whole(local, services, s3):
    import tracemalloc

    data = os.urandom(20 * MiB)
    name = local.save("small/streamed.bin", ContentFile(data))
    # Straight to moto: the proxy's thread would count its own buffers.
    remote = S3Storage(
        endpoint_url=services.moto.endpoint_url,
        transfer_config=TransferConfig(multipart_threshold=5 * 1024 * MiB),
    )
    assert remote.connection.meta.client  # the client is built before measuring
    tracemalloc.start()
    try:
        copied = copy_file(name, local, remote)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copied.checksum == "md5:" + hashlib.md5(data).hexdigest()
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB held at once for a 20 MiB file"
    assert s3_body(s3, "qs-bucket", name) == data


# -- what each remote's own hash checks


class _Missing(Exception):
    """What the Azure and Google SDKs raise for a missing blob: an exception with a 404 on it."""

    status_code = code = 404


class AzureLike(FileSystemStorage):
    """A local folder behind the API of django-storages' AzureStorage that the transfer reads."""

    def __init__(self, *args, content_md5: bytes | str | None = "computed", **kwargs):
        super().__init__(*args, **kwargs)
        self._md5 = content_md5

    @property
    def client(self):
        return self

    def _get_valid_path(self, name):
        return name

    def get_blob_client(self, path):
        return self._Blob(self, path)

    class _Blob:
        def __init__(self, storage, path):
            self.storage, self.path = storage, path

        def get_blob_properties(self):
            from types import SimpleNamespace

            if not self.storage.exists(self.path):
                raise _Missing("BlobNotFound")
            with self.storage.open(self.path) as fh:
                data = fh.read()
            md5 = hashlib.md5(data).digest() if self.storage._md5 == "computed" else self.storage._md5
            return SimpleNamespace(size=len(data), content_settings=SimpleNamespace(content_md5=md5))


class GcsLike(FileSystemStorage):
    """A local folder behind the API of django-storages' GoogleCloudStorage that the transfer reads."""

    bucket = object()  # it has one, as the real storage does: not to be taken for S3

    def __init__(self, *args, composite: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._composite = composite

    def _normalize_name(self, name):
        return name

    def _get_blob(self, name):
        import base64
        from types import SimpleNamespace

        if not self.exists(name):
            raise _Missing("404 No such object")
        with self.open(name) as fh:
            data = fh.read()
        md5 = None if self._composite else base64.b64encode(hashlib.md5(data).digest()).decode()
        return SimpleNamespace(size=len(data), md5_hash=md5)


@pytest.fixture(autouse=True)
def _fakes_declared():
    """The fakes are told apart by class, as the real storages are: declared Azure and Google Cloud."""
    remotes.register(AzureLike, remotes.AZURE)
    remotes.register(GcsLike, remotes.GOOGLE_CLOUD)
    yield
    remotes.unregister(AzureLike)
    remotes.unregister(GcsLike)


def test_azure_blob_is_verified_by_its_content_md5(local, tmp_path):
    data = os.urandom(5000)
    name = local.save("az/a.bin", ContentFile(data))
    copied = copy_file(name, local, AzureLike(location=str(tmp_path / "azure")))
    assert copied.content_verified
    assert copied.checksum == "md5:" + hashlib.md5(data).hexdigest()
    assert remote_fingerprint(AzureLike(location=str(tmp_path / "azure")), name) == (
        len(data),
        hashlib.md5(data).hexdigest(),
    )


def test_azure_blob_whose_content_md5_differs_is_not_verified(local, tmp_path):
    name = local.save("az/bad.bin", ContentFile(b"ours"))
    with pytest.raises(VerificationFailed, match="ETag " + "00" * 16):
        copy_file(name, local, AzureLike(location=str(tmp_path / "azure"), content_md5=bytes(16)))


def test_azure_blob_without_content_md5_is_checked_in_size_only(local, tmp_path):
    name = local.save("az/big.bin", ContentFile(b"uploaded in blocks"))
    copied = copy_file(name, local, AzureLike(location=str(tmp_path / "azure"), content_md5=None))
    assert not copied.content_verified


def test_gcs_object_is_verified_by_its_md5_hash(local, tmp_path):
    data = os.urandom(5000)
    name = local.save("gcs/a.bin", ContentFile(data))
    copied = copy_file(name, local, GcsLike(location=str(tmp_path / "gcs")))
    assert copied.content_verified
    md5 = hashlib.md5(data).hexdigest()
    assert remote_fingerprint(GcsLike(location=str(tmp_path / "gcs")), name) == (len(data), md5)
    composite = copy_file(name, local, GcsLike(location=str(tmp_path / "gcs2"), composite=True))
    assert not composite.content_verified


def test_a_missing_blob_is_file_not_found(tmp_path):
    for remote in (AzureLike(location=str(tmp_path)), GcsLike(location=str(tmp_path))):
        with pytest.raises(FileNotFoundError):
            remote_fingerprint(remote, "never/there.bin")


def test_any_other_remote_is_checked_in_size_only(local, tmp_path):
    name = local.save("fs/a.bin", ContentFile(b"plain"))
    copied = copy_file(name, local, FileSystemStorage(location=str(tmp_path / "fs")))
    assert copied.checksum == "md5:" + hashlib.md5(b"plain").hexdigest()  # of the bytes sent
    assert not copied.content_verified


def test_s3_copies_are_verified_in_content(local, s3):
    small = copy_file(local.save("s3/small.bin", ContentFile(b"x" * 100)), local, S3Storage())
    assert small.content_verified  # Content-MD5, checked by S3
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    name = local.save("s3/large.bin", ContentFile(os.urandom(6 * MiB)))
    assert copy_file(name, local, S3Storage(transfer_config=config)).content_verified  # multipart ETag


def test_an_sse_kms_etag_is_not_taken_for_an_md5(s3):
    s3.put_object(Bucket="qs-bucket", Key="kms/a.bin", Body=b"secret", ServerSideEncryption="aws:kms")
    assert remote_fingerprint(S3Storage(), "kms/a.bin") == (6, None)


def test_a_small_sse_kms_copy_is_verified_by_content_md5_not_its_etag(local):
    remote = S3Storage()
    client = remote.connection.meta.client
    name = local.save("kms/small.bin", ContentFile(b"abc"))
    kms = {"ETag": '"' + "f" * 32 + '"', "ServerSideEncryption": "aws:kms"}  # no digest of the bytes
    with mock.patch.object(client, "put_object", return_value=kms):
        copied = copy_file(name, local, remote)
    assert copied.content_verified and copied.checksum == "md5:" + hashlib.md5(b"abc").hexdigest()


def test_confirm_content_reads_back_a_copy_without_a_hash(local, tmp_path):
    remote = FileSystemStorage(location=str(tmp_path / "fs"))
    name = local.save("back/a.bin", ContentFile(b"same size"))
    copied = copy_file(name, local, remote)
    assert confirm_content(name, local, remote, copied).content_verified
    os.remove(remote.path(name))
    remote.save(name, ContentFile(b"SAME SIZE"))
    with pytest.raises(VerificationFailed, match="read back"):
        confirm_content(name, local, remote, copied)
    # Without an MD5 of the bytes sent, the local file's is the one to match.
    with pytest.raises(VerificationFailed, match=hashlib.md5(b"same size").hexdigest()):
        confirm_content(name, local, remote, Copied(size=9, checksum=""))


def _incomplete(s3, prefix):
    uploads = s3.list_multipart_uploads(Bucket="qs-bucket", Prefix=prefix).get("Uploads", [])
    return sorted(upload["Key"] for upload in uploads)


def test_a_retry_aborts_the_multipart_uploads_an_earlier_attempt_left(local, s3):
    data = os.urandom(6 * MiB)
    name = local.save("big/left.bin", ContentFile(data))
    for key in (name, name, name + ".other"):  # two of an earlier attempt, one of another key
        upload = s3.create_multipart_upload(Bucket="qs-bucket", Key=key)
        s3.upload_part(Bucket="qs-bucket", Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x")
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    copy_file(name, local, S3Storage(transfer_config=config))
    assert _incomplete(s3, name) == [name, name, name + ".other"]  # a first attempt leaves them
    copy_file(name, local, S3Storage(transfer_config=config), replace=True)
    assert _incomplete(s3, name) == [name + ".other"]
    assert s3_body(s3, "qs-bucket", name) == data
