"""Copy one file from a local to a remote storage and verify the copy.

Knows nothing of Celery or of the location records: a plain function the
task (and anyone else) can call.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage

logger = logging.getLogger("queued_storage")


class TransferError(Exception):
    """A copy that did not succeed; worth retrying."""


class PermanentTransferError(TransferError):
    """A copy that cannot succeed by retrying; the file is marked ``failed`` at once."""


class LocalFileMissing(PermanentTransferError):
    """The local copy vanished before it reached the remote storage."""


class RemoteConflict(PermanentTransferError):
    """The remote storage already holds a different file under the same name."""


class VerificationFailed(TransferError):
    """The remote copy does not match what was sent."""


@dataclass(frozen=True)
class Copied:
    size: int
    checksum: str  # "md5:<hex>" of the bytes sent, or "etag:<S3 multipart ETag>"
    # Whether the remote copy's content was checked against the bytes sent
    # (a hash the remote computed, or the copy read back), not only its size.
    content_verified: bool = False


Progress = Callable[[int], None]

# What one read of a local or remote file takes at most while it is hashed.
_CHUNK = 1024 * 1024


class _MeteredReader(io.RawIOBase):
    """A read-only view of a file that hashes what passes through and reports progress.

    Hashes stay valid only for bytes read in order; a re-read after a seek back
    (boto3 may rewind to retry) is not hashed twice.
    """

    def __init__(self, raw: IO[bytes], part_size: int | None, progress: Progress | None) -> None:
        super().__init__()
        self._raw = raw
        self._pos = 0
        self._hashed = 0
        self._broken = False
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._part_size = part_size
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._part_fill = 0
        self._part_digests: list[bytes] = []
        self._progress = progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._raw.seek(offset, whence)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._account(data)
        return n

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        start, end = self._pos, self._pos + len(data)
        self._pos = end
        if start > self._hashed:
            self._broken = True
        elif end > self._hashed and not self._broken:
            fresh = memoryview(data)[self._hashed - start :]
            self._md5.update(fresh)
            self._feed_parts(fresh)
            self._hashed = end
            if self._progress is not None:
                self._progress(self._hashed)

    def _feed_parts(self, data: memoryview) -> None:
        if not self._part_size:
            return
        while data:
            take = min(len(data), self._part_size - self._part_fill)
            self._part_md5.update(data[:take])
            self._part_fill += take
            data = data[take:]
            if self._part_fill == self._part_size:
                self._part_digests.append(self._part_md5.digest())
                self._part_md5 = hashlib.md5(usedforsecurity=False)
                self._part_fill = 0

    def digests(self) -> tuple[str | None, str | None]:
        """MD5 of the whole stream and its S3 multipart ETag, or None if unknown."""
        if self._broken:
            return None, None
        parts = list(self._part_digests)
        if self._part_fill:
            parts.append(self._part_md5.digest())
        multipart = None
        if len(parts) > 1:
            joined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
            multipart = f"{joined}-{len(parts)}"
        return self._md5.hexdigest(), multipart


def _s3_object(remote: Storage, name: str) -> Any | None:
    """The boto3 ``Object`` behind ``name`` when the remote is django-storages' S3Storage."""
    if not all(hasattr(remote, a) for a in ("bucket", "_normalize_name", "_get_write_parameters")):
        return None
    from storages.utils import clean_name

    s3: Any = remote
    return s3.bucket.Object(s3._normalize_name(clean_name(name)))


def _is_azure(remote: Storage) -> bool:
    """Whether ``remote`` is django-storages' AzureStorage (told by its API, so no SDK import)."""
    return hasattr(remote, "client") and hasattr(remote, "_get_valid_path")


def _is_gcs(remote: Storage) -> bool:
    """Whether ``remote`` is django-storages' GoogleCloudStorage."""
    return hasattr(remote, "_get_blob") and hasattr(remote, "_normalize_name")


def _etag_is_digest(sse: str | None, sse_customer_algorithm: str | None) -> bool:
    """Whether S3 made the object's ETag from its bytes: not for SSE-KMS, DSSE-KMS or SSE-C."""
    return not sse_customer_algorithm and not str(sse or "").startswith("aws:kms")


