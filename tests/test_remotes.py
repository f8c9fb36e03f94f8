"""Which kind of remote a storage is: told by its class, never by the attributes it happens to have."""

from __future__ import annotations

import ast
import importlib.util

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.utils.functional import SimpleLazyObject
from storages.backends.s3 import S3ManifestStaticStorage, S3Storage

from queued_storage import remotes
from queued_storage.transfer import copy_file


class LooksLikeS3(FileSystemStorage):
    """A local folder with the attributes the S3 upload uses, but no S3Storage."""

    bucket = bucket_name = transfer_config = object()

    def _get_write_parameters(self, name):
        raise AssertionError("taken for S3Storage")

    def _normalize_name(self, name):
        raise AssertionError("taken for S3Storage")


class Blobs(FileSystemStorage):
    pass


@pytest.mark.services  # S3ManifestStaticStorage reads its manifest from S3 when built
def test_s3storage_and_its_subclasses_get_the_s3_upload():
    assert remotes.kind_of(S3Storage()) is remotes.S3
    assert remotes.kind_of(S3ManifestStaticStorage()) is remotes.S3
    assert remotes.kind_of(FileSystemStorage()) is remotes.GENERIC


def test_a_lazily_built_remote_gets_the_kind_of_the_storage_it_wraps():
    """A queued storage builds its remote lazily: the wrapper's own class is no storage's."""
    assert remotes.kind_of(SimpleLazyObject(S3Storage)) is remotes.S3


def test_a_storage_with_s3_like_attributes_is_generic(tmp_path):
    local = FileSystemStorage(location=str(tmp_path / "local"))
    remote = LooksLikeS3(location=str(tmp_path / "remote"))
    assert remotes.kind_of(remote) is remotes.GENERIC
    name = local.save("a.bin", ContentFile(b"plain"))
    assert copy_file(name, local, remote).size == 5
    assert remote.exists(name)


@pytest.mark.parametrize("path", sorted(remotes._BUILT_IN))
def test_each_built_in_path_names_a_class_of_the_installed_django_storages(path):
    """Read from the module's source: importing it would need the Azure or Google SDK."""
    module, _, name = path.rpartition(".")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    with open(spec.origin) as fh:
        tree = ast.parse(fh.read())
    assert name in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_a_registered_class_and_its_subclasses_get_that_kind_until_unregistered():
    class MoreBlobs(Blobs):
        pass

    remotes.register(f"{__name__}.Blobs", remotes.AZURE)
    try:
        assert remotes.kind_of(MoreBlobs()) is remotes.AZURE
        remotes.register(MoreBlobs, remotes.GOOGLE_CLOUD)  # the nearest class in the MRO wins
        assert remotes.kind_of(MoreBlobs()) is remotes.GOOGLE_CLOUD
        assert remotes.kind_of(Blobs()) is remotes.AZURE
    finally:
        remotes.unregister(f"{__name__}.Blobs")
        remotes.unregister(MoreBlobs)
    assert remotes.kind_of(MoreBlobs()) is remotes.GENERIC


def test_unregistering_a_built_in_class_gives_it_its_built_in_kind_back():
    remotes.register(S3Storage, remotes.GENERIC)
    try:
        assert remotes.kind_of(S3Storage()) is remotes.GENERIC
    finally:
        remotes.unregister(S3Storage)
    assert remotes.kind_of(S3Storage()) is remotes.S3
