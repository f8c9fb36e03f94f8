"""``manage.py queued_storage <subcommand>``: look after the files this app moves."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from queued_storage.tasks import requeue


class Command(BaseCommand):
    help = "Operate queued storages: requeue stuck transfers (see each subcommand's --help)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=argparse.ArgumentParser)
        p = sub.add_parser(
            "requeue",
            help="Queue again files left pending (broker was down), stuck with a dead worker, or failed.",
            description="Queue again every file that is pending, or transferring with an expired "
            "lease (its worker died), for longer than --older-than seconds. With --failed, failed "
            "files are reset and queued as well. Safe to run at any time, e.g. from cron.",
        )
        p.add_argument(
            "--older-than",
            type=float,
            default=300,
            metavar="SECONDS",
            help="Only files untouched for this long (default: 300).",
        )
        p.add_argument("--failed", action="store_true", help="Also queue files that failed for good.")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "handle_" + options["subcommand"].replace("-", "_"))(**options)

    def handle_requeue(self, *, older_than: float, failed: bool, **options: Any) -> None:
        queued = requeue(older_than, failed=failed)
        self.stdout.write(f"Queued {queued} file(s) again.")