def _stamp(local: Storage, name: str) -> tuple[int, int] | None:
    """Size and mtime of a file on disk, to notice it being replaced during the copy."""
    try:
        st = os.stat(local.path(name))
    except (NotImplementedError, OSError):
        return None
    return st.st_size, st.st_mtime_ns


def _part_size(remote: Storage) -> int | None:
    config = getattr(remote, "transfer_config", None)
    return getattr(config, "multipart_chunksize", None)


def remote_fingerprint(remote: Storage, name: str) -> tuple[int, str | None]:
    """Size of the remote copy and the hash the remote keeps of its content, if any: one request.

    The hash is a hex MD5, or S3's multipart ETag (``<hex>-<parts>``): the
    ETag on S3 unless the object is encrypted with SSE-KMS or SSE-C (its ETag
    is then no digest of the bytes), the blob's Content-MD5 on Azure (set
    for a blob uploaded in one request), the object's md5Hash on Google Cloud
    Storage (none for a composite object).  None for any other storage.
    """
    obj = _s3_object(remote, name)
    if obj is not None:
        obj.load()
        etag = str(obj.e_tag).strip('"')
        digest = _etag_is_digest(obj.server_side_encryption, obj.sse_customer_algorithm)
        return int(obj.content_length), etag if digest else None
    other: Any = remote  # AzureStorage or GoogleCloudStorage, known by their API alone
    try:
        if _is_azure(remote):
            blob = other.client.get_blob_client(other._get_valid_path(name)).get_blob_properties()
            md5 = blob.content_settings.content_md5
            return int(blob.size), bytes(md5).hex() if md5 else None
        if _is_gcs(remote):
            from storages.utils import clean_name

            blob = other._get_blob(other._normalize_name(clean_name(name)))
            return int(blob.size), base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
    except Exception as exc:
        if 404 in (getattr(exc, "status_code", None), getattr(exc, "code", None)):
            raise FileNotFoundError(f"The remote storage has no file named {name!r}.") from exc
        raise
    return remote.size(name), None


def remote_md5(remote: Storage, name: str) -> tuple[str, int]:
    """The MD5 (hex) and size of the remote copy, read back a chunk at a time: one download."""
    obj = _s3_object(remote, name)
    if obj is not None:
        from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS

        s3: Any = remote
        # The SSE-C key, if any, as S3Storage.open() would send it.
        params = {k: v for k, v in s3.get_object_parameters(name).items() if k in ALLOWED_DOWNLOAD_ARGS}
        body = obj.get(**params)["Body"]  # streamed, with no temporary copy
        try:
            digest, size = _md5_of_chunks(iter(lambda: body.read(_CHUNK), b""))
        finally:
            body.close()
    else:
        with remote.open(name, "rb") as fh:
            digest, size = _md5_of_chunks(iter(lambda: fh.read(_CHUNK), b""))
    return digest.hexdigest(), size


def local_md5(local: Storage, name: str) -> str:
    """The MD5 (hex) of the local copy, read a chunk at a time."""
    with local.open(name, "rb") as fh:
        digest, _ = _md5_of_chunks(iter(lambda: fh.read(_CHUNK), b""))
    return digest.hexdigest()


def confirm_content(name: str, local: Storage, remote: Storage, copied: Copied) -> Copied:
    """``copied`` once its content is checked: by the remote's own hash if it was, else read back.

    For a local copy about to be deleted.  The remote copy must hash to the
    MD5 of the bytes sent, or, where that is not known (a multipart copy, a
    copy by a ``transfer()`` override), to the local file's.
    """
    if copied.content_verified:
        return copied
    sent = copied.checksum.removeprefix("md5:") if copied.checksum.startswith("md5:") else ""
    want = sent or local_md5(local, name)
    got, size = remote_md5(remote, name)
    if (got, size) != (want, copied.size):
        raise VerificationFailed(
            f"The remote copy of {name!r} read back has {size} bytes with MD5 {got}, but the bytes "
            f"sent are {copied.size} with MD5 {want}; it was not switched in, the local copy is "
            "kept, and it will be sent again."
        )
    return Copied(size=size, checksum=f"md5:{got}", content_verified=True)


