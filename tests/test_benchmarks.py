"""A smoke run of every benchmark scenario at tiny sizes, so the benchmark code cannot rot.

It asserts that the run completes and reports every scenario, never on timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Starts its own services; run once per test command, not in every tox env.
pytestmark = [pytest.mark.services, pytest.mark.e2e]


def test_every_scenario_runs_end_to_end(tmp_path):
    chart, plans = tmp_path / "chart.png", tmp_path / "query-plans.rst"
    paths = ["--chart", str(chart), "--plans", str(plans), "--results", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [out] = tmp_path.glob("*-tiny.json")
    rows = json.loads(out.read_text())["rows"]
    assert {row["scenario"].split()[0] for row in rows} == {str(n) for n in range(1, 12)}
    assert all(row["samples"] for row in rows)
    assert chart.stat().st_size > 0
    # The floors each target is up against are measured in the same run, in both databases.
    parts = {(row["case"], row["subject"]) for row in rows if row["case"].startswith("parts of save()")}
    record = "the record alone: INSERT + COMMIT, as save() writes it"
    assert parts == {
        ("parts of save()", record),
        ("parts of save()", "the inline Celery publish (contrast)"),
        ("parts of save(), tuned SQLite", record),
    }
    judged = [row for row in rows if row["scenario"] == "1 upload" and row["target"]]
    assert {row["case"] for row in judged} == {"1 KB", "100 KB"}
    gets = [row for row in rows if row["subject"].startswith("the cache's get() alone")]
    assert len(gets) == 4
    warm = [row for row in rows if row["subject"].startswith("QueuedStorage.url() warm cache")]
    assert len(warm) == 4 and all(".url() + get() + 50 µs" in row["target"] for row in warm)
    assert {row["subject"] for row in rows if row["case"] == "serve_url"} == {
        "QueuedStorage.url() with serve_url",
        "cache reads",
        "S3 requests",
    }
    assert any(row["subject"].startswith("a Redis GET over a plain socket") for row in rows)
    # Scenario 8: each operation on both databases at both sizes, and the plan of each query.
    scale = {(row["case"], row["subject"]) for row in rows if row["scenario"] == "8 scale"}
    for db in ("SQLite", "PostgreSQL"):
        for size in ("400", "1,000"):
            assert (f"{db}, {size} rows", "admin changelist, search") in scale
            assert (f"{db}, {size} rows", "requeue (a sweep)") in scale
    # Scenario 9: each database setting, the commit alone and after the write, each order of save().
    commits = {row["subject"] for row in rows if row["scenario"] == "9 commits"}
    assert len(commits) == 1 + 5 * 7
    assert "SQLite default (DELETE, FULL): record INSERT+COMMIT right after the write" in commits
    # Scenario 10: save() on both queues beside FileSystemStorage, and the small files with db_worker.
    tasks = {(row["case"], row["subject"]) for row in rows if row["scenario"] == "10 django-tasks-db"}
    assert ("save 1 KB", "QueuedStorage.save() django-tasks-db") in tasks
    assert ("save() parts", "the django-tasks-db enqueue alone") in tasks
    assert ("save() parts", "the record alone") in tasks
    small = {case for case, subject in tasks if subject == "save() until all remote, django-tasks-db"}
    assert {case.split(", ")[-1] for case in small} == {"1 process", "2 processes"}
    text = plans.read_text()
    assert "cleanup-local --dry-run" in text and "queued_storage_local_idx" in text
    # Scenario 11 on each queue: a killed Celery worker and a killed db_worker.
    assert {row["subject"] for row in rows if row["scenario"] == "11 recovery"} == {
        "all remote after the worker was killed",
        "all remote after the db_worker was killed",
    }
