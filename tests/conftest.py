from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches

from queued_storage import QueuedStorage

from . import plugin
from .celery_app import app as celery_app
from .services import CeleryWorker

_worker_ids = itertools.count(1)
FS = "django.core.files.storage.FileSystemStorage"


@pytest.fixture(scope="session")
def services() -> plugin.Services:
    """Redis, moto's S3 server behind its proxy (and PostgreSQL with QS_DB=postgres), running."""
    assert plugin.SERVICES is not None, "run pytest with -p tests.plugin (setup.cfg does)"
    return plugin.SERVICES.need_all()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Start PostgreSQL (with QS_DB=postgres) before the test database is created."""
    if plugin.SERVICES is not None and plugin.SERVICES.postgres is not None:
        plugin.SERVICES.need("postgres")


@pytest.fixture
def s3(services: plugin.Services) -> Any:
    """A boto3 client straight to moto, so its requests are not counted by the proxy."""
    return services.moto.client()


@pytest.fixture(autouse=True)
def clean_services() -> Iterator[None]:
    """Each test starts with an empty broker and cache, an open and unthrottled S3 endpoint.

    Only the services that run already are cleaned; none is started for it.
    """
    running = plugin.SERVICES.started if plugin.SERVICES is not None else set()
    if "redis" in running:
        plugin.SERVICES.redis.flushall()  # type: ignore[union-attr]
    elif plugin.unit_mode():
        caches["default"].clear()  # the file-based cache QS_UNIT=1 uses instead of Redis
    proxy = plugin.SERVICES.s3_proxy if plugin.SERVICES is not None and not plugin.unit_mode() else None
    if proxy is not None:
        proxy.accept()
        proxy.bandwidth = None
        proxy.latency = 0.0
        proxy.reset_counts()
    yield
    if proxy is not None:
        proxy.accept()
        proxy.bandwidth = None


@pytest.fixture
def start_worker(services: plugin.Services) -> Iterator[Callable[..., CeleryWorker]]:
    """Start real ``celery worker`` processes on the test settings; stopped after the test."""
    started: list[CeleryWorker] = []

    def start(*, env: dict[str, str] | None = None, **kwargs: Any) -> CeleryWorker:
        n = next(_worker_ids)
        kwargs.setdefault("hostname", f"w{n}@testhost")
        worker = CeleryWorker(
            "tests.celery_app",
            {"DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
            services.workdir,
            **kwargs,
        )
        started.append(worker)
        return worker.start()

    yield start
    # SIGKILL: a warm shutdown would only wait for the pool; the test is over.
    for worker in started:
        worker.kill()


@pytest.fixture
def eager() -> Iterator[None]:
    """Run transfers in this process, synchronously."""
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False  # True would raise Retry instead of retrying
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., QueuedStorage]]:
    """Build QueuedStorages between two local directories (a fake remote, for unit tests)."""
    from queued_storage import registry

    def make(**options) -> QueuedStorage:
        options.setdefault("local", FS)
        options.setdefault("remote", FS)
        options.setdefault("local_options", {"location": str(tmp_path / "local"), "base_url": "/local/"})
        options.setdefault("remote_options", {"location": str(tmp_path / "remote"), "base_url": "/remote/"})
        storage = QueuedStorage(**options)
        registry.register(storage)  # so the task finds it, as a declared one
        return storage

    yield make
    # Later tests (the system checks) see only the project's own storages.
    registry.unregister_all()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache() -> Any:
    return caches["default"]


def s3_body(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


@pytest.fixture
def broker(services: plugin.Services) -> Iterator[Any]:
    """A redis-py client on the broker database, to look at the queues."""
    import redis

    client = redis.Redis.from_url(f"{services.redis.url}/0")
    yield client
    client.close()


def transfer_now(storage: Any, name: str) -> str:
    """Run the transfer task of ``name`` in this process, as a worker would; returns its result."""
    from queued_storage import transitions
    from queued_storage.publishing import resolve_task

    record = transitions.get(storage.identity, name)
    assert record is not None
    result = resolve_task(storage.task).apply(args=(storage.identity, name, record.version), throw=True)
    return str(result.get())


_SAVER = """
import os, sys, django
django.setup()
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
open(sys.argv[3], "w").close()
os.read(int(sys.argv[4]), 1)  # blocks until the test lets every writer go at once
print(default_storage.save(sys.argv[1], ContentFile(sys.argv[2].encode() * 1000)))
"""


def save_at_once(name: str, count: int, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """``count`` processes save ``name`` (``writer<i>`` repeated) at one moment; the names they got.

    Each waits on one pipe the test writes to once all are set up, so none
    starts its save before the others are ready.
    """
    gate, release = os.pipe()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, name, f"writer{i}", str(tmp_path / f"ready{i}"), str(gate)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(gate,),
        )
        for i in range(count)
    ]
    os.close(gate)
    try:
        wait_for(
            lambda: all((tmp_path / f"ready{i}").exists() for i in range(count)),
            timeout=60,
            what="every process set up and waiting at the line",
        )
        os.write(release, b"x" * count)
    finally:
        os.close(release)
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return names
