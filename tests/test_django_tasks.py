"""Transfers through Django's Tasks framework, in this process: choice, sending, retries, checks.

The in-process backends stand in for a worker: DummyBackend keeps what was
enqueued (its task is then run as a worker would, with a context), and
ImmediateBackend runs each task at once.  tests/test_db_worker.py runs the
same on a real ``db_worker`` process.
"""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module
from typing import TYPE_CHECKING, Any

import pytest
from django.core import mail
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.db import transaction
from django.utils import timezone

from queued_storage import QueuedStorage, django_tasks, enqueuing, registry, routing, transitions
from queued_storage.conf import conf
from queued_storage.models import FileRecord
from queued_storage.mover import default_copy
from queued_storage.signals import file_transferred, transfer_failed
from queued_storage.sweeper import sweep

if TYPE_CHECKING:
    from django.tasks import task
else:
    task = enqueuing.framework().task

pytestmark = pytest.mark.django_db(transaction=True)

FRAMEWORK = routing.tasks_framework()
DUMMY = f"{FRAMEWORK}.backends.dummy.DummyBackend"
IMMEDIATE = f"{FRAMEWORK}.backends.immediate.ImmediateBackend"
NO_DEFER = "tests.test_django_tasks.NoDeferBackend"
DATABASE = "django_tasks_db.DatabaseBackend"


class NoDeferBackend(import_module(f"{FRAMEWORK}.backends.dummy").DummyBackend):  # type: ignore[misc]
    """A backend that keeps its tasks but cannot defer one, as some do."""

    supports_defer = False


class FlakyStorage(FileSystemStorage):
    """A remote that refuses every write while ``FlakyStorage.down`` is set."""

    down = False

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        if FlakyStorage.down:
            raise OSError("remote unreachable")
        return super().save(name, content, max_length)


COPIED: list[str] = []


def counting_copy(name: str, local: Any, remote: Any, **kwargs: Any) -> Any:
    COPIED.append(name)
    return default_copy(name, local, remote, **kwargs)


@task(takes_context=True)
def counted_transfer(
    context: Any, storage_key: str, name: str = "", version: str = "", *, files: Any = None, retries: int = 0
) -> str:
    """A project's own transfer task: the library's, with a copy function of its own."""
    return django_tasks.run(
        context, storage_key, name, version, files=files, retries=retries, copy=counting_copy
    )


@pytest.fixture
def tasks(settings):
    """Transfers go through Django Tasks; returns a function that picks the backend."""
    settings.QUEUED_STORAGE_QUEUE_BACKEND = "tasks"

    def use(backend: str, **params: Any) -> Any:
        settings.TASKS = {"default": {"BACKEND": backend, "QUEUES": [], **params}}
        return enqueuing.backend()

    return use


@pytest.fixture
def flaky():
    FlakyStorage.down = True
    yield
    FlakyStorage.down = False


def run(result: Any) -> str:
    """Run an enqueued task as a worker does: with its context, in this process."""
    context = enqueuing.framework().TaskContext(task_result=result)
    return str(result.task.call(context, *result.args, **result.kwargs))


def record(storage, name) -> FileRecord:
    found = transitions.get(storage.identity, name)
    assert found is not None
    return found


def ids(**kwargs):
    return sorted(e.id for e in run_checks(**kwargs) if e.id.startswith("queued_storage."))


# -- which queue


def test_the_setting_chooses_the_queue(settings):
    assert routing.chosen() == "celery"  # the test project has a Celery app, and TASKS too
    settings.QUEUED_STORAGE_QUEUE_BACKEND = "tasks"
    assert routing.chosen() == "tasks"


def test_without_a_celery_app_the_tasks_framework_is_chosen_where_tasks_is_set(settings, monkeypatch):
    monkeypatch.setattr(routing, "celery_configured", lambda: False)
    assert routing.chosen() == "tasks"
    del settings.TASKS
    assert routing.chosen() == "celery"  # nothing configured: E004 says what to do


def test_a_storage_task_names_its_django_tasks_twin():
    assert routing.django_task_path("queued_storage.tasks.Transfer") == "queued_storage.django_tasks.transfer"
    assert (
        routing.django_task_path("queued_storage.tasks.TransferAndDelete")
        == "queued_storage.django_tasks.transfer_and_delete"
    )
    assert routing.django_task_path("myapp.tasks.move") == "myapp.tasks.move"