class _ProgressSubscriber:
    """Feeds s3transfer's progress events to a :data:`Progress` callback as a running total."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._done = 0
        self._lock = threading.Lock()

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._done += bytes_transferred
            done = self._done
        self._progress(done)


def _multipart_etag(path: str, part_size: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in ``part_size`` parts: one MD5 pass.

    Only the parts' MD5s, not the whole file's as well: hashing is the CPU this
    transfer spends beyond what raw boto3 does.
    """
    digests = []
    buffer = memoryview(bytearray(1024 * 1024))
    with open(path, "rb", buffering=0) as fh:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            left = part_size
            while left:
                n = fh.readinto(buffer[: min(left, len(buffer))])
                if not n:
                    break
                part.update(buffer[:n])
                left -= n
            if left == part_size:
                break
            digests.append(part.digest())
            if left:
                break
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(digests)}"


def _direct_s3(local: Storage, remote: Storage, name: str) -> tuple[str, Any] | None:
    """The local path and the boto3 client when boto3 can read the file itself, else None.

    Only for django-storages' S3Storage with a local storage that has real
    paths, and never when S3Storage would gzip the file on the way.
    """
    if not all(hasattr(remote, a) for a in ("bucket", "transfer_config", "_get_write_parameters")):
        return None
    try:
        path = local.path(name)
    except NotImplementedError:
        return None
    s3: Any = remote
    return path, s3.connection.meta.client


def _write_parameters(remote: Any, key: str) -> dict[str, Any] | None:
    """What S3Storage.save() would send with the object, or None if it would compress it."""
    params: dict[str, Any] = remote._get_write_parameters(key)
    gzip_types = getattr(remote, "gzip_content_types", ())
    if (
        getattr(remote, "gzip", False)
        and params.get("ContentType") in gzip_types
        and "ContentEncoding" not in params
    ):
        return None
    return params


def _upload_s3(
    name: str,
    path: str,
    client: Any,
    remote: Any,
    expected: int,
    *,
    replace: bool,
    verify_checksum: bool,
    progress: Progress | None,
) -> Copied | None:
    """Upload with boto3 from the file's path: one PUT when small, lazy multipart when large.

    Returns None when S3Storage.save() must do it instead (compression).  The
    object gets the same key, parameters and TransferConfig as through
    S3Storage.save(), but no part is buffered in memory: boto3 reads each
    part from the file when it sends it (``upload_fileobj`` on a stream keeps
    up to ``max_concurrency`` parts in memory).
    """
    from storages.utils import clean_name

    key = remote._normalize_name(clean_name(name))
    params = _write_parameters(remote, key)
    if params is None:
        return None
    if replace:
        _abort_incomplete(name, client, remote.bucket_name, key)
    config = remote.transfer_config
    if expected < config.multipart_threshold:
        return _put_small(
            name,
            path,
            client,
            remote.bucket_name,
            key,
            params,
            replace=replace,
            verify=verify_checksum,
            progress=progress,
        )
    if not replace and remote.exists(name):
        raise _conflict(name)
    from boto3.s3.transfer import create_transfer_manager

    subscribers: list[Any] = [_ProgressSubscriber(progress)]
    with create_transfer_manager(client, config) as manager:
        future = manager.upload(path, remote.bucket_name, key, extra_args=params, subscribers=subscribers)
        # Hash while the parts go out (hashlib releases the GIL on large
        # buffers), with the part size s3transfer itself settles on.
        from s3transfer.utils import ChunksizeAdjuster

        part_size = ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, expected)
        multipart = _multipart_etag(path, part_size)
        future.result()
    return _verified(name, remote, expected, None, multipart, verify_checksum=verify_checksum)


