"""``manage.py queued_storage <subcommand>``: look after the files this app moves."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queued_storage import operations
from queued_storage.models import FileRecord, State
from queued_storage.registry import by_label, declared, label_of, lookup
from queued_storage.storage import QueuedStorage
from queued_storage.sweeper import sweep


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


class Command(BaseCommand):
    help = (
        "Operate queued storages: status, retry, requeue, transfer-existing, cleanup-local, rekey "
        "(see each subcommand's --help)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=argparse.ArgumentParser)

        p = sub.add_parser(
            "status",
            help="Counts per storage and state, bytes waiting, the oldest waiting file, the last errors.",
            description="Show how many files each queued storage has in each state not yet on the "
            "remote (pending, transferring, failed) and their size, the bytes not yet on the remote, "
            "the age of the oldest file not yet on the remote, the most recent errors and the time "
            "of the last transfer; with --remote, also the files on the remote. Reads the database "
            "only, and only the records it reports on; never contacts a storage.",
        )
        p.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print one JSON object, for scripts and monitoring.",
        )
        p.add_argument(
            "--errors", type=int, default=5, metavar="N", help="Show the N latest errors (default: 5)."
        )
        p.add_argument(
            "--remote",
            action="store_true",
            help="Also count the files on the remote; this reads the record of every one of them.",
        )

        p = sub.add_parser(
            "retry",
            help="Queue failed files, or the named ones, again.",
            description="Clear the error of failed (--failed) or named files and queue their "
            "transfer again, routed to the same queue as any transfer (per host with "
            "QUEUED_STORAGE_HOST_QUEUE). Files already remote or being copied are left alone.",
        )
        p.add_argument("names", nargs="*", metavar="NAME", help="File names, as stored (e.g. docs/a.pdf).")
        p.add_argument("--failed", action="store_true", help="Retry every failed file.")
        p.add_argument("--storage", metavar="ALIAS", help="Only files of this storage (see `status`).")

        p = sub.add_parser(
            "requeue",
            help="Finish abandoned deletions; queue again files left pending, stuck with a dead worker, "
            "or failed.",
            description="First finish every deletion whose holder died or could not remove a copy "
            "(a deleted file whose lease lapsed): remove its local and remote copy, then its record, "
            "which frees the name. Then queue again every file that is pending, or transferring with "
            "an expired lease (its worker died), and has been neither changed nor queued for "
            "--older-than seconds, so each file gets at most one message per --older-than however "
            "often this runs. Files of a delayed storage are queued only once transfer() was called "
            "for them. With --failed, failed files are reset and queued as well. The workers run "
            "the same sweep by themselves every QUEUED_STORAGE_SWEEP_INTERVAL seconds; this runs it "
            "now. Safe to run at any time, and from cron when the workers' sweeps are turned off.",
        )
        p.add_argument(
            "--older-than",
            type=float,
            default=300,
            metavar="SECONDS",
            help="Only files neither changed nor queued for this long (default: 300).",
        )
        p.add_argument("--failed", action="store_true", help="Also queue files that failed for good.")

        p = sub.add_parser(
            "transfer-existing",
            help="Adopt local files that have no record (saved before the app was installed) and queue them.",
            description="Walk the local storage of each queued storage (or of --storage) and record "
            "every file the app does not know yet. Each is looked up once on the remote: a file "
            "already there is recorded as remote, any other is queued for transfer. The local "
            "directories of other queued storages nested inside are skipped. Shows a progress bar "
            "on a terminal, one line per file otherwise.",
        )
        p.add_argument("--storage", metavar="ALIAS", help="A STORAGES alias or app_label.Model.field.")
        p.add_argument("--dry-run", action="store_true", help="List the files; record and queue nothing.")

        p = sub.add_parser(
            "cleanup-local",
            help="Delete local copies of files whose remote copy is verified.",
            description="For every remote file transferred more than --older-than days ago that "
            "still has a local copy, check the remote copy again (size, and the MD5 or multipart ETag "
            "recorded at transfer where S3 gives a comparable ETag) and delete the local copy "
            "only if it matches. Reads already go to the remote.",
        )
        p.add_argument(
            "--older-than",
            type=float,
            default=7,
            metavar="DAYS",
            help="Only files transferred at least this long ago (default: 7; 0 for all).",
        )
        p.add_argument("--dry-run", action="store_true", help="Verify and list; delete nothing.")

        p = sub.add_parser(
            "rekey",
            help="Move the records of a former storage identity to a declared storage, file by file.",
            description="A storage's identity changes with its options and its remote's bucket, "
            "endpoint or location (system check queued_storage.W005 names identities no storage has). "
            "After copying the files to the new remote, move each record of OLD_IDENTITY to the storage "
            "LABEL, as remote, once that storage's remote has the file at the recorded size (and "
            "checksum, where S3 gives a comparable ETag). Records of files not found there stay as they "
            "are; run it again after copying them. Run it once every process has the new settings.",
        )
        p.add_argument("old", metavar="OLD_IDENTITY", help="The former identity, as `status` shows it.")
        p.add_argument("label", metavar="LABEL", help="A STORAGES alias or app_label.Model.field.")
        p.add_argument("--dry-run", action="store_true", help="Check and list; move nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "handle_" + options["subcommand"].replace("-", "_"))(**options)

    def _storage(self, label: str) -> QueuedStorage:
        try:
            return by_label(label)
        except LookupError as exc:
            raise CommandError(str(exc)) from exc

    def _storages(self, label: str | None) -> dict[str, QueuedStorage]:
        return declared() if label is None else {label: self._storage(label)}

    # -- subcommands

    def handle_status(self, *, as_json: bool, errors: int, remote: bool, **options: Any) -> None:
        report = operations.summary(last_errors=errors, remote=remote)
        if as_json:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
            return
        if not report["storages"]:
            self.stdout.write("No files recorded yet." if remote else "No files waiting for the remote.")
        for entry in report["storages"]:
            self.stdout.write(f"{entry['label']} ({entry['storage']})")
            for state, counts in sorted(entry["states"].items()):
                self.stdout.write(f"  {state:<13}{counts['files']:>8} files {_size(counts['bytes']):>10}")
        totals = ", ".join(f"{files} {state}" for state, files in report["totals"].items())
        uncounted = "" if remote else " (files on the remote not counted: --remote counts them)"
        self.stdout.write(f"Total: {totals}{uncounted}.")
        self.stdout.write(f"Waiting for transfer: {_size(report['bytes_pending'])}.")
        oldest = report["oldest_pending_seconds"]
        self.stdout.write(f"Oldest file waiting: {_age(oldest) if oldest is not None else 'none'}.")
        if report["last_errors"]:
            self.stdout.write("Last errors:")
            for error in report["last_errors"]:
                self.stdout.write(
                    f"  {error['at']} {error['storage']} {error['name']} "
                    f"({error['state']}, {error['attempts']} attempts): {error['error']}"
                )

    def handle_retry(self, *, names: list[str], failed: bool, storage: str | None, **options: Any) -> None:
        if not names and not failed:
            raise CommandError("Name the files to retry, or pass --failed to retry every failed file.")
        records = FileRecord.objects.all()
        if storage is not None:
            records = records.filter(storage=self._storage(storage).identity)
        chosen = list(records.filter(name__in=names)) if names else []
        if failed:
            chosen += [r for r in records.filter(state=State.FAILED) if r.name not in names]
        unknown = sorted(set(names) - {r.name for r in chosen})
        outcome = operations.retry(chosen)
        for name in unknown:
            outcome.skip("unknown", name)
            self.stderr.write(f"No record of {name!r}.")
        skipped = outcome.describe_skipped()
        self.stdout.write(
            f"Queued {len(outcome.done)} file(s) again" + (f"; skipped {skipped}." if skipped else ".")
        )
        if unknown:
            raise CommandError(f"{len(unknown)} name(s) not found.", returncode=2)

    def handle_requeue(self, *, older_than: float, failed: bool, **options: Any) -> None:
        swept = sweep(older_than, failed=failed)
        self.stdout.write(f"Queued {swept.queued} file(s) again.")
        if swept.deleted or swept.undeletable:
            left = f"; {swept.undeletable} still failing, see the log" if swept.undeletable else ""
            self.stdout.write(f"Finished {swept.deleted} deletion(s){left}.")

    def handle_transfer_existing(self, *, storage: str | None, dry_run: bool, **options: Any) -> None:
        tty = self.stdout.isatty()
        adopted = queued = 0
        for label, qs in self._storages(storage).items():
            names = list(operations.unrecorded(qs))
            self.stdout.write(f"{label}: {len(names)} local file(s) without a record.")
            states: dict[str, int] = {}
            for i, name in enumerate(names, 1):
                if dry_run:
                    self.stdout.write(f"  would adopt {name}")
                    continue
                state = operations.adopt(qs, name)
                states[state] = states.get(state, 0) + 1
                if tty:
                    done = int(30 * i / len(names))
                    self.stdout.write(f"\r  [{'#' * done}{' ' * (30 - done)}] {i}/{len(names)}", ending="")
                else:
                    self.stdout.write(f"  {'queued' if state == State.PENDING else state}: {name}")
            if tty and names and not dry_run:
                self.stdout.write("")
            adopted += sum(states.values())
            queued += states.get(State.PENDING, 0)
        if dry_run:
            self.stdout.write("Dry run: nothing recorded or queued.")
        else:
            self.stdout.write(
                f"Adopted {adopted} file(s): queued {queued}, found {adopted - queued} already on the remote."
            )

    def handle_cleanup_local(self, *, older_than: float, dry_run: bool, **options: Any) -> None:
        candidates = operations.cleanup_candidates(older_than)
        outcome = operations.cleanup_local(candidates, dry_run=dry_run, report=self.stdout.write)
        verb = "Would delete" if dry_run else "Deleted"
        skipped = outcome.describe_skipped()
        self.stdout.write(
            f"{verb} {len(outcome.done)} local copies ({_size(outcome.bytes_freed)}) of "
            f"{outcome.considered} remote file(s)" + (f"; skipped {skipped}." if skipped else ".")
        )

    def handle_rekey(self, *, old: str, label: str, dry_run: bool, **options: Any) -> None:
        target = self._storage(label)
        try:
            lookup(old)
        except LookupError:
            pass
        else:
            raise CommandError(
                f"{old} is the identity of {label_of(old)}, a storage of this project; rekey moves the "
                "records of an identity that no storage has any more (system check queued_storage.W005)."
            )
        if not FileRecord.objects.filter(storage=old).exists():
            raise CommandError(f"No records under the identity {old!r}; `queued_storage status` lists them.")
        outcome = operations.rekey(old, target, dry_run=dry_run, report=self.stdout.write)
        skipped = outcome.describe_skipped()
        verb = "Would move" if dry_run else "Moved"
        self.stdout.write(
            f"{verb} {len(outcome.done)} record(s) from {old} to {label} ({target.identity})"
            + (f"; left {skipped}." if skipped else ".")
        )