# -- sending


def test_a_save_enqueues_its_transfer_once_the_transaction_commits(make, tasks):
    backend = tasks(DUMMY)
    storage = make()
    with transaction.atomic():
        name = storage.save("a.txt", ContentFile(b"a"))
        assert backend.results == []
    (result,) = backend.results
    assert result.task.module_path == "queued_storage.django_tasks.transfer"
    assert result.args == [storage.identity, name, record(storage, name).version]
    assert result.kwargs == {"retries": 0}
    assert (result.task.queue_name, result.task.run_after) == ("default", None)


def test_a_rolled_back_save_enqueues_nothing(make, tasks):
    backend = tasks(DUMMY)
    storage = make()
    with pytest.raises(RuntimeError), transaction.atomic():
        storage.save("rollback.txt", ContentFile(b"x"))
        raise RuntimeError
    assert backend.results == []


def test_each_host_s_files_go_to_its_own_queue(make, tasks, settings):
    backend = tasks(DUMMY)
    settings.QUEUED_STORAGE_HOST = "web-a"
    settings.QUEUED_STORAGE_HOST_QUEUE = "transfers.{host}"
    storage = make()
    storage.save("a.txt", ContentFile(b"a"))
    assert [r.task.queue_name for r in backend.results] == ["transfers.web-a"]


def test_a_backend_that_refuses_the_queue_leaves_the_file_to_the_sweeper(make, tasks, settings, caplog):
    tasks(DUMMY, QUEUES=["default"])
    settings.QUEUED_STORAGE_QUEUE = "transfers"
    storage = make()
    name = storage.save("a.txt", ContentFile(b"a"))  # the save itself succeeds
    assert record(storage, name).state == "pending"
    assert "could not enqueue the transfer of 'a.txt'" in caplog.text and "'transfers'" in caplog.text


# -- running


def test_the_task_copies_verifies_and_switches(make, tasks):
    tasks(IMMEDIATE)
    storage = make()
    seen = []
    file_transferred.connect(lambda sender, name, **kw: seen.append(name), weak=False, dispatch_uid="t1")
    try:
        name = storage.save("docs/a.txt", ContentFile(b"hello"))
    finally:
        file_transferred.disconnect(dispatch_uid="t1")
    status = storage.status(name)
    assert (status.state, status.attempts, status.size) == ("remote", 1, 5)
    with storage.remote.open(name) as fh:
        assert fh.read() == b"hello"
    assert storage.url(name).startswith("/remote/")
    assert seen == [name]


def test_transfer_and_delete_runs_as_its_twin(make, tasks):
    tasks(IMMEDIATE)
    storage = make(task="queued_storage.tasks.TransferAndDelete")
    name = storage.save("a.txt", ContentFile(b"a"))
    assert record(storage, name).state == "remote"
    assert not storage.local.exists(name) and storage.remote.exists(name)


def test_a_task_of_the_project_moves_the_bytes_its_own_way(make, tasks):
    COPIED.clear()
    tasks(IMMEDIATE)
    storage = make(task="tests.test_django_tasks.counted_transfer")
    assert ids() == ["queued_storage.I021"]  # a Django task: no E008
    name = storage.save("own.txt", ContentFile(b"own"))
    assert [name] == COPIED
    assert record(storage, name).state == "remote" and storage.remote.exists(name)


def test_a_failed_copy_is_retried_later_with_run_after(make, tasks, flaky, settings):
    settings.QUEUED_STORAGE_RETRY_DELAY = 10
    backend = tasks(DUMMY)
    storage = make(remote="tests.test_django_tasks.FlakyStorage")
    name = storage.save("a.txt", ContentFile(b"a"))
    before = timezone.now()
    assert run(backend.results[0]) == "retrying"
    retry = backend.results[1]
    assert retry.args == backend.results[0].args and retry.kwargs == {"retries": 1}
    # Equal jitter: at least half of RETRY_DELAY, at most all of it.
    assert before + timedelta(seconds=5) <= retry.task.run_after <= timezone.now() + timedelta(seconds=10)
    assert "remote unreachable" in record(storage, name).last_error
    FlakyStorage.down = False
    assert run(retry) == "remote"
    assert (record(storage, name).state, record(storage, name).attempts) == ("remote", 2)


