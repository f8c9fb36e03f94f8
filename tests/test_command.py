"""``manage.py queued_storage``: every subcommand's output and effect."""

from __future__ import annotations

import hashlib
import json
import os
from io import StringIO
from pathlib import Path
from typing import cast

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default_storage
from django.core.management import CommandError, call_command
from django.test import override_settings

from queued_storage import QueuedStorage, transitions
from queued_storage.models import FileRecord

from .conftest import transfer_now
from .testapp.models import photos

default_storage = cast(QueuedStorage, _default_storage)

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("queued_storage", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def record(name: str, storage: QueuedStorage = default_storage) -> FileRecord:
    return FileRecord.objects.get(storage=storage.identity, name=name)


def fail(name: str, error: str = "ConnectionError: S3 is down") -> None:
    rec = record(name)
    transitions.claim(rec.storage, name, rec.version, owner="test")
    transitions.release(rec.storage, name, rec.version, error=error, failed=True)


@pytest.mark.parametrize("sub", ["status", "retry", "requeue", "transfer-existing", "cleanup-local", "rekey"])
def test_every_subcommand_explains_itself(sub, capsys):
    with pytest.raises(SystemExit):
        call_command("queued_storage", sub, "--help")
    text = capsys.readouterr().out
    assert f"queued_storage {sub}" in text and len(text) > 300


@pytest.mark.services  # the default storage's remote is S3
def test_status_text_and_json():
    assert "No files recorded yet." in run("status", "--remote")
    assert "No files waiting for the remote." in run("status")
    remote = default_storage.save("cmd/remote.txt", ContentFile(b"r" * 100))
    transfer_now(default_storage, remote)
    default_storage.save("cmd/pending.txt", ContentFile(b"p" * 1000))
    failed = default_storage.save("cmd/failed.txt", ContentFile(b"f" * 10))
    fail(failed)
    photos.save("cmd/photo.png", ContentFile(b"png"))

    text = run("status", "--remote")
    assert f"default ({default_storage.identity})" in text
    assert "testapp.Photo.image" in text
    assert "Total: 2 pending, 0 transferring, 1 remote, 1 failed." in text
    assert "Waiting for transfer: 1.0 KB." in text  # 1000 + 3 bytes
    assert "Oldest file waiting: " in text and "none" not in text
    assert "cmd/failed.txt (failed, 1 attempts): ConnectionError: S3 is down" in text

    # Without --remote the files on the remote are not counted, and said to be.
    waiting = run("status")
    assert "Total: 2 pending, 0 transferring, 1 failed (files on the remote not counted" in waiting
    assert "  remote" not in waiting and "Waiting for transfer: 1.0 KB." in waiting
    brief = json.loads(run("status", "--json"))
    assert brief["totals"] == {"pending": 2, "transferring": 0, "failed": 1}
    assert brief["remote_counted"] is False
    assert all("remote" not in entry["states"] for entry in brief["storages"])
    assert brief["last_transfer"] == record("cmd/remote.txt").transferred_at.isoformat()

    report = json.loads(run("status", "--json", "--remote"))
    assert report["remote_counted"] is True
    assert report["totals"] == {"pending": 2, "transferring": 0, "remote": 1, "failed": 1}
    assert report["bytes_pending"] == 1003
    assert report["oldest_pending_seconds"] >= 0
    default = next(s for s in report["storages"] if s["label"] == "default")
    assert default["states"]["remote"] == {"files": 1, "bytes": 100}
    assert default["states"]["failed"] == {"files": 1, "bytes": 10}
    assert report["last_errors"][0]["name"] == "cmd/failed.txt"
    assert report["last_transfer"] == record("cmd/remote.txt").transferred_at.isoformat()


def test_retry_failed_and_named(broker):
    failed = default_storage.save("cmd/f1.txt", ContentFile(b"1"))
    fail(failed)
    pending = default_storage.save("cmd/p1.txt", ContentFile(b"2"))
    remote = default_storage.save("cmd/r1.txt", ContentFile(b"3"))
    transfer_now(default_storage, remote)
    broker.flushdb()

    with pytest.raises(CommandError, match="--failed"):
        run("retry")

    assert run("retry", "--failed") == "Queued 1 file(s) again.\n"
    assert (record(failed).state, record(failed).last_error) == ("pending", "")
    assert broker.llen("celery") == 1

    out = run("retry", pending, remote)
    assert out == "Queued 1 file(s) again; skipped 1 already remote.\n"
    assert broker.llen("celery") == 2

    with pytest.raises(CommandError, match="1 name"):
        run("retry", "cmd/nope.txt")
    with pytest.raises(CommandError, match="No queued storage called 'nope'"):
        run("retry", "--storage", "nope", pending)


def test_requeue_routes_and_counts(broker):
    default_storage.save("cmd/stale.txt", ContentFile(b"s"))
    broker.flushdb()
    assert run("requeue", "--older-than", "0") == "Queued 1 file(s) again.\n"
    assert broker.llen("celery") == 1


def test_requeue_sends_a_backlog_of_small_files_ten_per_message(broker):
    import base64

    names = [default_storage.save(f"cmd/backlog/{i:02d}.txt", ContentFile(b"s")) for i in range(23)]
    large = default_storage.save("cmd/backlog/large.bin", ContentFile(b"x" * (1024 * 1024 + 1)))
    broker.flushdb()
    assert run("requeue", "--older-than", "0") == "Queued 24 file(s) again.\n"
    bodies = [json.loads(base64.b64decode(json.loads(raw)["body"])) for raw in broker.lrange("celery", 0, -1)]
    sent = [
        [name for name, _ in kwargs["files"]] if "files" in kwargs else [args[1]]
        for args, kwargs, _ in bodies
    ]
    assert sorted(n for batch in sent for n in batch) == sorted([*names, large])
    assert sorted(len(batch) for batch in sent) == [1, 3, 10, 10]  # the large file alone
    assert [large] in sent


@pytest.fixture
def media(tmp_path):
    """An existing media folder, with the photos storage's folder nested inside it (as a symlink)."""
    root = tmp_path / "media"
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "a.txt").write_bytes(b"aaa")
    (root / "old" / "deep" / "b.bin").write_bytes(b"b" * 2048)
    (root / "on-s3.txt").write_bytes(b"already moved")
    Path(photos.local.location).mkdir(parents=True, exist_ok=True)
    (Path(photos.local.location) / "not-mine.png").write_bytes(b"png")
    os.symlink(photos.local.location, root / "photos")
    with override_settings(MEDIA_ROOT=str(root)):
        yield root