def _abort_incomplete(name: str, client: Any, bucket: str, key: str) -> int:
    """Abort the multipart uploads of ``key`` that an earlier attempt left; how many there were.

    A worker killed during a multipart copy leaves its parts on S3, billed and
    missing from listings: S3 keeps an upload until it is completed or
    aborted, and s3transfer aborts only on an error in a live process.  Only
    a retry calls this (``replace``): an upload of that key is then ours.
    Without the permission to list or abort them, the copy goes on and
    the parts stay for the bucket's lifecycle rule.
    """
    from botocore.exceptions import ClientError

    aborted = 0
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key):
            for upload in page.get("Uploads", []):
                if upload["Key"] == key:
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
                    aborted += 1
    except ClientError as exc:
        logger.warning(
            "queued_storage: could not abort the incomplete multipart uploads of %s (%s); their parts "
            "stay billed until removed. Grant s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, "
            "or add an AbortIncompleteMultipartUpload lifecycle rule to the bucket.",
            name,
            exc.response.get("Error", {}).get("Code"),
        )
    if aborted:
        logger.info("queued_storage: aborted %d incomplete multipart upload(s) of %s", aborted, name)
    return aborted


# A PUT of fewer bytes goes without "Expect: 100-continue".  botocore sends
# that header with every PutObject, and the request then waits for the
# server's "100 Continue" before sending the body: one round trip more per
# file, half of a small file's time over a distant link.  The header only
# saves sending a body the server refuses (a name already taken), which
# costs less than that wait for a small one.  A larger body keeps it: a
# server refusing early may reset the connection while the body still goes
# out, and the refusal would then look like a network error.
NO_CONTINUE_BELOW = 1024 * 1024

_no_continue: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "queued_storage_no_continue", default=False
)


def _drop_expect(request: Any, **kwargs: Any) -> None:
    """botocore ``before-send`` hook: no 100-continue wait for the PUTs :func:`_sent_at_once` marks."""
    if _no_continue.get() and "Expect" in request.headers:
        del request.headers["Expect"]


@contextlib.contextmanager
def _sent_at_once(client: Any, size: int) -> Iterator[None]:
    """PutObjects of ``size`` bytes made here by ``client`` send the body at once if it is small.

    Only these: the hook leaves every other request of the storage's client as it was.
    """
    client.meta.events.register("before-send.s3.PutObject", _drop_expect, unique_id=__name__ + ".expect")
    token = _no_continue.set(size < NO_CONTINUE_BELOW)
    try:
        yield
    finally:
        _no_continue.reset(token)


def _put_small(
    name: str,
    path: str,
    client: Any,
    bucket: str,
    key: str,
    params: dict[str, Any],
    *,
    replace: bool,
    verify: bool,
    progress: Progress | None,
) -> Copied:
    """One PutObject: S3 checks Content-MD5 and, unless replacing, that the key is free.

    The response's ETag is the verification, so a small file costs one request.
    The body streams from the open file, hashed first in one pass: what is
    held at once is a chunk, whatever ``multipart_threshold`` allows.
    """
    from botocore.exceptions import ClientError

    with open(path, "rb") as fh:
        digest, size = _md5_of(fh)
        fh.seek(0)
        request = {**params, "Bucket": bucket, "Key": key, "Body": fh}
        request["ContentMD5"] = base64.b64encode(digest.digest()).decode()
        if not replace:
            request["IfNoneMatch"] = "*"
        with _sent_at_once(client, size):
            try:
                response = client.put_object(**request)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    raise _conflict(name) from exc
                if code != "NotImplemented" or replace:
                    raise
                # An S3-compatible server without conditional writes: look, then write.
                if _s3_key_exists(client, bucket, key):
                    raise _conflict(name) from exc
                del request["IfNoneMatch"]
                fh.seek(0)
                response = client.put_object(**request)
    if progress is not None:
        progress(size)
    md5 = digest.hexdigest()
    etag = str(response.get("ETag", "")).strip('"')
    digest_etag = _etag_is_digest(response.get("ServerSideEncryption"), response.get("SSECustomerAlgorithm"))
    if verify and etag and digest_etag and _comparable(etag, None) and etag != md5:
        raise VerificationFailed(
            f"The remote copy of {name!r} has ETag {etag}, but the bytes sent hash to {md5}; "
            "it was not switched in and will be sent again."
        )
    # S3 refuses a body that does not match its Content-MD5: the content is checked.
    return Copied(size=size, checksum=f"md5:{md5}", content_verified=True)


