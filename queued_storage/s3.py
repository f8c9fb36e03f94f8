"""The upload and the checks of django-storages' ``S3Storage``: boto3 reads the file from its path.

The object gets the key, write parameters and ``TransferConfig`` that
``S3Storage.save()`` would give it, but below ``multipart_threshold`` it goes
in one ``PutObject`` with ``Content-MD5`` (S3 checks the body), and above it
boto3's multipart upload reads each part from the file when it sends it, so
no part waits in memory.  A file ``S3Storage`` would compress (``gzip``) is
left to its ``save()``.  :mod:`queued_storage.remotes` picks this for
``S3Storage`` and its subclasses.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from .copies import (
    CHUNK,
    Copied,
    Progress,
    VerificationFailed,
    checked,
    comparable,
    conflict,
    md5_of_chunks,
    md5_of_file,
    same_size,
)

if TYPE_CHECKING:
    from django.core.files.storage import Storage

logger = logging.getLogger("queued_storage")


class S3Remote:
    """django-storages' ``S3Storage``: boto3 from the file's path, and S3's ETag as the hash."""

    def upload(
        self,
        name: str,
        path: str,
        remote: Storage,
        *,
        replace: bool,
        verify_checksum: bool,
        progress: Progress | None,
    ) -> Copied | None:
        """One PutObject when small, a multipart upload when large; None when ``save()`` must compress it."""
        s3: Any = remote
        return _upload(
            name,
            path,
            s3.connection.meta.client,
            s3,
            os.path.getsize(path),
            replace=replace,
            verify_checksum=verify_checksum,
            progress=progress,
        )

    def part_size(self, remote: Storage) -> int | None:
        s3: Any = remote
        return int(s3.transfer_config.multipart_chunksize)

    def fingerprint(self, remote: Storage, name: str) -> tuple[int, str | None]:
        return _fingerprint(remote, name)

    def read_back(self, remote: Storage, name: str) -> tuple[str, int]:
        """One streamed ``GetObject``, with no temporary copy."""
        from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS

        s3: Any = remote
        # The SSE-C key, if any, as S3Storage.open() would send it.
        params = {k: v for k, v in s3.get_object_parameters(name).items() if k in ALLOWED_DOWNLOAD_ARGS}
        body = _object(remote, name).get(**params)["Body"]
        try:
            digest, size = md5_of_chunks(iter(lambda: body.read(CHUNK), b""))
        finally:
            body.close()
        return digest.hexdigest(), size


def _object(remote: Storage, name: str) -> Any:
    """The boto3 ``Object`` behind ``name``."""
    from storages.utils import clean_name

    s3: Any = remote
    return s3.bucket.Object(s3._normalize_name(clean_name(name)))


def _fingerprint(remote: Storage, name: str) -> tuple[int, str | None]:
    """Size and ETag (one ``HEAD``); no hash when SSE-KMS or SSE-C made the ETag no digest of the bytes."""
    obj = _object(remote, name)
    obj.load()
    etag = str(obj.e_tag).strip('"')
    digest = _etag_is_digest(obj.server_side_encryption, obj.sse_customer_algorithm)
    return int(obj.content_length), etag if digest else None


def _etag_is_digest(sse: str | None, sse_customer_algorithm: str | None) -> bool:
    """Whether S3 made the object's ETag from its bytes: not for SSE-KMS, DSSE-KMS or SSE-C."""
    return not sse_customer_algorithm and not str(sse or "").startswith("aws:kms")


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


def _part_digests(path: str, part_size: int, new: Callable[[], Any]) -> list[bytes]:
    """The digest of each ``part_size`` part of ``path``, each hashed by a fresh ``new()``: one pass."""
    digests = []
    buffer = memoryview(bytearray(1024 * 1024))
    with open(path, "rb", buffering=0) as fh:
        while True:
            part = new()
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
    return digests


