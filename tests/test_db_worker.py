"""Transfers through Django's Tasks framework on real processes: ``manage.py db_worker`` (django-tasks-db).

The worker is a real ``db_worker`` process on the test settings, in which
Celery cannot be imported (tests/without_celery/sitecustomize.py), against
the S3 endpoint of tests/plugin.py behind its proxy; the queue is a table of
the test database (SQLite, or PostgreSQL with ``QS_DB=postgres``).  This
process plays the web side with ``QUEUED_STORAGE_QUEUE_BACKEND = "tasks"``.
The faults are real: SIGKILL, a stopped S3 server, a throttled link.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction
from django_tasks_db.models import DBTaskResult

from queued_storage.conf import conf
from queued_storage.models import FileRecord

from .conftest import s3_body, save_at_once, sha256, wait_for
from .plugin import BUCKETS
from .services import DbWorker
from .test_without_celery import PRELUDE, WITHOUT_CELERY, run_without_celery

# Every tox env runs the first two (a transfer on each Django's Tasks
# framework); the faults run once, in the test command's own suites.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def through_django_tasks(settings):
    """This process sends transfers through Django Tasks, as a project without Celery does."""
    settings.QUEUED_STORAGE_QUEUE_BACKEND = "tasks"


@pytest.fixture
def start_db_worker(services: Any) -> Iterator[Callable[..., DbWorker]]:
    """Start real ``db_worker`` processes without Celery; killed after the test."""
    started: list[DbWorker] = []

    def start(*, queues: tuple[str, ...] = ("default",), env: dict[str, str] | None = None) -> DbWorker:
        worker = DbWorker(
            "tests.settings",
            {"DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
            services.workdir,
            worker_id=f"db{next(_ids)}",
            queues=queues,
            pythonpath=[str(WITHOUT_CELERY)],
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill()


def record(name: str) -> FileRecord:
    return FileRecord.objects.get(storage=default_storage.identity, name=name)  # type: ignore[attr-defined]


def all_remote(names: list[str]) -> bool:
    return FileRecord.objects.filter(name__in=names, state="remote").count() == len(names)


def save_many(n: int, size: int, prefix: str) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        data = os.urandom(size)
        files[default_storage.save(f"{prefix}/{i}.bin", ContentFile(data))] = data
    return files


def verify(s3: Any, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert record(name).state == "remote"
        assert sha256(s3_body(s3, "qs-bucket", name)) == sha256(data)


@pytest.mark.integration
def test_save_then_db_worker_switches_url_to_s3(start_db_worker, services, s3):
    worker = start_db_worker()
    data = b"hello tasks\n" * 1000
    name = default_storage.save("tasks/hello world.txt", ContentFile(data))
    assert default_storage.url(name) == "/media/tasks/hello%20world.txt"
    s3_url = services.s3_proxy.endpoint_url + "/qs-bucket/"
    wait_for(lambda: default_storage.url(name).startswith(s3_url), what="url on S3")
    verify(s3, {name: data})
    status = default_storage.status(name)
    assert (status.state, status.size, status.attempts) == ("remote", len(data), 1)
    (task,) = DBTaskResult.objects.all()
    wait_for(lambda: DBTaskResult.objects.get(pk=task.pk).status == "SUCCESSFUL", what="the task's end")
    task.refresh_from_db()
    assert (task.task_path, task.return_value, task.worker_ids) == (
        "queued_storage.django_tasks.transfer",
        "remote",
        [worker.worker_id],
    )


@pytest.mark.integration
def test_a_project_without_celery_saves_and_its_db_worker_transfers(start_db_worker, services, s3):
    start_db_worker()
    result = run_without_celery(
        PRELUDE
        + """
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
name = default_storage.save("no-celery/photo.bin", ContentFile(b"p" * 100_000))
print(json.dumps({"name": name, "celery": celery_loaded()}))
"""
    )
    assert result == {"name": "no-celery/photo.bin", "celery": []}
    wait_for(lambda: all_remote([result["name"]]), what="remote")
    verify(s3, {result["name"]: b"p" * 100_000})


def test_db_worker_killed_mid_copy_is_recovered_with_nobody_running_anything(start_db_worker, services, s3):
    sweeping = {"QS_SWEEP_INTERVAL": "1"}
    services.s3_proxy.bandwidth = 1_000_000
    worker = start_db_worker(env=sweeping)
    files = save_many(1, 3_000_000, "tasks-kill")
    (name,) = files
    wait_for(lambda: record(name).state == "transferring", what="copy started")
    wait_for(lambda: services.s3_proxy.bytes_up > 500_000, what="part of the file sent")
    worker.kill()
    killed = time.monotonic()
    services.s3_proxy.bandwidth = None
    start_db_worker(env=sweeping)
    # Django Tasks redelivers nothing: the killed task stays RUNNING for good.
    assert DBTaskResult.objects.get().status == "RUNNING"
    # The new db_worker's own sweep queues the file again once its lease
    # lapsed, with no task of its own to run first.  No command, no cron.
    budget = 2 * conf.LEASE + 30
    wait_for(
        lambda: all_remote([name]),
        timeout=killed + budget - time.monotonic(),
        what=f"remote within {budget:.0f} s of the kill",
    )
    verify(s3, files)
    assert record(name).attempts == 2
    verify(s3, files)


def test_s3_stopped_then_restarted_is_retried_with_run_after(start_db_worker, services, s3):
    services.moto.stop()
    start_db_worker(env={"QS_RETRIES": "6"})
    files = save_many(3, 100_000, "tasks-s3-down")
    names = list(files)
    wait_for(
        lambda: FileRecord.objects.filter(name__in=names).exclude(last_error="").count() == len(files),
        what="a failed attempt for every file",
    )
    # The next attempt is a task of its own, deferred by the backoff.
    wait_for(lambda: DBTaskResult.objects.exclude(run_after=None).exists(), what="a deferred retry")
    wait_for(
        lambda: FileRecord.objects.filter(name__in=names, attempts__gte=2).exists(),
        what="a retry during the outage",
    )
    for name, data in files.items():
        with default_storage.open(name) as fh:
            assert fh.read() == data  # still served from the local copy
    services.moto.start(buckets=BUCKETS)
    wait_for(lambda: all_remote(names), timeout=60, what="all remote after S3 came back")
    verify(s3, files)


def test_a_rolled_back_save_never_enqueues_a_task(start_db_worker, services, s3):
    with pytest.raises(RuntimeError), transaction.atomic():
        default_storage.save("tasks-rollback.txt", ContentFile(b"x"))
        raise RuntimeError
    assert DBTaskResult.objects.count() == 0
    start_db_worker()
    files = save_many(1, 10, "tasks-after-rollback")
    wait_for(lambda: all_remote(list(files)), what="the next file")
    assert DBTaskResult.objects.count() == 1
    assert not FileRecord.objects.filter(name="tasks-rollback.txt").exists()
    assert "Contents" not in s3.list_objects_v2(Bucket="qs-bucket", Prefix="tasks-rollback")


def test_delete_during_a_slow_copy_leaves_nothing(start_db_worker, services, s3):
    services.s3_proxy.bandwidth = 500_000
    start_db_worker()
    name = default_storage.save("tasks-deleted-mid-copy.bin", ContentFile(os.urandom(1_500_000)))
    wait_for(lambda: record(name).state == "transferring", what="copy started")
    default_storage.delete(name)
    assert record(name).state == "deleted"
    services.s3_proxy.bandwidth = None
    wait_for(lambda: not FileRecord.objects.filter(name=name).exists(), timeout=30, what="record gone")
    assert "Contents" not in s3.list_objects_v2(Bucket="qs-bucket", Prefix="tasks-deleted-mid-copy")
    assert not Path(default_storage.local.path(name)).exists()


def test_each_host_s_files_go_to_the_db_worker_of_its_queue(start_db_worker, services, s3, settings):
    settings.QUEUED_STORAGE_HOST = "web-a"
    settings.QUEUED_STORAGE_HOST_QUEUE = "transfers.{host}"
    start_db_worker()  # the default queue only
    own = start_db_worker(queues=("transfers.web-a",), env={"QS_HOST_QUEUE": "transfers.{host}"})
    files = save_many(2, 1000, "tasks-host")
    wait_for(lambda: all_remote(list(files)), what="remote")
    assert {(t.queue_name, tuple(t.worker_ids)) for t in DBTaskResult.objects.all()} == {
        ("transfers.web-a", (own.worker_id,))
    }
    verify(s3, files)


def test_the_sweeper_sends_a_backlog_of_small_files_as_one_task(start_db_worker, services, s3):
    files = save_many(5, 1000, "tasks-backlog")
    DBTaskResult.objects.all().delete()  # the saves' own tasks: lost, say
    call_command("queued_storage", "requeue", "--older-than", "0")
    (task,) = DBTaskResult.objects.all()
    assert [name for name, _ in task.args_kwargs["kwargs"]["files"]] == list(files)
    start_db_worker()
    wait_for(lambda: DBTaskResult.objects.get(pk=task.pk).status == "SUCCESSFUL", what="the task's end")
    task.refresh_from_db()
    assert task.return_value == "remote: 5"
    verify(s3, files)


def test_same_name_saved_by_four_processes_at_once(start_db_worker, services, s3, tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "QS_QUEUE_BACKEND": "tasks"}
    names = save_at_once("tasks-race/same.txt", 4, tmp_path, env)
    assert len(set(names)) == 4
    assert DBTaskResult.objects.count() == 4  # each process enqueued its own file's task
    start_db_worker()
    contents = {}
    for name in names:
        with default_storage.local.open(name) as fh:
            contents[name] = fh.read()
    assert sorted(c[:7] for c in contents.values()) == [b"writer0", b"writer1", b"writer2", b"writer3"]
    wait_for(lambda: all_remote(names), what="all remote")
    verify(s3, contents)
