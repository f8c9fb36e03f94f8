"""What a copy to a remote storage returns and how it fails, and what every kind of remote provides.

The ground both the generic copy (:mod:`queued_storage.transfer`) and the S3
upload (:mod:`queued_storage.s3`) stand on; it imports neither.  Import the
public names from :mod:`queued_storage.transfer`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
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
    checksum: str  # "md5:<hex>" of the bytes sent, "etag:<S3 ETag>", or "crc32:<S3 composite>"
    # Whether the remote copy's content was checked against the bytes sent
    # (a hash the remote computed, or the copy read back), not only its size.
    content_verified: bool = False


Progress = Callable[[int], None]

# What one read of a local or remote file takes at most while it is hashed.
CHUNK = 1024 * 1024


class RemoteKind(Protocol):
    """How a file goes to one kind of remote storage and how its copy there is checked.

    :mod:`queued_storage.remotes` says which storage class gets which.
    """

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
        """Send the local file at ``path`` as ``name`` this kind's own way; None leaves it to ``save()``."""

    def part_size(self, remote: Storage) -> int | None:
        """The part size ``remote.save()`` uploads a large file in, whose ETag is made of parts; else None."""

    def fingerprint(self, remote: Storage, name: str) -> tuple[int, str | None]:
        """Size of the remote copy and the remote's own hash of its content, if it keeps one: one request."""

    def read_back(self, remote: Storage, name: str) -> tuple[str, int]:
        """The MD5 (hex) and size of the remote copy, downloaded a chunk at a time."""


def md5_of_chunks(chunks: Iterator[bytes]) -> tuple[hashlib._Hash, int]:
    """The MD5 of ``chunks`` and their total length."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest, size


def md5_of_file(fh: IO[bytes]) -> tuple[hashlib._Hash, int]:
    """The MD5 of what is left in ``fh`` and its length, read a chunk at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    buffer = memoryview(bytearray(CHUNK))
    while n := fh.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(buffer[:n])
        size += n
    return digest, size


def comparable(etag: str, multipart: str | None) -> bool:
    """Whether ``etag`` has the shape of an MD5 we can recompute, and the same part count."""
    head, _, parts = etag.partition("-")
    if len(head) != 32 or any(c not in "0123456789abcdef" for c in head):
        return False
    return not parts or (multipart is not None and multipart.endswith(f"-{parts}"))


def same_size(name: str, size: int, expected: int) -> None:
    """Raise :class:`VerificationFailed` unless the remote copy has the local file's ``expected`` size."""
    if size != expected:
        raise VerificationFailed(
            f"The remote copy of {name!r} has {size} bytes, the local file {expected}; "
            "it was not switched in and will be sent again."
        )


def checked(
    name: str,
    fingerprint: tuple[int, str | None],
    expected: int,
    md5: str | None,
    multipart: str | None,
    *,
    verify_checksum: bool,
) -> Copied:
    """What was copied, once the remote's ``fingerprint`` matches the bytes sent: their size and hash."""
    size, etag = fingerprint
    same_size(name, size, expected)
    sent = md5 or multipart
    verified = bool(verify_checksum and etag and sent and comparable(etag, multipart))
    if verified and etag not in (md5, multipart):
        raise VerificationFailed(
            f"The remote copy of {name!r} has ETag {etag}, but the bytes sent hash to {sent}; "
            "it was not switched in and will be sent again."
        )
    checksum = f"md5:{md5}" if md5 else f"etag:{multipart}" if multipart else ""
    return Copied(size=size, checksum=checksum, content_verified=verified)


def conflict(name: str) -> RemoteConflict:
    return RemoteConflict(
        f"The remote storage already holds a file named {name!r} that this app did not "
        "put there; it was not overwritten. Move or delete the remote file, then retry."
    )
