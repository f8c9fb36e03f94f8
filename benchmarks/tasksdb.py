"""Scenario 10: the save and small-files scenarios with django-tasks-db carrying the transfers.

Each figure stands beside its baselines measured here, in the same run:
FileSystemStorage.save() and the Celery QueuedStorage.save() for the save, raw
boto3 and the Celery worker for the small files.  The run's process picks
django-tasks-db with ``override_settings`` (Celery is the one its settings
choose); its ``db_worker`` processes by their environment
(:meth:`benchmarks.harness.Services.db_worker`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import OperationalError
from django.test import override_settings

from queued_storage import enqueuing, publishing

from .harness import PARKED, Services
from .results import Results, Row
from .scenarios import (
    FS,
    MB,
    Plan,
    _forget_queued,
    _ms,
    _per_call,
    _random,
    _raw,
    _small_files_on_disk,
    default_storage,
    parked,
    record_alone,
    wait_remote,
)

SCENARIO = "10 django-tasks-db"
CELERY = "QueuedStorage.save() Celery"
TASKS_DB = "QueuedStorage.save() django-tasks-db"
LOCKED = "database is locked"


@contextlib.contextmanager
def tasks_db() -> Iterator[None]:
    """Transfers asked for meanwhile go through django-tasks-db, not Celery."""
    with override_settings(QUEUED_STORAGE_QUEUE_BACKEND="tasks"):
        yield


def _task_rows() -> Any:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects


def save_sizes(plan: Plan) -> dict[str, int]:
    """The sizes of scenario 1 up to 1 MB: what a request saves, not a bulk upload."""
    return {label: size for label, size in plan.save_sizes.items() if size <= MB}


# -- save() ------------------------------------------------------------------------------------


def save_latency(services: Services, results: Results, plan: Plan) -> None:
    """save() on each queue beside FileSystemStorage, interleaved as in scenario 1; no worker runs."""
    subjects: dict[str, Any] = {FS: storages["fs"], CELERY: default_storage, TASKS_DB: default_storage}

    def setup(subject: str) -> contextlib.AbstractContextManager[Any]:
        return tasks_db() if subject == TASKS_DB else contextlib.nullcontext()

    # Parked: Celery's messages go to a queue no worker consumes, the tasks to
    # a queue no db_worker reads; both are dropped after.
    with parked(services):
        for subject, storage in subjects.items():  # connections, imports, first-use costs
            with setup(subject):
                for _ in range(3):
                    storage.save(f"warmup/{uuid.uuid4().hex}.bin", ContentFile(b"w" * 100))
        publishing.flush()
        for label, size in save_sizes(plan).items():
            data = _random(size)
            samples: dict[str, list[float]] = {s: [] for s in subjects}
            for rep in range(plan.save_reps[label]):
                order = list(subjects.items())
                random.Random(rep).shuffle(order)
                for subject, storage in order:
                    content = ContentFile(data)
                    with setup(subject):
                        started = time.perf_counter()
                        stored = storage.save(f"s10/{uuid.uuid4().hex}.bin", content)
                        samples[subject].append(time.perf_counter() - started)
                    publishing.flush()  # Celery's background publish, outside the next subject's save
                    storage.delete(stored)
            results.add(Row(SCENARIO, f"save {label}", FS, "ms", _ms(samples[FS])))
            for subject in (CELERY, TASKS_DB):
                results.add(Row(SCENARIO, f"save {label}", subject, "ms", _ms(samples[subject]), baseline=FS))
            shutil.rmtree(Path(storages["fs"].path("s10")), ignore_errors=True)
            _forget_queued("s10/")
        record = _record_alone(results, plan)
        enqueue = _enqueue_alone(results, plan)
    _task_rows().filter(queue_name=PARKED).delete()
    # Scenario 1's rule: what save() adds is its own commits, each timed alone, and 0.5 ms.
    for label in save_sizes(plan):
        fs = results.median(SCENARIO, f"save {label}", FS)
        for subject, floor, parts in (
            (CELERY, fs + record, "record"),
            (TASKS_DB, fs + record + enqueue, "record + enqueue"),
        ):
            row = results.find(SCENARIO, f"save {label}", subject)
            row.target = f"≤ FileSystemStorage + {parts} + 0.5 ms ({row.median:.2f} ≤ {floor + 0.5:.2f} ms)"
            row.ok = row.median <= floor + 0.5


def _record_alone(results: Results, plan: Plan) -> float:
    """The record's INSERT + COMMIT as save() writes it, timed alone (as scenario 1 does)."""
    reps = max(plan.save_reps[label] for label in save_sizes(plan))
    samples = _ms(record_alone(reps, "s10/parts/"))
    return results.add(Row(SCENARIO, "save() parts", "the record alone", "ms", samples)).median


