"""Scenario 8: ``url()``, a sweep, ``status``, ``cleanup-local`` and the admin on a table of many records.

For each database (SQLite, PostgreSQL) and each size of the table, the run
fills one table (``fill``), then measures each operation in a process of its
own (``measure``), so each peak RSS is that of one operation in a fresh
Django process, and writes the plan of every query they send
(``plans``) to docs/query-plans.rst.  The three are subcommands of
``python -m benchmarks.scale``, run with ``DJANGO_SETTINGS_MODULE`` set to
``benchmarks.scale_settings`` and ``QS_SCALE_DB`` naming the database.

Whatever the table's size, the rows an operation acts on (:class:`Backlog`)
are the same in number: what grows is the rest of the table, remote files
whose local copies were cleaned up long ago.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as tz
from pathlib import Path
from typing import Any

STORAGE_WEIGHTS = {"default": 80, "delayed": 15, "wan": 5}  # percent of the rows, by STORAGES alias
HOSTS = ("web1", "web2", "web3")
SEARCHED = 4242  # the row the admin search looks for, present at every size
TABLE = "queued_storage_filerecord"
Call = Callable[[], object]


@dataclass(frozen=True)
class Backlog:
    """The rows the operations act on: the same count at every size of the table."""

    pending: int = 1000  # the newest rows
    fresh: int = 200  # of the pending, saved within the last minute: not yet the sweeper's
    transferring: int = 100  # half of them with a lapsed lease (their worker died)
    failed: int = 200  # spread through the table
    deleted: int = 50  # tombstones whose lease lapsed, spread through the table
    errors: int = 20  # remote files whose last verification failed, spread through the table
    recent: int = 1000  # remote, transferred within the last 6 days: the local copy is kept
    cleanup: int = 100  # remote, transferred 8 days ago, local copy on disk, remote copy in the bucket

    @property
    def tail(self) -> int:
        return self.cleanup + self.recent + self.transferring + self.pending

    @property
    def spread(self) -> int:
        return self.failed + self.deleted + self.errors


TINY_BACKLOG = Backlog(
    pending=20, fresh=5, transferring=4, failed=6, deleted=3, errors=2, recent=20, cleanup=3
)


class Layout:
    """The kind of each row, by primary key (1 to ``rows``).

    The old remote rows come first, with the spread kinds at even intervals
    among them, so a query that scans the table in key order for those reads
    all of it; then the tail, newest last: the cleanup backlog, the recent
    remote files, the transferring and the pending ones.
    """

    def __init__(self, rows: int, backlog: Backlog) -> None:
        self.rows, self.backlog = rows, backlog
        self.body = rows - backlog.tail
        if self.body < 2 * backlog.spread:
            raise ValueError(f"{rows} rows hold no table around a backlog of {backlog.tail + backlog.spread}")
        spread = ["failed"] * backlog.failed + ["deleted"] * backlog.deleted + ["errors"] * backlog.errors
        random.Random(0).shuffle(spread)
        step = self.body // len(spread)
        self.spread = {1 + j * step + step // 2: kind for j, kind in enumerate(spread)}
        counts = [
            ("cleanup", backlog.cleanup),
            ("recent", backlog.recent),
            ("transferring", backlog.transferring),
            ("pending", backlog.pending),
        ]
        self.tail: list[tuple[str, int, int]] = []  # (kind, first key, last key)
        first = self.body + 1
        for kind, count in counts:
            self.tail.append((kind, first, first + count - 1))
            first += count

    def kind(self, i: int) -> tuple[str, int]:
        """The kind of row ``i``, and its place (from 1) among the tail rows of that kind."""
        if i <= self.body:
            return self.spread.get(i, "old"), 0
        return next((kind, i - first + 1) for kind, first, last in self.tail if i <= last)

    def of_kind(self, kind: str) -> range:
        """The keys of a tail kind."""
        return next(range(first, last + 1) for name, first, last in self.tail if name == kind)


def alias_of(i: int) -> str:
    """The ``STORAGES`` alias of row ``i``, by :data:`STORAGE_WEIGHTS`."""
    slot = (i * 37) % 100
    for alias, weight in STORAGE_WEIGHTS.items():
        if slot < weight:
            return alias
        slot -= weight
    raise AssertionError("the weights add up to 100")


def name_of(i: int) -> str:
    return f"scale/{i // 1000:04d}/IMG_{i:07d}.jpg"


def payload(i: int) -> bytes:
    return f"file {i}\n".encode() * 10


# -- filling the table (in the child process) -----------------------------------------------


def _rows(rows: int, backlog: Backlog, identities: dict[str, str], now: datetime) -> Iterator[dict[str, Any]]:
    """Every record, as field values, in key order."""
    layout = Layout(rows, backlog)
    for i in range(1, rows + 1):
        kind, place = layout.kind(i)
        size = 1000 + (i * 7919) % 5_000_000
        created = now - timedelta(days=400) + timedelta(days=380) * (i / layout.body)  # the table's year
        row: dict[str, Any] = {
            "storage": identities[alias_of(i)],
            "name": name_of(i),
            "state": "remote",
            "version": f"{i:016x}",
            "size": size,
            "checksum": f"md5:{i:032x}",
            "attempts": 1,
            "last_error": "",
            "host": HOSTS[i % len(HOSTS)],
            "bytes_done": size,
            "lease_until": None,
            "queued_at": None,
            "local_deleted_at": created + timedelta(days=8),  # by cleanup-local, long ago
        }
        transferred: datetime | None = created + timedelta(seconds=5)
        updated = transferred
        if kind == "failed":
            row.update(state="failed", attempts=5, bytes_done=0, local_deleted_at=None)
            row["last_error"] = "ConnectionError: could not connect to the endpoint (5 attempts)"
            transferred, updated = None, created + timedelta(hours=1)
        elif kind == "deleted":
            updated = created + timedelta(days=2)
            row.update(state="deleted")  # its lease lapsed: the sweeper finishes it
        elif kind == "errors":
            row["last_error"] = "Verification failed: the remote copy is missing."
            updated = created + timedelta(days=3)
        elif kind == "cleanup":
            data = payload(i)
            created = now - timedelta(days=8, seconds=place)
            row.update(storage=identities["default"], size=len(data), bytes_done=len(data))
            row["local_deleted_at"] = None
            row["checksum"] = f"md5:{hashlib.md5(data).hexdigest()}"
            transferred = updated = created + timedelta(seconds=5)
        elif kind == "recent":
            created = now - timedelta(days=6) + timedelta(days=6) * (place / (backlog.recent + 1))
            transferred = updated = created + timedelta(seconds=5)
            row["local_deleted_at"] = None
        elif kind == "transferring":
            lapsed = place % 2 == 0
            created = now - timedelta(hours=2)
            row.update(state="transferring", bytes_done=size // 2, checksum="", local_deleted_at=None)
            row["lease_until"] = now - timedelta(minutes=10) if lapsed else now + timedelta(hours=1)
            transferred, updated = None, (now - timedelta(hours=1) if lapsed else now)
        elif kind == "pending":
            fresh = place > backlog.pending - backlog.fresh
            created = now - (timedelta(seconds=30) if fresh else timedelta(hours=1))
            row.update(state="pending", attempts=0, bytes_done=0, checksum="", local_deleted_at=None)
            transferred, updated = None, created
        row.update(created_at=created, updated_at=updated, transferred_at=transferred)
        yield row


def fill(rows: int, backlog: Backlog) -> dict[str, Any]:
    """Create the schema and ``rows`` records in one transaction; the cleanup backlog's copies too."""
    import django
    from django.core.management import call_command

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages
    from django.db import connection, transaction

    from queued_storage.transitions import _inserted

    call_command("migrate", verbosity=0)
    identities = {alias: storages[alias].identity for alias in STORAGE_WEIGHTS}  # type: ignore[attr-defined]
    fields = _inserted()
    dates = {field.name for field in fields if field.get_internal_type() == "DateTimeField"}
    defaults = {field.name: field.get_db_prep_save(field.get_default(), connection) for field in fields}
    adapt = connection.ops.adapt_datetimefield_value
    names = [field.name for field in fields]

    def values(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple((adapt(row[n]) if n in dates else row[n]) if n in row else defaults[n] for n in names)

    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(field.column)) for field in fields)
    started = time.perf_counter()
    produced = (values(row) for row in _rows(rows, backlog, identities, datetime.now(tz.utc)))
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {quote(TABLE)} ({columns}) FROM STDIN") as copy:
                for row in produced:
                    copy.write_row(row)
        else:
            slots = ", ".join(["%s"] * len(fields))
            cursor.executemany(f"INSERT INTO {quote(TABLE)} ({columns}) VALUES ({slots})", produced)
    inserted = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {quote(TABLE)}")  # as autovacuum leaves a table this old
    User.objects.update_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
    default: Any = storages["default"]
    for i in Layout(rows, backlog).of_kind("cleanup"):
        data = payload(i)
        path = Path(default.local.path(name_of(i)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        default.remote.save(name_of(i), ContentFile(data))
    return {"insert_seconds": inserted, "seconds": time.perf_counter() - started}


# -- measuring (in the child process) -------------------------------------------------------

CHANGELIST = "/admin/queued_storage/filerecord/"
ADMIN = {
    "admin changelist": {},
    "admin changelist, state filter": {"state__exact": "failed"},
    "admin changelist, search": {"q": f"IMG_{SEARCHED:07d}"},
}
COMMANDS = {
    "status": ("status",),
    "status --json": ("status", "--json"),
    "status --remote": ("status", "--remote"),
    "cleanup-local --dry-run": ("cleanup-local", "--dry-run"),
    "requeue (a sweep)": ("requeue",),
}
URL = ("url() warm cache", "url() cache flushed")
# In the order measured: the sweep changes what it acts on, so it comes last, timed once.
SUBJECTS = (*URL, *(c for c in COMMANDS if c != "requeue (a sweep)"), *ADMIN, "requeue (a sweep)")


def _peak_kib() -> int:
    """This process's peak RSS: ``VmHWM``, which starts anew at ``exec``.

    Not ``ru_maxrss``: Linux carries that over ``fork`` and ``exec``, so a
    parent's peak (the full run touches all free memory first) would show.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise LookupError("VmHWM")


def _command(args: tuple[str, ...]) -> Call:
    from django.core.management import call_command

    def run() -> None:
        out = io.StringIO()
        call_command("queued_storage", *args, stdout=out, stderr=out)

    return run


def _admin(params: dict[str, str]) -> Call:
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username="admin"))

    def get() -> None:
        response = client.get(CHANGELIST, params)
        if response.status_code != 200:
            raise RuntimeError(f"GET {CHANGELIST} {params} answered {response.status_code}")

    return get


def _url(flush: bool, rows: int, backlog: Backlog) -> Callable[[], tuple[Call, Call]]:
    """The next ``url()`` call: of a random old remote file of the default storage.

    Returns what to do before the timed call (delete the name's cache entry
    if ``flush``) and the call itself.
    """
    from django.core.cache import caches
    from django.core.files.storage import default_storage

    storage: Any = default_storage
    layout, pick = Layout(rows, backlog), random.Random(rows)
    names: list[str] = []
    while len(names) < 50:
        i = pick.randrange(1, layout.body + 1)
        if layout.kind(i)[0] == "old" and alias_of(i) == "default":
            names.append(name_of(i))
    cache = caches["default"]
    for name in names:
        storage.url(name)

    def forget(name: str) -> None:
        if flush:
            cache.delete(storage.get_cache_key(name))

    def next_call() -> tuple[Call, Call]:
        name = pick.choice(names)
        return (lambda: forget(name)), (lambda: storage.url(name))

    return next_call


# Shown in the query plans only: how a worker takes the waiting files after a message's own.
WAITING = "a message's waiting files (the worker)"


def _waiting() -> None:
    from django.core.files.storage import default_storage

    from queued_storage import transitions

    identity = default_storage.identity  # type: ignore[attr-defined]
    transitions.take_waiting(identity, HOSTS[0], most=50, delayed=False, owner="plans")


def _subject(subject: str) -> Call:
    if subject == WAITING:
        return _waiting
    if subject in ADMIN:
        return _admin(ADMIN[subject])
    return _command(COMMANDS[subject])


def measure(subjects: list[str], reps: int, calls: int, rows: int, backlog: Backlog) -> dict[str, Any]:
    """Time each subject ``reps`` times (``url()``: ``calls`` calls) after one untimed run.

    The peak RSS is the process's, so of one subject only when one is given.
    """
    import django

    django.setup()
    from . import celery_app  # noqa: F401 - the app the sweep publishes with

    found: dict[str, Any] = {}
    for subject in subjects:
        samples = []
        if subject in URL:
            next_call = _url(subject == "url() cache flushed", rows, backlog)
            for _ in range(calls):
                before, call = next_call()
                before()
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
        else:
            run = _subject(subject)
            if subject != "requeue (a sweep)":
                run()
            for _ in range(1 if subject == "requeue (a sweep)" else reps):
                started = time.perf_counter()
                run()
                samples.append(time.perf_counter() - started)
        found[subject] = {"samples": samples, "peak_kib": _peak_kib()}
    return found


# -- query plans (in the child process) -----------------------------------------------------


def _shape(sql: str) -> str:
    """The statement with its values taken out: the same statement with other values has the same shape."""
    sql = re.sub(r"'(?:[^']|'')*'(?:::\w+)?", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?\b", "?", sql)
    return re.sub(r"\((?:\?, )+\?\)", "(?...)", sql)


def _explain(sql: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN " + sql)
            return [str(row[0]) for row in cursor.fetchall()]
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        rows = cursor.fetchall()
    depth = {0: 0}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, 0) + 1
        lines.append("  " * (depth[node] - 1) + str(detail))
    return lines


def plans(rows: int, backlog: Backlog) -> dict[str, Any]:
    """Each distinct statement each subject sends about the records, with the database's plan for it.

    Each subject runs in a transaction rolled back after, so the table stays
    as the measurements find it.
    """
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from . import celery_app  # noqa: F401 - the app the sweep publishes with

    found: dict[str, Any] = {}
    for subject in ("url() cache flushed", *COMMANDS, *ADMIN, WAITING):
        if subject in URL:
            before, call = _url(True, rows, backlog)()
            before()
        else:
            call = _subject(subject)
        with transaction.atomic(), CaptureQueriesContext(connection) as captured:
            call()
            transaction.set_rollback(True)
        seen: dict[str, dict[str, Any]] = {}
        for query in captured.captured_queries:
            sql = query["sql"]
            if TABLE not in sql or sql.startswith(("SAVEPOINT", "RELEASE")):
                continue
            entry = seen.setdefault(_shape(sql), {"sql": sql, "times": 0})
            entry["times"] += 1
        found[subject] = [{**entry, "plan": _explain(entry["sql"])} for entry in seen.values()]
    return {"vendor": connection.vendor, "subjects": found}


# -- the scenario (in the benchmark's process) ----------------------------------------------

DATABASES = ("SQLite", "PostgreSQL")


def _child(action: str, env: dict[str, str], *args: str) -> Any:
    command = [sys.executable, "-m", "benchmarks.scale", action, *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _merge(into: dict[str, Any], found: dict[str, Any]) -> None:
    """Add one child's samples of each subject to those of the same size; the larger peak RSS."""
    for subject, got in found.items():
        kept = into.setdefault(subject, {"samples": [], "peak_kib": 0})
        kept["samples"] += got["samples"]
        kept["peak_kib"] = max(kept["peak_kib"], got["peak_kib"])


SCALE_ROUNDS = 4


def _share(total: int, index: int) -> int:
    """Round ``index``'s part of ``total`` samples split over :data:`SCALE_ROUNDS` rounds."""
    return total // SCALE_ROUNDS + (index < total % SCALE_ROUNDS)


def run(services: Any, results: Any, plan: Any, plans_path: Path | None) -> None:
    """Fill, measure and explain for each database and size of ``plan.scale_rows``; rows into ``results``."""
    from tests.services import PostgresServer

    from .harness import PARKED
    from .results import Row

    tiny = plan.scale_rows[-1] < 10_000  # the smoke test's plan: the tiny backlog
    small, large = plan.scale_rows[0], plan.scale_rows[-1]
    explained: dict[str, Any] = {}
    with PostgresServer(services.workdir / "scale-pg") as postgres:
        for db in DATABASES:
            envs: dict[int, tuple[dict[str, str], list[str]]] = {}
            for rows in plan.scale_rows:
                where = services.workdir / f"scale-{db.lower()}-{rows}"
                where.mkdir()
                if db == "PostgreSQL":
                    postgres.create_database(f"scale_{rows}")
                    target = f"postgres:{postgres.port}:scale_{rows}"
                else:
                    target = f"sqlite:{where / 'db.sqlite3'}"
                env = {
                    "DJANGO_SETTINGS_MODULE": "benchmarks.scale_settings",
                    "QS_SCALE_DB": target,
                    "QS_SCALE_MEDIA": str(where / "media"),
                    "QS_BENCH_QUEUE": PARKED,
                }
                common = ["--rows", str(rows), *(["--tiny"] if tiny else [])]
                filled = _child("fill", env, *common)
                print(f"  {db}, {rows:,} rows: filled in {filled['seconds']:.0f} s", flush=True)
                envs[rows] = env, common
            measured: dict[int, dict[str, Any]] = {rows: {} for rows in plan.scale_rows}
            # One process per subject, so each peak RSS is one operation's; the smoke test shares one.
            batches = [list(SUBJECTS)] if tiny else [[subject] for subject in SUBJECTS]
            # The sizes take turns in four rounds, A B, B A, A B, B A, each with a
            # quarter of the samples and a process of its own, so that the
            # machine's drift over the minutes a subject takes falls on both,
            # and so does the speed of single processes, which differs from
            # one to the next by more than a target's margin (see
            # docs/benchmarks.rst).  The smoke test's plan has one round.
            rounds = [(plan.scale_reps, plan.url_calls, plan.scale_rows)]
            if not tiny:
                rounds = [
                    (
                        _share(plan.scale_reps, i),
                        _share(plan.url_calls, i),
                        plan.scale_rows[:: -1 if i % 2 else 1],
                    )
                    for i in range(SCALE_ROUNDS)
                ]
            for batch in batches:
                sweep = batch[-1] == "requeue (a sweep)"
                for reps, calls, order in rounds[:1] if sweep else rounds:  # a sweep changes the table
                    for rows in order:
                        env, common = envs[rows]
                        if sweep and rows == large:
                            explained[db] = _child("plans", env, *common)  # before the sweep
                        counts = ["--reps", str(max(reps, 1)), "--calls", str(max(calls, 1))]
                        _merge(measured[rows], _child("measure", env, *common, *counts, "--subjects", *batch))
            for rows in plan.scale_rows:
                _add(results, Row, db, rows, measured[rows], measured[small] if rows != small else None)
            services.purge_parked()
            for rows in plan.scale_rows:
                shutil.rmtree(services.workdir / f"scale-{db.lower()}-{rows}", ignore_errors=True)
    if plans_path is not None:
        plans_path.write_text(plans_rst(explained, large))
        print(f"  query plans: {plans_path}", flush=True)


TARGETS = {
    "url() warm cache": 1.25,
    "url() cache flushed": 1.25,
    "status": 1.5,
    "status --json": 1.5,
    "cleanup-local --dry-run": 1.5,
    "requeue (a sweep)": 1.5,
    "admin changelist": 1.5,
    "admin changelist, state filter": 1.5,
}
NOTES = {
    "status --remote": "counts every remote file: reads every record (no target)",
    "admin changelist, search": "a search reads every name: grows with the table",
}


def _add(results: Any, row_type: Any, db: str, rows: int, measured: dict[str, Any], base: Any) -> None:
    case = f"{db}, {rows:,} rows"
    for subject in SUBJECTS:
        samples = measured[subject]["samples"]
        peak = measured[subject]["peak_kib"] / 1024
        url = subject in URL
        row = row_type(
            "8 scale", case, subject, "µs" if url else "ms", [s * (1e6 if url else 1e3) for s in samples]
        )
        row.note = f"peak RSS {peak:.0f} MiB" + (f"; {NOTES[subject]}" if subject in NOTES else "")
        if base is not None:
            before = statistics.median(base[subject]["samples"])
            row.ratio = statistics.median(samples) / before if before else None
            limit = TARGETS.get(subject)
            targets, ok = [], True
            if limit is not None and row.ratio is not None:
                targets.append(f"≤ {limit}× at the smaller table")
                ok = row.ratio <= limit
            if subject.startswith("admin"):
                targets.append("< 1 s")
                ok = ok and statistics.median(samples) < 1.0
            if targets:
                row.target, row.ok = " and ".join(targets), ok
        results.add(row)
        if base is not None and not url:
            memory = row_type("8 scale", case, f"{subject} peak RSS", "MiB", [peak])
            memory.target, memory.ok = "< 200 MiB", peak < 200
            results.add(memory)


def _readable(sql: str) -> str:
    """The statement as the docs show it: no table prefix, long lists of columns and values cut."""
    sql = sql.replace(f'"{TABLE}".', "")
    sql = re.sub(r"^SELECT (\"\w+\", ){4,}\"\w+\" FROM", "SELECT … FROM", sql)
    sql = re.sub(
        r"IN \(((?:[^(),]+, ){3})(?:[^()]+, )*([^(),]+)\)",
        lambda m: f"IN ({m.group(1)}…, {m.group(2)})",
        sql,
    )
    return sql


def plans_rst(explained: dict[str, Any], rows: int) -> str:
    """docs/query-plans.rst: for each subject, each database's statements and plans."""
    title = "Query plans"
    lines = [
        "=" * len(title),
        title,
        "=" * len(title),
        "",
        ".. Written by ``python -m benchmarks --only 8`` (benchmarks/scale.py); do not edit by hand.",
        "",
        f"Every statement about the records that each operation sends, on a table of {rows:,}",
        "records (see :doc:`benchmarks`, scenario 8), with the plan the database chose:",
        "SQLite's ``EXPLAIN QUERY PLAN`` (no ``ANALYZE`` run, as in most projects) and",
        "PostgreSQL's ``EXPLAIN`` (after ``VACUUM ANALYZE``).  A statement sent several times",
        "with other values (one per list of rows, one per file) is shown once, with the count.",
        "``tests/test_scale.py`` fails if one of these loses its index.",
        "",
        ".. contents::",
        "   :local:",
        "",
    ]
    subjects = list(next(iter(explained.values()))["subjects"]) if explained else []
    for subject in subjects:
        lines += [subject, "=" * len(subject), ""]
        for db, found in explained.items():
            lines += [db, "-" * len(db), ""]
            for entry in found["subjects"][subject]:
                lines += [f"Sent {entry['times']} times::" if entry["times"] > 1 else "::", ""]
                lines += ["    " + _readable(entry["sql"]), ""]
                lines += ["    " + step for step in entry["plan"]]
                lines += [""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("action", choices=("fill", "measure", "plans"))
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--tiny", action="store_true", help="the smoke test's backlog")
    parser.add_argument("--subjects", nargs="+", choices=SUBJECTS, default=list(SUBJECTS))
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    backlog = TINY_BACKLOG if args.tiny else Backlog()
    if args.action == "fill":
        out = fill(args.rows, backlog)
    elif args.action == "plans":
        out = plans(args.rows, backlog)
    else:
        out = measure(args.subjects, args.reps, args.calls, args.rows, backlog)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
