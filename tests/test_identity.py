"""A storage's identity and its deconstruction: the same in every process, and never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import migrations
from django.db.migrations.writer import MigrationWriter
from django.test import override_settings
from django.utils.module_loading import import_string

from queued_storage import QueuedStorage, backends
from queued_storage import registry as storages_registry

from .testapp.models import Photo, photos

FS = "django.core.files.storage.FileSystemStorage"
S3 = "storages.backends.s3.S3Storage"
SECRET = "s3cr3t-in-options"  # the secret_key of tests.testapp.models.photos
ROOT = Path(__file__).resolve().parent.parent


def _options(kind: str) -> dict[str, Any]:
    """A storage with an option of ``kind``; built alike here and in a subprocess."""
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    options: dict[str, dict[str, Any]] = {
        "transfer_config": {
            "transfer_config": TransferConfig(multipart_threshold=5 * 2**20, max_concurrency=2)
        },
        "client_config": {"client_config": Config(signature_version="s3v4", retries={"max_attempts": 2})},
        "set": {"gzip_content_types": {"text/css", "text/plain", "image/svg+xml", "application/json"}},
    }
    option = options[kind]
    return {
        "local": FS,
        "local_options": {"location": "/nonexistent/qs-identity/local"},
        "remote": S3,
        "remote_options": {"bucket_name": "qs-identity", **option},
    }


KINDS = ("transfer_config", "client_config", "set")


@pytest.fixture
def registry():
    """Storages built in a test leave the registry as it was."""
    yield
    storages_registry.unregister_all()


# -- the same in every process


def test_identity_is_the_same_in_another_process(registry):
    """The worker computes the identity afresh: any option must give it the same one."""
    here = {kind: QueuedStorage(**_options(kind)).identity for kind in KINDS}
    script = (
        "import django, json; django.setup(); "
        "from queued_storage import QueuedStorage; from tests.test_identity import KINDS, _options; "
        "print(json.dumps({k: QueuedStorage(**_options(k)).identity for k in KINDS}))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        there = json.loads(done.stdout.strip().splitlines()[-1])
        assert there == here, f"PYTHONHASHSEED={seed}"


def test_an_option_that_cannot_be_compared_is_refused_by_name(registry):
    options = _options("set")
    options["remote_options"] = {
        **options["remote_options"],
        "secret_key": SECRET,
        "transfer_config": threading.Lock(),
    }
    with pytest.raises(ImproperlyConfigured) as raised:
        QueuedStorage(**options)
    message = str(raised.value)
    assert "remote_options['transfer_config']" in message and "_thread.lock" in message
    assert "STORAGES" in message and "subclass" in message
    assert SECRET not in message


def test_canonical_forms_of_objects_are_their_class_and_public_state():
    from boto3.s3.transfer import TransferConfig

    from queued_storage import identity

    small, large = TransferConfig(max_concurrency=1), TransferConfig(max_concurrency=8)
    assert identity.canonical(small, "x") != identity.canonical(large, "x")
    assert identity.canonical(small, "x") == identity.canonical(TransferConfig(max_concurrency=1), "x")
    # A path is its string, in every Python version (3.13 moved PosixPath to pathlib._local).
    assert identity.canonical(Path("/a"), "x") == identity.canonical("/a", "x") == "/a"
    assert identity.canonical(QueuedStorage, "x") == {"import": "queued_storage.storage.QueuedStorage"}
    with pytest.raises(ImproperlyConfigured, match=r"option x\[0\] .*cannot be named by an import path"):
        identity.canonical([lambda: 1], "x")


# -- where the bytes go


def test_identity_follows_the_bucket_endpoint_and_prefix_from_settings(registry):
    def key(**settings: Any) -> str:
        with override_settings(**settings):
            return QueuedStorage(local=FS, remote=S3).identity

    base = key()
    assert key(AWS_STORAGE_BUCKET_NAME="qs-other-bucket") != base
    assert key(AWS_S3_ENDPOINT_URL="http://127.0.0.1:2") != base
    assert key(AWS_LOCATION="archive") != base
    # Credentials and the local disk (one per host) are not where the remote copies go.
    assert key(AWS_SECRET_ACCESS_KEY="rotated", AWS_ACCESS_KEY_ID="rotated") == base
    assert key(MEDIA_ROOT="/srv/another-host/media") == base


def test_identity_follows_the_options_of_a_remote_alias(settings, registry):
    def key(bucket: str) -> str:
        settings.STORAGES = {
            **settings.STORAGES,
            "bucket": {"BACKEND": S3, "OPTIONS": {"bucket_name": bucket}},
        }
        return QueuedStorage(local=FS, remote="bucket").identity

    assert key("qs-one") != key("qs-two")


def test_the_secret_rule():
    from queued_storage import identity

    secret = ["access_key", "secret_key", "session_token", "security_token", "password", "cloudfront_key"]
    secret += ["account_key", "sas_token", "connection_string", "credentials", "cloudfront_signer"]
    public = ["custom_domain", "bucket_name", "object_parameters", "session_profile", "querystring_auth"]
    public += ["location", "endpoint_url", "default_acl", "region_name", "transfer_config"]
    assert [n for n in secret if not identity.is_secret(n)] == []
    assert [n for n in public if identity.is_secret(n)] == []
    nested = {"object_parameters": {"CacheControl": "max-age=60", "SSECustomerKey": SECRET}}
    assert identity.public(nested) == {"object_parameters": {"CacheControl": "max-age=60"}}


# -- no secret in migrations, repr or errors


@pytest.mark.django_db
def test_no_secret_in_the_migration_of_a_field():
    field = Photo._meta.get_field("image")
    migration = migrations.Migration("0099_photo", "testapp")
    migration.operations = [migrations.AlterField("photo", "image", field)]
    code = MigrationWriter(migration).as_string()
    assert "queued_storage.QueuedStorage(" in code and "'qs-photos'" in code
    assert SECRET not in code
    out = StringIO()
    call_command("makemigrations", "testapp", dry_run=True, verbosity=3, stdout=out)
    assert SECRET not in out.getvalue()


def test_deconstruction_leaves_secrets_out_and_rebuilds_the_same_storage(registry):
    secrets = {
        "access_key": "AKIAEXAMPLE",
        "secret_key": SECRET,
        "object_parameters": {"SSECustomerKey": SECRET},
    }
    storage = backends.QueuedS3Storage(remote_options={"bucket_name": "qs-photos", **secrets}, delayed=True)
    path, args, kwargs = storage.deconstruct()
    assert path == "queued_storage.backends.QueuedS3Storage"
    assert kwargs == {
        "remote_options": {"bucket_name": "qs-photos", "object_parameters": {}},
        "delayed": True,
    }
    assert SECRET not in repr(storage.deconstruct())
    assert import_string(path)(*args, **kwargs).identity == storage.identity
    assert storage.remote.secret_key == SECRET  # the storage itself still uses it


def test_no_secret_in_repr_or_in_errors(registry):
    assert SECRET not in repr(photos)
    with pytest.raises(ImproperlyConfigured) as raised:
        QueuedStorage(local=FS, remote=S3, remote_options={"secret_key": SECRET, "colour": "blue"})
    assert "colour" in str(raised.value) and SECRET not in str(raised.value)


# -- a storage rebuilt from its class path


class PhotoStorage(QueuedStorage):
    """The per-field form of the README: complete without arguments."""

    local = FS
    local_options = {"location": "/nonexistent/qs-identity/photos"}
    remote = S3
    remote_options = {"bucket_name": "qs-photos", "secret_key": SECRET}
    delete_local = True


def test_a_storage_rebuilt_from_its_class_path_without_arguments(registry):
    with pytest.raises(ImproperlyConfigured) as raised:
        QueuedStorage()
    message = str(raised.value)
    assert "built without arguments" in message and "class attributes" in message and "STORAGES" in message
    # As sorl-thumbnail does: the class path, then no arguments.
    original = PhotoStorage()
    storages_registry.register(original)
    rebuilt = import_string(f"{PhotoStorage.__module__}.{PhotoStorage.__qualname__}")()
    assert rebuilt.identity == original.identity and storages_registry.lookup(rebuilt.identity) is original
    assert original.deconstruct() == ("tests.test_identity.PhotoStorage", (), {})
