"""Operations on many files at once, shared by the admin and the ``queued_storage`` command.

Every state change still goes through :mod:`queued_storage.transitions`; this
module only decides which files to act on and reports what it did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import connections, router
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from . import registry, transitions
from .conf import conf
from .models import FileRecord, State
from .redaction import redact
from .registry import declared, label_of, lookup
from .storage import QueuedStorage
from .transfer import local_md5, remote_fingerprint, remote_md5

# -- status


# The states of the files not yet on the remote: what status counts by default.
WAITING = (State.PENDING, State.TRANSFERRING, State.FAILED)


def summary(last_errors: int = 5, *, remote: bool = False) -> dict[str, Any]:
    """Counts and bytes per storage and state, the oldest file not yet remote, the last errors.

    The files on the remote are counted only with ``remote``: every other
    figure reads, through an index, only the records it reports on, while
    that count reads the record of every file ever transferred.
    """
    now = timezone.now()
    states = [*WAITING, State.REMOTE] if remote else list(WAITING)
    storages: dict[str, dict[str, Any]] = {}
    rows = (
        FileRecord.objects.filter(state__in=states)
        .values("storage", "state")
        .annotate(files=Count("id"), bytes=Sum("size"))
        .order_by("storage")
    )
    for row in rows:
        entry = storages.setdefault(
            row["storage"], {"storage": row["storage"], "label": label_of(row["storage"]), "states": {}}
        )
        entry["states"][row["state"]] = {"files": row["files"], "bytes": row["bytes"] or 0}
    shown = (State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED)
    totals = {str(state): 0 for state in shown if state in states}
    for entry in storages.values():
        for state, counts in entry["states"].items():
            totals[state] += counts["files"]
    waiting = FileRecord.objects.filter(state__in=[State.PENDING, State.TRANSFERRING]).aggregate(
        bytes=Sum("size"), oldest=Min("created_at")
    )
    errors = FileRecord.objects.exclude(last_error="").exclude(state=State.DELETED).order_by("-updated_at")
    last_transfer = (
        FileRecord.objects.filter(transferred_at__isnull=False)
        .order_by("-transferred_at")
        .values_list("transferred_at", flat=True)
        .first()
    )
    return {
        "storages": list(storages.values()),
        "totals": totals,
        "remote_counted": remote,
        "bytes_pending": waiting["bytes"] or 0,
        "oldest_pending_seconds": (
            round((now - waiting["oldest"]).total_seconds(), 1) if waiting["oldest"] else None
        ),
        "last_errors": [
            {
                "storage": label_of(record.storage),
                "name": record.name,
                "state": record.state,
                "attempts": record.attempts,
                "error": record.last_error,
                "at": record.updated_at.isoformat(),
            }
            for record in errors[:last_errors]
        ],
        "last_transfer": last_transfer.isoformat() if last_transfer else None,
    }


# -- retry


@dataclass
class Outcome:
    """What a bulk operation did, by file name."""

    done: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)

    def describe_skipped(self) -> str:
        return ", ".join(f"{len(names)} {reason}" for reason, names in sorted(self.skipped.items()))


def _storage_of(record: FileRecord, outcome: Outcome) -> QueuedStorage | None:
    try:
        return lookup(record.storage)
    except LookupError:
        outcome.skip("of an unknown storage", record.name)
        return None


def retry(records: Iterable[FileRecord]) -> Outcome:
    """Queue the transfer of each pending or failed file again (its error cleared).

    Routed like every transfer (:func:`queued_storage.routing.queue_for`), and
    published once the surrounding transaction commits.
    """
    outcome = Outcome()
    now = timezone.now()
    for record in records:
        if record.state == State.REMOTE:
            outcome.skip("already remote", record.name)
            continue
        if record.state == State.DELETED:
            outcome.skip("deleted", record.name)
            continue
        if record.state == State.TRANSFERRING and record.lease_until and record.lease_until > now:
            outcome.skip("being copied now", record.name)
            continue
        storage = _storage_of(record, outcome)
        if storage is None:
            continue
        fresh = transitions.requeue(record.storage, record.name)
        if fresh is None or fresh.state == State.REMOTE:
            outcome.skip("already remote", record.name)
            continue
        storage._queue(fresh.name, fresh.version, fresh.host, fresh.size)
        outcome.done.append(record.name)
    return outcome


# -- verification


@dataclass(frozen=True)
class Verification:
    name: str
    ok: bool
    detail: str
    recorded: bool  # False when nothing could be concluded (not remote, or the check itself failed)


def _is_missing(exc: Exception) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _checksum_matches(checksum: str, etag: str | None) -> bool | None:
    """Whether the remote's hash ``etag`` matches the recorded ``checksum``; None if not comparable."""
    if not etag or not checksum:
        return None
    kind, _, value = checksum.partition(":")
    if kind == "etag":
        return value == etag
    # An MD5 of the whole file is comparable with a plain MD5 only, not a multipart ETag.
    if kind == "md5" and len(etag) == 32 and "-" not in etag:
        return value == etag
    return None