def _md5_of_chunks(chunks: Iterator[bytes]) -> tuple[hashlib._Hash, int]:
    """The MD5 of ``chunks`` and their total length."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest, size


def _md5_of(fh: IO[bytes]) -> tuple[hashlib._Hash, int]:
    """The MD5 of what is left in ``fh`` and its length, read a chunk at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    buffer = memoryview(bytearray(_CHUNK))
    while n := fh.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(buffer[:n])
        size += n
    return digest, size


def _s3_key_exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _conflict(name: str) -> RemoteConflict:
    return RemoteConflict(
        f"The remote storage already holds a file named {name!r} that this app did not "
        "put there; it was not overwritten. Move or delete the remote file, then retry."
    )


def _verified(
    name: str,
    remote: Storage,
    expected: int,
    md5: str | None,
    multipart: str | None,
    *,
    verify_checksum: bool,
) -> Copied:
    """Compare the remote copy (one request) with what was sent: its size, and its hash if it keeps one."""
    size, etag = remote_fingerprint(remote, name)
    if size != expected:
        raise VerificationFailed(
            f"The remote copy of {name!r} has {size} bytes, the local file {expected}; "
            "it was not switched in and will be sent again."
        )
    sent = md5 or multipart
    checked = bool(verify_checksum and etag and sent and _comparable(etag, multipart))
    if checked and etag not in (md5, multipart):
        raise VerificationFailed(
            f"The remote copy of {name!r} has ETag {etag}, but the bytes sent hash to {sent}; "
            "it was not switched in and will be sent again."
        )
    checksum = f"md5:{md5}" if md5 else f"etag:{multipart}" if multipart else ""
    return Copied(size=size, checksum=checksum, content_verified=checked)


def copy_file(
    name: str,
    local: Storage,
    remote: Storage,
    *,
    replace: bool = False,
    verify_checksum: bool = True,
    progress: Progress | None = None,
) -> Copied:
    """Stream ``name`` from ``local`` to ``remote`` under the same name and verify it.

    ``replace`` allows overwriting a remote file of that name (a partial copy
    left by an earlier attempt); otherwise a different file already there is a
    :class:`RemoteConflict`, never silently overwritten.
    """
    direct = _direct_s3(local, remote, name)
    if direct is not None:
        path, client = direct
        before = _stamp(local, name)
        try:
            copied = _upload_s3(
                name,
                path,
                client,
                remote,
                os.path.getsize(path),
                replace=replace,
                verify_checksum=verify_checksum,
                progress=progress,
            )
        except FileNotFoundError as exc:
            raise _missing(name) from exc
        if copied is not None:
            if _stamp(local, name) != before:
                raise _changed(name)
            return copied
    try:
        source = local.open(name, "rb")
    except FileNotFoundError as exc:
        raise _missing(name) from exc
    with source:
        before = _stamp(local, name)
        expected = local.size(name)
        if remote.exists(name):
            if not replace:
                raise _conflict(name)
            remote.delete(name)
        reader = _MeteredReader(source, _part_size(remote), progress)
        stored = remote.save(name, File(io.BufferedReader(reader, 1024 * 1024), name=name))
        if stored != name:
            remote.delete(stored)
            raise RemoteConflict(
                f"The remote storage saved {name!r} as {stored!r}; configure it to keep the name "
                "it is given (for S3Storage, file_overwrite=True, its default)."
            )
        md5, multipart = reader.digests()
    if _stamp(local, name) != before:
        raise _changed(name)
    return _verified(name, remote, expected, md5, multipart, verify_checksum=verify_checksum)


def _missing(name: str) -> LocalFileMissing:
    return LocalFileMissing(
        f"The local copy of {name!r} is gone, so it cannot be sent to the remote storage. "
        "Save the file again, or delete it to drop its record."
    )


def _changed(name: str) -> VerificationFailed:
    return VerificationFailed(
        f"The local file {name!r} changed while it was copied; the copy was not switched in "
        "and the new content will be sent."
    )


def _comparable(etag: str, multipart: str | None) -> bool:
    """Whether ``etag`` has the shape of an MD5 we can recompute, and the same part count."""
    head, _, parts = etag.partition("-")
    if len(head) != 32 or any(c not in "0123456789abcdef" for c in head):
        return False
    return not parts or (multipart is not None and multipart.endswith(f"-{parts}"))