def _enqueue_alone(results: Results, plan: Plan) -> float:
    """The enqueue save() adds on django-tasks-db, timed alone: one INSERT and its COMMIT."""
    reps = max(plan.save_reps[label] for label in save_sizes(plan))
    names = iter([f"s10/parts/{uuid.uuid4().hex}.bin" for _ in range(reps)])  # made before the clock

    def enqueue() -> None:
        if not enqueuing.send(default_storage, [(next(names), "v")]):
            raise RuntimeError("django-tasks-db did not take the task (see the log)")

    with tasks_db():
        samples = _ms(_per_call(enqueue, reps))
    return results.add(
        Row(SCENARIO, "save() parts", "the django-tasks-db enqueue alone", "ms", samples)
    ).median


# -- many small files --------------------------------------------------------------------------


def small_files(services: Services, results: Results, plan: Plan, processes: int) -> None:
    """Files/s until all remote with ``processes`` db_worker processes, beside raw boto3 and Celery."""
    label = f"{plan.small_files} × 16 KB, {processes} {'process' if processes == 1 else 'processes'}"
    source = services.workdir / "s10-source"
    payloads = _small_files_on_disk(source, plan.small_files)
    raws: list[float] = []
    ours: dict[str, list[float]] = {"Celery": [], "django-tasks-db": []}
    saving: dict[str, list[float]] = {"Celery": [], "django-tasks-db": []}
    problems = {"saves that raised": 0, "tasks that failed": 0}

    def until_remote(queue: str, rep: int) -> None:
        prefix = f"s10/{rep}-{uuid.uuid4().hex[:8]}/"
        names = []
        started = time.perf_counter()
        for i, data in enumerate(payloads):
            try:
                names.append(default_storage.save(f"{prefix}{i:05d}.bin", ContentFile(data)))
            except OperationalError as exc:  # SQLite's one writer: the saver lost the wait for it
                if LOCKED not in str(exc):
                    raise
                problems["saves that raised"] += 1
        saving[queue].append(time.perf_counter() - started)
        done = wait_remote(default_storage, names, 600, poll=0.05)
        ours[queue].append(len(names) / (done - started))
        services.empty_bucket("s10")
        _forget_queued("s10/")

    with services.worker(processes):
        for rep in range(plan.small_reps):
            until_remote("Celery", rep)
    with services.db_worker(processes) as workers:
        for rep in range(plan.small_reps):
            raw = _raw("many", str(source), f"s10raw/{rep}-{uuid.uuid4().hex[:8]}/", str(processes))
            raws.append(raw["files"] / raw["seconds"])
            with tasks_db():
                until_remote("django-tasks-db", rep)
            finished = _task_rows().finished()
            problems["tasks that failed"] += finished.filter(status="FAILED").count()
            finished.delete()
        logged = sum(worker.log_text().count(LOCKED) for worker in workers)
    services.empty_bucket("s10raw")
    shutil.rmtree(source, ignore_errors=True)
    base = results.add(Row(SCENARIO, label, f"raw boto3 put_object, {processes} thread(s)", "files/s", raws))
    for queue in ours:
        row = results.add(
            Row(SCENARIO, label, f"save() until all remote, {queue}", "files/s", ours[queue], base.subject)
        )
        row.target, row.ok = "≥ 0.8× raw boto3", row.median >= 0.8 * base.median
        results.add(
            Row(
                SCENARIO,
                label,
                f"of which the save() loop alone, {queue}",
                "files/s",
                [plan.small_files / s for s in saving[queue]],
            )
        )
    for what, count in problems.items():
        row = results.add(Row(SCENARIO, label, f"django-tasks-db {what}", "files", [float(count)]))
        row.target, row.ok = "0", count == 0
    results.add(Row(SCENARIO, label, f"db_worker log lines '{LOCKED}'", "lines", [float(logged)]))


def run(services: Services, results: Results, plan: Plan) -> None:
    """Scenario 10: save() first, with no worker of either queue running, then the small files."""
    save_latency(services, results, plan)
    for processes in (1, 2):
        small_files(services, results, plan, processes)