def test_transfer_existing(media, s3, broker):
    s3.put_object(Bucket="qs-bucket", Key="on-s3.txt", Body=b"already moved")
    known = default_storage.save("known.txt", ContentFile(b"k"))
    broker.flushdb()

    dry = run("transfer-existing", "--storage", "default", "--dry-run")
    assert "default: 3 local file(s) without a record." in dry
    assert "would adopt old/deep/b.bin" in dry and "photos/" not in dry
    assert "Dry run: nothing recorded or queued." in dry
    assert FileRecord.objects.count() == 1 and broker.llen("celery") == 0

    out = run("transfer-existing", "--storage", "default")
    assert "  queued: old/a.txt" in out  # plain lines, not a terminal
    assert "Adopted 3 file(s): queued 2, found 1 already on the remote." in out
    assert record("old/a.txt").state == "pending" and record("old/a.txt").size == 3
    assert record("old/deep/b.bin").size == 2048
    assert record("on-s3.txt").state == "remote"
    assert not FileRecord.objects.filter(name__contains="not-mine").exists()
    assert broker.llen("celery") == 2
    assert record(known).state == "pending"

    again = run("transfer-existing", "--storage", "default")
    assert "Adopted 0 file(s)" in again


@pytest.mark.services  # the default storage's remote is S3
def test_transfer_existing_progress_bar_on_a_terminal(media):
    class Tty(StringIO):
        def isatty(self):
            return True

    out = Tty()
    call_command("queued_storage", "transfer-existing", "--storage", "default", stdout=out)
    text = out.getvalue()
    assert "\r  [##########" in text and "] 3/3" in text
    assert "queued: " not in text


def test_cleanup_local_deletes_only_verified_copies(s3):
    good = default_storage.save("cmd/good.txt", ContentFile(b"good"))
    bad = default_storage.save("cmd/bad.txt", ContentFile(b"bad"))
    local_only = default_storage.save("cmd/local.txt", ContentFile(b"local"))
    for name in (good, bad):
        transfer_now(default_storage, name)
    s3.put_object(Bucket="qs-bucket", Key=bad, Body=b"truncated!")

    assert "Deleted 0 local copies" in run("cleanup-local")  # default: older than 7 days

    dry = run("cleanup-local", "--older-than", "0", "--dry-run")
    assert "would delete cmd/good.txt (4 bytes)" in dry
    assert (
        "Would delete 1 local copies (4 B) of 2 remote file(s); skipped 1 kept: remote copy not verified."
        in dry
    )
    assert default_storage.local.exists(good)

    out = run("cleanup-local", "--older-than", "0")
    assert "kept cmd/bad.txt: Verification failed: the remote copy has 10 bytes, the record 3." in out
    assert "Deleted 1 local copies (4 B) of 2 remote file(s)" in out
    assert not default_storage.local.exists(good)
    assert default_storage.local.exists(bad) and default_storage.local.exists(local_only)
    with default_storage.open(good) as fh:  # still readable, from the remote
        assert fh.read() == b"good"
    assert record(good).local_deleted_at is not None and record(bad).local_deleted_at is None
    # The next run reads only the file whose local copy remains.
    again = run("cleanup-local", "--older-than", "0")
    assert "of 1 remote file(s); skipped 1 kept: remote copy not verified." in again