def _checksum_mismatch(checksum: str, etag: str | None) -> bool:
    return _checksum_matches(checksum, etag) is False


def _read_back(storage: QueuedStorage, record: FileRecord) -> str:
    """Download the remote copy and hash it: an error, or "" when it is the file recorded."""
    got, _ = remote_md5(storage.remote, record.name)
    kind, _, value = record.checksum.partition(":")
    if kind == "md5":
        want, of = value, "the MD5 recorded at transfer"
    else:
        try:
            want, of = local_md5(storage.local, record.name), "the local copy's MD5"
        except FileNotFoundError as exc:  # not the remote copy missing: nothing to compare with
            raise RuntimeError(f"the local copy of {record.name!r} is gone: nothing to compare with") from exc
    if got != want:
        return f"Verification failed: the remote copy read back hashes to MD5 {got}, not {of} {want}."
    return ""


def verify(record: FileRecord, *, read_back: bool = False) -> Verification:
    """Check the remote copy against the record and record the outcome.

    The size, and the recorded MD5 or multipart ETag where the remote keeps a
    comparable hash (:func:`~queued_storage.transfer.remote_fingerprint`).
    With ``read_back`` (before a local copy is deleted), a copy whose hash
    could not be compared is downloaded and hashed.
    """
    if record.state != State.REMOTE:
        return Verification(record.name, False, f"is {record.state}, not on the remote yet", False)
    how = "size"
    try:
        storage = lookup(record.storage)
        size, etag = remote_fingerprint(storage.remote, record.name)
        matches = _checksum_matches(record.checksum, etag)
        if record.size is not None and size != record.size:
            error = f"Verification failed: the remote copy has {size} bytes, the record {record.size}."
        elif matches is False:
            error = f"Verification failed: the remote ETag {etag} does not match {record.checksum}."
        elif matches:
            error, how = "", "size and the remote's hash"
        elif read_back:
            error, how = _read_back(storage, record), "size and MD5 read back"
        else:
            error = ""
    except Exception as exc:
        if not _is_missing(exc):
            # Not a verdict on the copy (network down, storage unknown): record nothing.
            return Verification(
                record.name, False, redact(f"could not be checked: {type(exc).__name__}: {exc}"), False
            )
        error = "Verification failed: the remote copy is missing."
    recorded = transitions.record_verification(record.storage, record.name, record.version, error)
    return Verification(record.name, not error, error or f"remote copy matches ({how})", recorded)


# -- adopting files saved before the app was installed


def _other_roots(storage: QueuedStorage) -> set[str]:
    """Local directories of the other queued storages, which a walk must not adopt."""
    roots = set()
    for other in declared().values():
        location_ = getattr(other.local, "location", None)
        if other.identity != storage.identity and location_:
            roots.add(os.path.realpath(location_))
    return roots


def unrecorded(storage: QueuedStorage) -> Iterator[str]:
    """Names of the local files of ``storage`` that have no record yet, directory by directory."""
    skip = _other_roots(storage)
    local = storage.local
    pending = [""]
    while pending:
        directory = pending.pop()
        try:
            dirs, files = local.listdir(directory)
        except FileNotFoundError:
            continue
        for sub in sorted(dirs, reverse=True):
            path = f"{directory}/{sub}" if directory else sub
            try:
                real = os.path.realpath(local.path(path))
            except NotImplementedError:
                real = ""
            if real not in skip:
                pending.append(path)
        names = [f"{directory}/{name}" if directory else name for name in sorted(files)]
        known = set(
            FileRecord.objects.filter(storage=storage.identity, name__in=names).values_list("name", flat=True)
        )
        yield from (name for name in names if name not in known)


def adopt(storage: QueuedStorage, name: str) -> str:
    """Record a local file saved before the app knew it, and queue it; returns its state.

    One request asks the remote first, as a read of an unknown file does: a
    file already there (moved by another tool) is recorded as remote.
    """
    state = transitions.remember_unknown(
        storage.identity,
        name,
        on_remote=storage.remote.exists(name),
        on_local=True,
        size=storage.local.size(name),
    )
    if state == State.PENDING:
        record = transitions.get(storage.identity, name)
        assert record is not None
        storage._queue(name, record.version, record.host, record.size)
    return state


# -- deleting local copies


def cleanup_candidates(older_than_days: float) -> Iterator[FileRecord]:
    """Remote files transferred at least ``older_than_days`` ago whose local copy may remain.

    Read a chunk at a time; a file whose local copy was deleted, or found
    gone, is not read again.
    """
    cutoff = timezone.now() - timedelta(days=older_than_days)
    records = FileRecord.objects.filter(state=State.REMOTE, local_deleted_at__isnull=True).filter(
        Q(transferred_at__lte=cutoff) | Q(transferred_at__isnull=True, updated_at__lte=cutoff)
    )
    for chunk in transitions.chunked(records):
        yield from chunk


