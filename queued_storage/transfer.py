"""Copy one file from a local to a remote storage and verify the copy.

Knows nothing of Celery or of the file records: a plain function the
task (and anyone else) can call.  The generic copy streams the file through
``remote.save()``; a remote whose kind has its own upload
(:mod:`queued_storage.remotes`) gets that instead.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage

from . import remotes
from .copies import (
    CHUNK,
    Copied,
    LocalFileMissing,
    PermanentTransferError,
    Progress,
    RemoteConflict,
    TransferError,
    VerificationFailed,
    checked,
    conflict,
    md5_of_chunks,
)

__all__ = [
    "Copied",
    "LocalFileMissing",
    "PermanentTransferError",
    "Progress",
    "RemoteConflict",
    "TransferError",
    "VerificationFailed",
    "confirm_content",
    "copy_file",
    "local_md5",
    "remote_fingerprint",
    "remote_md5",
]


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


def _path(local: Storage, name: str) -> str | None:
    """The local file's path, for a remote that reads the file itself; None for a storage without paths."""
    try:
        return local.path(name)
    except NotImplementedError:
        return None


def _stamp(local: Storage, name: str) -> tuple[int, int] | None:
    """Size and mtime of a file on disk, to notice it being replaced during the copy."""
    try:
        st = os.stat(local.path(name))
    except (NotImplementedError, OSError):
        return None
    return st.st_size, st.st_mtime_ns


def remote_fingerprint(remote: Storage, name: str) -> tuple[int, str | None]:
    """Size of the remote copy and the hash the remote keeps of its content, if any: one request.

    The hash is a hex MD5, or S3's multipart ETag (``<hex>-<parts>``): the
    ETag on S3 unless the object is encrypted with SSE-KMS or SSE-C (its ETag
    is then no digest of the bytes), the blob's Content-MD5 on Azure (set
    for a blob uploaded in one request), the object's md5Hash on Google Cloud
    Storage (none for a composite object).  None for any other storage.
    """
    return remotes.kind_of(remote).fingerprint(remote, name)


def remote_md5(remote: Storage, name: str) -> tuple[str, int]:
    """The MD5 (hex) and size of the remote copy, read back a chunk at a time: one download."""
    return remotes.kind_of(remote).read_back(remote, name)


def local_md5(local: Storage, name: str) -> str:
    """The MD5 (hex) of the local copy, read a chunk at a time."""
    with local.open(name, "rb") as fh:
        digest, _ = md5_of_chunks(iter(lambda: fh.read(CHUNK), b""))
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
    kind = remotes.kind_of(remote)
    path = _path(local, name)
    if path is not None:
        before = _stamp(local, name)
        try:
            copied = kind.upload(
                name, path, remote, replace=replace, verify_checksum=verify_checksum, progress=progress
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
                same = _same_bytes(source, remote, name, expected)
                if same is not None:
                    if _stamp(local, name) != before:
                        raise _changed(name)
                    return same
                raise conflict(name)
            remote.delete(name)
        reader = _MeteredReader(source, kind.part_size(remote), progress)
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
    fingerprint = kind.fingerprint(remote, name)
    return checked(name, fingerprint, expected, md5, multipart, verify_checksum=verify_checksum)


def _same_bytes(source: IO[bytes], remote: Storage, name: str, expected: int) -> Copied | None:
    """The remote file as this file's copy when it holds exactly its bytes (read and compared), else None.

    A name taken by the same bytes is not another file's: a copy a worker made
    after its lease lapsed, or an earlier attempt's that completed.  ``source``
    is read to the end; it is rewound when the bytes differ.
    """
    if remote.size(name) != expected:
        return None
    digest = hashlib.md5(usedforsecurity=False)
    with remote.open(name, "rb") as theirs:
        while chunk := source.read(CHUNK):
            if _read_exactly(theirs, len(chunk)) != chunk:
                source.seek(0)
                return None
            digest.update(chunk)
        if theirs.read(1):
            source.seek(0)
            return None
    return Copied(size=expected, checksum=f"md5:{digest.hexdigest()}", content_verified=True)


def _read_exactly(fh: IO[bytes], size: int) -> bytes:
    """``size`` bytes of ``fh``, fewer only at its end (a read may return less than asked)."""
    parts = []
    while size and (part := fh.read(size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


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
