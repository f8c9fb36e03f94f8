"""Copy one file from a local to a remote storage and verify the copy.

Knows nothing of Celery or of the location records: a plain function the
task (and anyone else) can call.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage


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
    checksum: str  # "md5:<hex>" of the bytes sent


Progress = Callable[[int], None]


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
    if not hasattr(remote, "bucket") or not hasattr(remote, "_normalize_name"):
        return None
    from storages.utils import clean_name

    return remote.bucket.Object(remote._normalize_name(clean_name(name)))


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
    """Size of the remote copy and its S3 ETag when there is one: one request on S3."""
    obj = _s3_object(remote, name)
    if obj is None:
        return remote.size(name), None
    obj.load()
    return int(obj.content_length), str(obj.e_tag).strip('"')


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
    try:
        source = local.open(name, "rb")
    except FileNotFoundError as exc:
        raise LocalFileMissing(
            f"The local copy of {name!r} is gone, so it cannot be sent to the remote storage. "
            "Save the file again, or delete it to drop its record."
        ) from exc
    with source:
        before = _stamp(local, name)
        expected = local.size(name)
        if remote.exists(name):
            if not replace:
                raise RemoteConflict(
                    f"The remote storage already holds a file named {name!r} that this app did not "
                    "put there; it was not overwritten. Move or delete the remote file, then retry."
                )
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
        raise VerificationFailed(
            f"The local file {name!r} changed while it was copied; the copy was not switched in "
            "and the new content will be sent."
        )
    size, etag = remote_fingerprint(remote, name)
    if size != expected:
        raise VerificationFailed(
            f"The remote copy of {name!r} has {size} bytes, the local file {expected}; "
            "it was not switched in and will be sent again."
        )
    if verify_checksum and etag and md5 and _comparable(etag, multipart) and etag not in (md5, multipart):
        raise VerificationFailed(
            f"The remote copy of {name!r} has ETag {etag}, but the bytes sent hash to {md5}; "
            "it was not switched in and will be sent again."
        )
    return Copied(size=size, checksum=f"md5:{md5}" if md5 else "")


def _comparable(etag: str, multipart: str | None) -> bool:
    """Whether ``etag`` is an MD5 we can recompute: not SSE-KMS, and the same part count."""
    head, _, parts = etag.partition("-")
    if len(head) != 32 or any(c not in "0123456789abcdef" for c in head):
        return False
    return not parts or (multipart is not None and multipart.endswith(f"-{parts}"))