def _multipart_etag(path: str, part_size: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in ``part_size`` parts.

    Only the parts' MD5s, not the whole file's as well: hashing is the CPU this
    transfer spends beyond what raw boto3 does.
    """
    digests = _part_digests(path, part_size, partial(hashlib.md5, usedforsecurity=False))
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(digests)}"


def _composite_crc32(path: str, part_size: int) -> str:
    """S3's composite CRC32 of ``path`` uploaded in ``part_size`` parts, as ``HEAD`` gives it.

    The base64 CRC32 of the parts' big-endian CRC32s, then ``-<parts>``.
    """
    from botocore.httpchecksum import Crc32Checksum

    digests = _part_digests(path, part_size, Crc32Checksum)
    joined = base64.b64encode(zlib.crc32(b"".join(digests)).to_bytes(4, "big")).decode()
    return f"{joined}-{len(digests)}"


def _parts_carry_crc32(client: Any, params: dict[str, Any]) -> bool:
    """Whether s3transfer sends each part with a CRC32 of its bytes and S3 keeps their composite.

    It does when botocore computes checksums whenever an operation supports
    them (its default) and the write parameters name no other algorithm.
    """
    calculation = getattr(client.meta.config, "request_checksum_calculation", None)
    algorithm = str(params.get("ChecksumAlgorithm", "CRC32")).upper()
    return calculation == "when_supported" and algorithm == "CRC32"


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


def _upload(
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

    Returns None when S3Storage.save() must do it instead (compression).  No
    part is buffered in memory: boto3 reads each part from the file when it
    sends it (``upload_fileobj`` on a stream keeps up to ``max_concurrency``
    parts in memory).
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
    from s3transfer.utils import ChunksizeAdjuster

    part_size = ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, expected)
    head = None if replace else _head(client, remote.bucket_name, key)
    if head is not None:
        multipart = _multipart_etag(path, part_size)
        if _holds(head, expected, multipart):
            return Copied(size=expected, checksum=f"etag:{multipart}", content_verified=True)
        raise conflict(name)
    from boto3.s3.transfer import create_transfer_manager

    crc32 = _parts_carry_crc32(client, params)
    subscribers: list[Any] = [_ProgressSubscriber(progress)]
    with create_transfer_manager(client, config) as manager:
        future = manager.upload(path, remote.bucket_name, key, extra_args=params, subscribers=subscribers)
        # Our own read of the file while the parts go out, with the part size
        # s3transfer itself settles on: the CRC32 S3 keeps where the parts
        # carry one (a seventh of MD5's CPU), else the MD5s of the ETag.
        sent = _composite_crc32(path, part_size) if crc32 else _multipart_etag(path, part_size)
        future.result()
    head = client.head_object(Bucket=remote.bucket_name, Key=key, ChecksumMode="ENABLED")
    digest = _etag_is_digest(head.get("ServerSideEncryption"), head.get("SSECustomerAlgorithm"))
    etag = str(head["ETag"]).strip('"') if digest else None
    size = int(head["ContentLength"])
    if crc32 and head.get("ChecksumCRC32") and head.get("ChecksumType", "COMPOSITE") == "COMPOSITE":
        kept = head["ChecksumCRC32"]
        return _checked_crc32(name, size, expected, kept, sent, etag, verify_checksum=verify_checksum)
    if crc32:
        # A server that kept no checksum of the parts: the ETag, from a second read.
        sent = _multipart_etag(path, part_size)
    return checked(name, (size, etag), expected, None, sent, verify_checksum=verify_checksum)


def _checked_crc32(
    name: str, size: int, expected: int, kept: str, sent: str, etag: str | None, *, verify_checksum: bool
) -> Copied:
    """What was copied, once the size and the composite CRC32 S3 kept match the local file's parts.

    The record keeps the ETag, comparable later with the object's as before
    (``crc32:`` where SSE made the ETag no digest of the bytes).
    """
    same_size(name, size, expected)
    # S3 gives the composite with its part count, some servers without; the
    # value alone already depends on every part's CRC32 and on their number.
    kept_value, _, kept_parts = kept.partition("-")
    sent_value, _, sent_parts = sent.partition("-")
    if verify_checksum and (kept_value != sent_value or kept_parts not in ("", sent_parts)):
        raise VerificationFailed(
            f"The remote copy of {name!r} has CRC32 {kept}, but the local file's parts give {sent}; "
            "it was not switched in and will be sent again."
        )
    checksum = f"etag:{etag}" if etag else f"crc32:{kept}"
    return Copied(size=size, checksum=checksum, content_verified=verify_checksum)


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
# file, which over a distant link is much of a small file's time.  The header only
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
        digest, size = md5_of_file(fh)
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
                if code not in ("PreconditionFailed", "NotImplemented") or replace:
                    raise
                # PreconditionFailed: the key is taken.  NotImplemented: an
                # S3-compatible server without conditional writes; look, then write.
                head = _head(client, bucket, key)
                if head is not None:
                    md5 = digest.hexdigest()
                    if _holds(head, size, md5):
                        return Copied(size=size, checksum=f"md5:{md5}", content_verified=True)
                    raise conflict(name) from exc
                if code == "PreconditionFailed":  # gone since: an error, and the attempt is retried
                    raise
                del request["IfNoneMatch"]
                fh.seek(0)
                response = client.put_object(**request)
    if progress is not None:
        progress(size)
    md5 = digest.hexdigest()
    etag = str(response.get("ETag", "")).strip('"')
    digest_etag = _etag_is_digest(response.get("ServerSideEncryption"), response.get("SSECustomerAlgorithm"))
    if verify and etag and digest_etag and comparable(etag, None) and etag != md5:
        raise VerificationFailed(
            f"The remote copy of {name!r} has ETag {etag}, but the bytes sent hash to {md5}; "
            "it was not switched in and will be sent again."
        )
    # S3 refuses a body that does not match its Content-MD5: the content is checked.
    return Copied(size=size, checksum=f"md5:{md5}", content_verified=True)


def _holds(head: dict[str, Any], size: int, etag: str) -> bool:
    """Whether the object ``head`` describes has exactly these bytes: their size, and ETag as S3 computes it.

    Then the name is not taken by another file but by this one: a copy a
    worker made after its lease lapsed, or an earlier attempt's that
    completed.  It is kept as this file's copy instead of failing as a conflict.
    """
    digest = _etag_is_digest(head.get("ServerSideEncryption"), head.get("SSECustomerAlgorithm"))
    return bool(digest and int(head["ContentLength"]) == size and str(head["ETag"]).strip('"') == etag)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's ``HeadObject`` answer, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head