def _holds_local_copies_of(record: FileRecord) -> bool:
    """Whether this host's local storage is where the file's local copy would be.

    Without ``QUEUED_STORAGE_HOST_QUEUE`` any worker copies any file, so the
    local storage is one that every host shares; with it, only the host that
    saved the file has its copy.
    """
    return conf.HOST_QUEUE is None or record.host == conf.HOST


@dataclass
class Cleanup(Outcome):
    bytes_freed: int = 0
    considered: int = 0  # records looked at


def cleanup_local(
    records: Iterable[FileRecord], *, dry_run: bool, report: Callable[[str], None] | None = None
) -> Cleanup:
    """Delete the local copy of each remote file, each only after its remote copy verifies now."""
    outcome = Cleanup()
    for record in records:
        outcome.considered += 1
        storage = _storage_of(record, outcome)
        if storage is None:
            continue
        if not storage.local.exists(record.name):
            outcome.skip("without a local copy", record.name)
            if not dry_run and _holds_local_copies_of(record):
                transitions.local_copy_gone(record.storage, record.name, record.version)
            continue
        check = verify(record, read_back=True)
        if not check.ok:
            outcome.skip("kept: remote copy not verified", record.name)
            if report:
                report(f"kept {record.name}: {check.detail}")
            continue
        size = storage.local.size(record.name)
        # Checked again, under a row lock, just before deleting: a file deleted
        # and saved anew since has a new version whose only copy is the local one.
        if not dry_run:
            with transitions.local_copy_removable(record.storage, record.name, record.version) as removable:
                if removable:
                    storage.local.delete(record.name)
            if not removable:
                outcome.skip("changed meanwhile, or the cache is unreachable", record.name)
                continue
        outcome.done.append(record.name)
        outcome.bytes_freed += size
        if report:
            report(f"{'would delete' if dry_run else 'deleted'} {record.name} ({size} bytes)")
    return outcome


# -- re-pointing records after a storage's identity changed


def identities(using: str | None = None) -> list[str]:
    """Every storage identity in the records, sorted.

    One step of the unique (storage, name) index per identity, whatever the
    number of records: a ``SELECT DISTINCT`` would read every entry.
    """
    connection = connections[using or router.db_for_read(FileRecord)]
    quote = connection.ops.quote_name
    column = next(str(field.column) for field in FileRecord._meta.concrete_fields if field.name == "storage")
    table, key = quote(FileRecord._meta.db_table), quote(column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE found (k) AS (SELECT MIN({key}) FROM {table} UNION ALL "
            f"SELECT (SELECT MIN({key}) FROM {table} WHERE {key} > found.k) FROM found "
            "WHERE found.k IS NOT NULL) SELECT k FROM found WHERE k IS NOT NULL"
        )
        return [str(row[0]) for row in cursor.fetchall()]


def unknown_identities(using: str | None = None) -> list[str]:
    """Storage identities in the records that no storage of this project has."""
    known = {storage.identity for _, storage in [*registry.everything(), *registry.registered()]}
    return [key for key in identities(using) if key not in known]


def rekey(
    old: str, storage: QueuedStorage, *, dry_run: bool, report: Callable[[str], None] | None = None
) -> Outcome:
    """Move the records of identity ``old`` to ``storage``, each only once its remote holds the file.

    A file counts as there when ``storage.remote`` has it at the recorded size
    (and the recorded MD5 or multipart ETag where S3 gives a comparable one);
    it is then recorded as remote under ``storage``.  Every other record stays
    as it is.
    """
    outcome = Outcome()
    now = timezone.now()
    for record in FileRecord.objects.filter(storage=old).exclude(state=State.DELETED).order_by("name"):
        name = record.name
        if record.state == State.TRANSFERRING and record.lease_until and record.lease_until > now:
            outcome.skip("being copied now", name)
            continue
        if transitions.get(storage.identity, name) is not None:
            outcome.skip("recorded under the new identity already", name)
            continue
        try:
            size, etag = remote_fingerprint(storage.remote, name)
        except Exception as exc:
            reason = "not in the new remote" if _is_missing(exc) else "not checked (remote error)"
            outcome.skip(reason, name)
            if report:
                report(
                    f"left {name}: {reason}"
                    + ("" if _is_missing(exc) else redact(f": {type(exc).__name__}: {exc}"))
                )
            continue
        if record.size is not None and size != record.size:
            outcome.skip("of another size in the new remote", name)
            continue
        if record.state == State.REMOTE and _checksum_mismatch(record.checksum, etag):
            outcome.skip("of another checksum in the new remote", name)
            continue
        if not dry_run and not transitions.move(old, storage.identity, name, record.version, size=size):
            outcome.skip("changed meanwhile", name)
            continue
        outcome.done.append(name)
        if report:
            report(f"{'would move' if dry_run else 'moved'} {name}")
    return outcome