def test_cleanup_local_records_a_local_copy_found_gone_and_passes_it_by_after(s3):
    names = [default_storage.save(f"cmd/gone-{i}.txt", ContentFile(b"x")) for i in range(3)]
    for name in names:
        transfer_now(default_storage, name)
        default_storage.local.delete(name)  # by hand, or by another tool
    FileRecord.objects.filter(name=names[2]).update(host="another-host")

    with override_settings(QUEUED_STORAGE_HOST_QUEUE="files-{host}"):
        # Each host has a disk of its own: only this host's copies are known gone.
        out = run("cleanup-local", "--older-than", "0")
        assert "of 3 remote file(s); skipped 3 without a local copy." in out
        again = run("cleanup-local", "--older-than", "0")
        assert "of 1 remote file(s); skipped 1 without a local copy." in again
    assert [record(name).local_deleted_at is not None for name in names] == [True, True, False]
    # One shared disk: a copy missing here is missing everywhere.
    run("cleanup-local", "--older-than", "0")
    assert "Deleted 0 local copies (0 B) of 0 remote file(s)." in run("cleanup-local", "--older-than", "0")


OLD = "FileSystemStorage-S3Storage-0123456789ab"  # as if the bucket or an option had changed


def test_rekey_moves_only_records_whose_file_the_new_remote_has(s3):
    def old_record(name: str, data: bytes, state: str = "remote") -> None:
        checksum = f"md5:{hashlib.md5(data).hexdigest()}" if state == "remote" else ""
        FileRecord.objects.create(
            storage=OLD, name=name, state=state, version="v1", size=len(data), checksum=checksum
        )

    old_record("rk/copied.txt", b"copied")
    old_record("rk/pending.txt", b"pending", state="pending")
    old_record("rk/missing.txt", b"missing")
    old_record("rk/other.txt", b"other")
    old_record("rk/both.txt", b"both")
    for key, body in [
        ("rk/copied.txt", b"copied"),
        ("rk/pending.txt", b"pending"),
        ("rk/other.txt", b"0ther"),
    ]:
        s3.put_object(Bucket="qs-bucket", Key=key, Body=body)
    FileRecord.objects.create(
        storage=default_storage.identity, name="rk/both.txt", state="pending", version="v2"
    )

    dry = run("rekey", OLD, "default", "--dry-run")
    assert "would move rk/copied.txt" in dry and "left rk/missing.txt: not in the new remote" in dry
    assert f"Would move 2 record(s) from {OLD} to default ({default_storage.identity})" in dry
    assert FileRecord.objects.filter(storage=OLD).count() == 5

    out = run("rekey", OLD, "default")
    assert (
        "Moved 2 record(s)" in out
        and "left 1 not in the new remote, 1 of another checksum in the new remote, "
        "1 recorded under the new identity already."
        in out
    )
    for name in ("rk/copied.txt", "rk/pending.txt"):
        assert record(name).state == "remote" and default_storage.using_remote(name)
    assert record("rk/copied.txt").checksum == f"md5:{hashlib.md5(b'copied').hexdigest()}"
    assert sorted(FileRecord.objects.filter(storage=OLD).values_list("name", flat=True)) == [
        "rk/both.txt",
        "rk/missing.txt",
        "rk/other.txt",
    ]


def test_rekey_refuses_a_live_identity_an_unknown_label_and_an_unknown_identity():
    FileRecord.objects.create(storage=OLD, name="x.txt", state="remote", version="v1", size=1)
    with pytest.raises(CommandError, match="a storage of this project"):
        run("rekey", default_storage.identity, "default")
    with pytest.raises(CommandError, match="No queued storage called 'nope'"):
        run("rekey", OLD, "nope")
    with pytest.raises(CommandError, match="No records under the identity 'Gone-000'"):
        run("rekey", "Gone-000", "default")
