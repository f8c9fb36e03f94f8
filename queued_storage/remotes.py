"""Which kind of remote storage is which, chosen by class, and what each kind gets.

The first class in the remote storage's MRO whose dotted path is in the
table below picks its kind, so a subclass gets its base's; any other
storage is generic.  Matching by path needs neither the Azure nor the Google
SDK imported.  :func:`register` declares a project's own class to be of a
kind.  What each gets (docs/reliability.rst has the same table):

============  ================================  ===============================  ==========================
Remote        Upload                            Check at the switch              Check before the local
                                                                                 copy is deleted
============  ================================  ===============================  ==========================
S3, small     boto3 from the file's path, one   S3 checks the body against       none more: the content was
              ``PutObject`` with                ``Content-MD5``; the returned    checked
              ``Content-MD5``                   ETag compared too [1]
S3, large     boto3 multipart from the file's   one ``HEAD``: size, and the      none more (``cleanup-local``:
              path; a retry first aborts the    composite CRC32 S3 keeps         the ``HEAD`` again), or read
              key's incomplete multipart        against the parts' CRC32s; the   back where only the size
              uploads                           ETag against the parts' MD5s     was checked
                                                where no CRC32 was kept [1]
S3, no path   ``S3Storage.save()``, streamed    one ``HEAD``: size, and the      none more, or read back
              and hashed                        ETag against the MD5 or the      where only the size was
                                                parts' MD5s [1]                  checked
S3, gzip      ``S3Storage.save()``, which       size, which the compressed       -
              compresses it                     object does not have: such a
                                                copy fails verification
Azure         ``save()``, streamed and hashed   size and the blob's              none more, or read back for
                                                ``Content-MD5``, which Azure     a blob without
                                                sets for a blob uploaded in one  ``Content-MD5``
                                                request
Google Cloud  ``save()``, streamed and hashed   size and the object's            none more, or read back for
                                                ``md5Hash``, which a composite   a composite object
                                                object lacks
Any other     ``save()``, streamed and hashed   size                             read back
============  ================================  ===============================  ==========================

*S3* is django-storages' ``S3Storage`` (``S3Boto3Storage`` is the same class)
or a subclass, with a local storage that has ``path()``: *small* is a file
below its ``multipart_threshold``, *large* one from it; *no path* is a local
storage without ``path()``; *gzip* a file of a type ``S3Storage`` compresses.
*Azure* is ``AzureStorage``, *Google Cloud* ``GoogleCloudStorage``.
*Streamed and hashed*: ``save()`` reads the file through a reader that
computes its MD5, and the parts' MD5s at the part size ``S3Storage`` uploads
in.  *Read back*: the remote copy is downloaded and hashed.  A copy made by a
``transfer()`` override is read back before its local copy is deleted, as
what it sent is not known.  [1] The ETag only where it is an MD5 of the
bytes: not with SSE-KMS or SSE-C, which leaves the size alone checked unless
S3 kept the parts' CRC32.

The record keeps ``md5:<hex>`` of the bytes sent, or ``etag:<ETag>`` (``crc32:<composite>``
where the ETag is no digest).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from .copies import CHUNK, Copied, Progress, RemoteKind, md5_of_chunks
from .s3 import S3Remote

if TYPE_CHECKING:
    from django.core.files.storage import Storage


class GenericRemote:
    """Any storage: ``save()`` does the upload, the size is all a fingerprint says."""

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
        return None

    def part_size(self, remote: Storage) -> int | None:
        return None

    def fingerprint(self, remote: Storage, name: str) -> tuple[int, str | None]:
        return remote.size(name), None

    def read_back(self, remote: Storage, name: str) -> tuple[str, int]:
        with remote.open(name, "rb") as fh:
            digest, size = md5_of_chunks(iter(lambda: fh.read(CHUNK), b""))
        return digest.hexdigest(), size


class AzureRemote(GenericRemote):
    """django-storages' ``AzureStorage``: the blob's ``Content-MD5`` is its hash."""

    def fingerprint(self, remote: Storage, name: str) -> tuple[int, str | None]:
        azure: Any = remote
        try:
            blob = azure.client.get_blob_client(azure._get_valid_path(name)).get_blob_properties()
        except Exception as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"The remote storage has no file named {name!r}.") from exc
            raise
        md5 = blob.content_settings.content_md5
        return int(blob.size), bytes(md5).hex() if md5 else None


class GoogleCloudRemote(GenericRemote):
    """django-storages' ``GoogleCloudStorage``: the object's ``md5Hash`` is its hash."""

    def fingerprint(self, remote: Storage, name: str) -> tuple[int, str | None]:
        from storages.utils import clean_name

        gcs: Any = remote
        try:
            blob = gcs._get_blob(gcs._normalize_name(clean_name(name)))
        except Exception as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"The remote storage has no file named {name!r}.") from exc
            raise
        return int(blob.size), base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None


def _not_found(exc: Exception) -> bool:
    """Whether the Azure or Google SDK raised ``exc`` for a missing blob: both put the 404 on it."""
    return 404 in (getattr(exc, "status_code", None), getattr(exc, "code", None))


GENERIC: RemoteKind = GenericRemote()
S3: RemoteKind = S3Remote()
AZURE: RemoteKind = AzureRemote()
GOOGLE_CLOUD: RemoteKind = GoogleCloudRemote()

_BUILT_IN: dict[str, RemoteKind] = {
    "storages.backends.s3.S3Storage": S3,
    "storages.backends.azure_storage.AzureStorage": AZURE,
    "storages.backends.gcloud.GoogleCloudStorage": GOOGLE_CLOUD,
}
_kinds = dict(_BUILT_IN)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(storage_class: str | type, kind: RemoteKind) -> None:
    """Give ``storage_class`` (a class or its dotted path) and its subclasses the remote ``kind``.

    For instance ``register("myproject.storage.Blobs", remotes.AZURE)`` for a
    storage that keeps blobs the way ``AzureStorage`` does without deriving from it.
    """
    _kinds[storage_class if isinstance(storage_class, str) else _path(storage_class)] = kind


def unregister(storage_class: str | type) -> None:
    """Undo :func:`register`: ``storage_class`` gets its built-in kind, or its bases', again."""
    path = storage_class if isinstance(storage_class, str) else _path(storage_class)
    _kinds.pop(path, None)
    if path in _BUILT_IN:
        _kinds[path] = _BUILT_IN[path]


def kind_of(remote: Storage) -> RemoteKind:
    """The kind of the first class in ``remote``'s MRO that has one, else :data:`GENERIC`.

    The class is ``remote.__class__``, which a lazily built storage (Django's
    ``LazyObject``) reports as that of the storage it wraps.
    """
    for cls in remote.__class__.__mro__:
        kind = _kinds.get(_path(cls))
        if kind is not None:
            return kind
    return GENERIC