def test_retries_end_in_failed_after_queued_storage_retries(make, tasks, flaky, settings):
    settings.QUEUED_STORAGE_RETRIES = 2
    backend = tasks(DUMMY)
    storage = make(remote="tests.test_django_tasks.FlakyStorage")
    failed = []
    transfer_failed.connect(lambda sender, name, **kw: failed.append(name), weak=False, dispatch_uid="t2")
    try:
        name = storage.save("a.txt", ContentFile(b"a"))
        assert [run(backend.results[i]) for i in range(3)] == ["retrying", "retrying", "failed"]
    finally:
        transfer_failed.disconnect(dispatch_uid="t2")
    assert len(backend.results) == 3  # no fourth attempt
    assert (record(storage, name).state, record(storage, name).attempts) == ("failed", 3)
    assert failed == [name]


def test_without_defer_a_retry_waits_for_the_sweeper_which_counts_the_recorded_attempts(
    make, tasks, flaky, settings
):
    settings.QUEUED_STORAGE_RETRIES = 1
    backend = tasks(NO_DEFER)
    storage = make(remote="tests.test_django_tasks.FlakyStorage")
    name = storage.save("a.txt", ContentFile(b"a"))
    assert run(backend.results[0]) == "left to the sweeper"
    assert len(backend.results) == 1 and record(storage, name).state == "pending"
    FileRecord.objects.update(updated_at=timezone.now() - timedelta(minutes=10))
    assert sweep(300).queued == 1
    swept = backend.results[1]
    assert swept.kwargs == {"retries": 0}  # the sweeper knows no count: the record does
    assert run(swept) == "failed"  # the second attempt, the last with RETRIES = 1
    assert record(storage, name).attempts == 2


def test_a_file_another_worker_holds_is_enqueued_again_for_when_its_lease_lapses(make, tasks):
    backend = tasks(DUMMY)
    storage = make()
    name = storage.save("a.txt", ContentFile(b"a"))
    transitions.claim(storage.identity, name, record(storage, name).version, owner="other")
    lease = record(storage, name).lease_until
    assert run(backend.results[0]) == "requeued"
    again = backend.results[1]
    assert again.args == backend.results[0].args
    assert lease <= again.task.run_after <= lease + timedelta(seconds=2)


def test_the_files_another_worker_holds_go_back_in_one_task(make, tasks):
    backend = tasks(DUMMY)
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(4)]
    files = [[n, record(storage, n).version] for n in names]
    for name, version in files[1:3]:
        transitions.claim(storage.identity, name, version, owner="other")
    latest = max(record(storage, n).lease_until for n, _ in files[1:3])
    message = django_tasks.transfer.enqueue(storage.identity, files=files)
    backend.results.clear()
    assert run(message) == "remote: 2, requeued: 2"
    (again,) = backend.results  # one task for both, not one each
    assert again.kwargs == {"files": files[1:3]}
    assert latest <= again.task.run_after <= latest + timedelta(seconds=2)


def test_the_sweeper_sends_a_backlog_of_small_files_as_one_task(make, tasks):
    backend = tasks(DUMMY)
    storage = make()
    names = [storage.save(f"{i}.txt", ContentFile(b"x")) for i in range(3)]
    backend.results.clear()  # the saves' own tasks: lost with their process, say
    long_ago = timezone.now() - timedelta(minutes=10)
    FileRecord.objects.update(updated_at=long_ago, queued_at=long_ago)
    assert sweep(300).queued == 3
    (result,) = backend.results
    assert result.kwargs == {"files": [[n, record(storage, n).version] for n in names]}
    assert run(result) == "remote: 3"
    assert all(record(storage, n).state == "remote" for n in names)


def test_a_celery_task_cannot_be_a_storage_s_task_on_django_tasks(make, tasks):
    tasks(DUMMY)
    with pytest.raises(ImproperlyConfigured, match="not a Django Tasks task"):
        enqueuing.resolve("queued_storage.tasks.requeue_stale")
    assert (
        enqueuing.resolve("queued_storage.tasks.Transfer").module_path
        == "queued_storage.django_tasks.transfer"
    )


# -- system checks


def test_the_test_project_on_django_tasks_is_clean(tasks):
    tasks(DATABASE)
    assert ids() == []


