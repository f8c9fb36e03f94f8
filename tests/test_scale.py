"""The queries that read many records go through an index: a table of a million costs what ten thousand do.

Each test runs an operation, captures the queries it sends about the
records, and asks the database for their plans: SQLite's ``EXPLAIN QUERY
PLAN``, PostgreSQL's ``EXPLAIN`` with sequential scans and sorts priced out,
so that a plan still using one has no index to use instead.  A change that
loses an index fails here.  SQLite plans without statistics (no ``ANALYZE``
has run, as in most projects), so the plan of this small table is the plan
of a large one; docs/query-plans.rst shows them on a million records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage as _default
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queued_storage import QueuedStorage, operations, transitions
from queued_storage.admin import FileRecordAdmin
from queued_storage.models import FileRecord, State

default_storage: QueuedStorage = _default  # type: ignore[assignment]

pytestmark = pytest.mark.django_db

TABLE = FileRecord._meta.db_table
CHANGELIST = "/admin/queued_storage/filerecord/"
OTHER = "FileSystemStorage-S3Storage-000000000000"  # a second storage identity
# The indexes that hold only some rows: reading one whole reads only those rows.
PARTIAL = ("queued_storage_local_idx", "queued_storage_error_idx", "queued_storage_transferred_idx")


@pytest.fixture
def records() -> None:
    """A few records in every state, some with errors, of two storages and two hosts."""
    now = timezone.now()
    old = now - timedelta(days=30)
    rows = []
    for i in range(40):
        state = [State.REMOTE, State.PENDING, State.TRANSFERRING, State.FAILED, State.DELETED][i % 5]
        rows.append(
            FileRecord(
                storage=default_storage.identity if i % 3 else OTHER,
                name=f"scale/{i:03d}.txt",
                state=state,
                version=f"v{i}",
                size=i,
                host=f"web{i % 2}",
                last_error="ConnectionError" if state == State.FAILED or i % 7 == 0 else "",
                lease_until=old if state in (State.TRANSFERRING, State.DELETED) else None,
                transferred_at=old if state == State.REMOTE else None,
            )
        )
    FileRecord.objects.bulk_create(rows)
    FileRecord.objects.update(updated_at=old, created_at=old)


def queries(operation: Callable[[], object]) -> list[str]:
    """The statements ``operation`` sends that read or write the records."""
    with CaptureQueriesContext(connection) as captured:
        operation()
    return [q["sql"] for q in captured.captured_queries if TABLE in q["sql"] and "SAVEPOINT" not in q["sql"]]


def explain(sql: str, *, walk: bool = False) -> list[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off" + ("; SET enable_sort = off" if walk else ""))
            try:
                cursor.execute("EXPLAIN " + sql)
                return [row[0] for row in cursor.fetchall()]
            finally:
                cursor.execute("RESET enable_seqscan; RESET enable_sort")
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return [row[3] for row in cursor.fetchall()]


def unindexed(sql: str, *, walk: bool = False) -> list[str]:
    """The steps of the plan of ``sql`` that read the whole table, or a whole index of it.

    Allowed: a read of a partial index (it holds only the rows it is for),
    and a read in key order under a ``LIMIT``, which stops once it has its
    rows.  With ``walk`` (the queries that read a state a list at a time), a
    sort is a failure too: it would sort all that is left, list after list.
    """
    plan = explain(sql, walk=walk)
    if connection.vendor == "postgresql":
        return _unindexed_postgresql(sql, plan, walk)
    in_key_order = " LIMIT " in sql and not any("TEMP B-TREE FOR ORDER BY" in step for step in plan)
    bad = []
    for step in plan:
        if walk and "TEMP B-TREE" in step:
            bad.append(step)
        # The table by its name, or by an alias Django gives it in a subquery (U0).
        if not re.match(rf"SCAN ({TABLE}|U\d+)\b", step) or any(f"INDEX {name}" in step for name in PARTIAL):
            continue
        if "INDEX" in step or not in_key_order:
            bad.append(step)
    return bad


def _unindexed_postgresql(sql: str, plan: list[str], walk: bool) -> list[str]:
    in_key_order = " LIMIT " in sql and not any(re.search(r"\bSort\b", step) for step in plan)
    bad = []
    for n, step in enumerate(plan):
        if walk and re.search(r"\bSort\b", step):
            bad.append(step)
        if f"Seq Scan on {TABLE}" in step:
            bad.append(step)
        found = re.search(r"Index (?:Only )?Scan (?:Backward )?using (\w+) on " + TABLE, step)
        if not found or found.group(1) in PARTIAL or in_key_order:
            continue
        depth = len(step) - len(step.lstrip(" ->"))
        details = []
        for line in plan[n + 1 :]:
            if "->" in line or len(line) - len(line.lstrip()) <= depth:
                break
            details.append(line.strip())
        if not any(line.startswith("Index Cond") for line in details):
            bad.append(step)
    return bad


def assert_indexed(statements: list[str], *, walk: bool = False) -> None:
    assert statements, "no query about the records was captured"
    found = {sql: unindexed(sql, walk=walk) for sql in statements}
    assert not {sql: steps for sql, steps in found.items() if steps}


def walks(statements: list[str]) -> list[str]:
    """The statements that read a list of rows in key order (``transitions.chunked()``)."""
    return [sql for sql in statements if re.search(r'ORDER BY \S*"id" ASC LIMIT', sql)]


def test_status_reads_only_the_records_it_reports(records):
    statements = queries(lambda: operations.summary(last_errors=5))
    assert len(statements) == 4  # counts, what waits, the latest errors, the latest transfer
    assert_indexed(statements)


def test_the_sweep_walks_each_state_in_key_order(records):
    def sweep() -> None:
        for _ in transitions.abandoned():
            pass
        for _ in transitions.stale(0, failed=True, delayed={OTHER}):
            pass

    statements = queries(sweep)
    assert_indexed(walks(statements), walk=True)
    assert_indexed(statements)
    assert len(walks(statements)) >= 4  # tombstones, pending, transferring, failed


def test_a_message_takes_waiting_files_in_key_order_of_one_state(records):
    taken: list[FileRecord] = []
    statements = queries(
        lambda: taken.extend(
            transitions.take_waiting(default_storage.identity, "web1", most=50, delayed=False, owner="w")
        )
    )
    assert [record.name for record in taken] == ["scale/001.txt", "scale/011.txt", "scale/031.txt"]
    assert len(statements) == 2  # the UPDATE that chooses and claims, the read of what it claimed
    assert_indexed(statements, walk=True)


def test_cleanup_candidates_are_walked_through_their_own_index(records):
    statements = queries(lambda: list(operations.cleanup_candidates(7)))
    assert walks(statements)
    assert_indexed(statements, walk=True)
    assert all("queued_storage_local_idx" in "".join(explain(sql, walk=True)) for sql in statements)


def test_storage_identities_take_one_index_step_each(records):
    statements = queries(operations.identities)
    assert operations.identities() == sorted({default_storage.identity, OTHER})
    assert "DISTINCT" not in statements[0]
    assert_indexed(statements)


def changelist_queries(admin_client: Any, params: dict[str, str]) -> Iterator[str]:
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    for query in captured.captured_queries:
        if TABLE in query["sql"]:
            yield query["sql"]


@pytest.mark.parametrize(
    "params",
    [{}, {"state__exact": "failed"}, {"storage": OTHER}, {"host": "web1"}],
    ids=["default", "state", "storage", "host"],
)
def test_the_admin_changelist_reads_one_page_through_an_index(records, admin_client, params, monkeypatch):
    monkeypatch.setattr(FileRecordAdmin, "list_per_page", 5)  # more than one page
    statements = list(changelist_queries(admin_client, params))
    assert_indexed(statements)


@pytest.mark.parametrize(
    "params", [{}, {"state__exact": "remote"}, {"q": "scale/01"}], ids=["default", "state", "search"]
)
def test_the_admin_changelist_counts_no_further_than_its_limit(records, admin_client, params):
    counts = [sql for sql in changelist_queries(admin_client, params) if "COUNT(" in sql.upper()]
    assert counts, "the changelist counts its records"
    assert all(re.search(r"LIMIT 10001\b", sql) for sql in counts), counts