def test_an_immediate_backend_outside_tests_warns_and_cannot_defer(tasks, monkeypatch):
    tasks(IMMEDIATE)
    assert ids() == ["queued_storage.I021"]  # under test, running inline is what a test wants
    monkeypatch.delattr(mail, "outbox")  # as outside tests
    assert ids() == ["queued_storage.I021", "queued_storage.W021"]


def test_a_dummy_backend_outside_tests_warns(tasks, monkeypatch):
    tasks(DUMMY)
    monkeypatch.delattr(mail, "outbox")
    [warning] = [e for e in run_checks() if e.id == "queued_storage.W021"]
    assert "never runs a task" in warning.msg


def test_a_queue_the_backend_does_not_list_is_an_error(tasks, settings):
    tasks(DATABASE, QUEUES=["default"])
    settings.QUEUED_STORAGE_HOST = "web-a"
    settings.QUEUED_STORAGE_HOST_QUEUE = "transfers.{host}"
    [error] = [e for e in run_checks() if e.id.startswith("queued_storage.")]
    assert error.id == "queued_storage.E022" and "'transfers.web-a'" in error.msg


def test_an_unknown_tasks_backend_alias_is_an_error(tasks, settings):
    tasks(DATABASE)
    settings.QUEUED_STORAGE_TASKS_BACKEND = "transfers"
    [error] = [e for e in run_checks() if e.id.startswith("queued_storage.")]
    assert error.id == "queued_storage.E021" and "QUEUED_STORAGE_TASKS_BACKEND is 'transfers'" in error.msg


def test_a_process_starts_with_the_framework_missing_and_its_check_says_so(tasks, monkeypatch):
    """Only a db_worker imports the Tasks side at startup; elsewhere check E021 says what is missing."""
    import sys

    from django.apps import apps

    import queued_storage

    tasks(DATABASE)
    monkeypatch.setattr(routing, "tasks_framework", lambda: None)
    monkeypatch.delitem(sys.modules, "queued_storage.django_tasks")
    monkeypatch.delattr(queued_storage, "django_tasks", raising=False)
    monkeypatch.setattr("sys.argv", ["manage.py", "runserver"])
    apps.get_app_config("queued_storage").ready()
    [error] = [e for e in run_checks() if e.id.startswith("queued_storage.")]
    assert error.id == "queued_storage.E021" and "django-tasks" in error.msg


def test_the_framework_missing_is_an_error(tasks, monkeypatch):
    tasks(DATABASE)
    monkeypatch.setattr(routing, "tasks_framework", lambda: None)
    [error] = [e for e in run_checks() if e.id.startswith("queued_storage.")]
    assert error.id == "queued_storage.E021" and "django-tasks" in error.msg


def test_a_storage_task_that_is_no_django_task_is_named(tasks):
    tasks(DATABASE)
    registry.register(
        QueuedStorage(
            local="django.core.files.storage.FileSystemStorage",
            remote="django.core.files.storage.FileSystemStorage",
            remote_options={"location": "/tmp/e8-tasks"},
            task="queued_storage.tasks.requeue_stale",
        )
    )
    try:
        [error] = [e for e in run_checks() if e.id.startswith("queued_storage.")]
    finally:
        registry.unregister_all()
    assert error.id == "queued_storage.E008" and "not a Django Tasks task" in error.msg


def test_the_queue_settings_are_validated(settings):
    settings.QUEUED_STORAGE_QUEUE_BACKEND = "rq"
    assert conf.QUEUE_BACKEND is None
    assert ids() == ["queued_storage.E007"]


@pytest.mark.parametrize(
    ("argv", "run_main", "expected"),
    [
        (["manage.py", "db_worker"], None, True),
        (["django/__main__.py", "db_worker", "--queue-name", "transfers.web-a"], None, True),
        (["manage.py", "db_worker", "--reload"], None, False),  # the process that watches the files
        (["manage.py", "db_worker", "--reload"], "true", True),  # its child, which runs the tasks
        (["manage.py", "runserver"], None, False),
        (["manage.py", "queued_storage", "requeue"], None, False),
        (["gunicorn", "proj.wsgi"], None, False),
    ],
)
def test_only_a_db_worker_process_starts_a_sweeper(monkeypatch, argv, run_main, expected):
    monkeypatch.setattr("sys.argv", argv)
    if run_main is None:
        monkeypatch.delenv("RUN_MAIN", raising=False)
    else:
        monkeypatch.setenv("RUN_MAIN", run_main)
    assert routing.in_db_worker() is expected
