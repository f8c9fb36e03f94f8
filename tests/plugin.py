"""Pytest plugin: the real services, each started the first time a test needs it.

Loaded with ``-p tests.plugin`` (see setup.cfg).  Before Django reads the
settings, the plugin only reserves the addresses of Redis, moto's S3 server,
a TCP proxy in front of it, and with ``QS_DB=postgres`` PostgreSQL, on
127.0.0.1, and puts them in the environment, which tests/settings.py and every
Celery worker the tests start read.  A service starts on first use: the
``services`` fixture (and those built on it) starts them all, the Redis cache
of the test settings starts Redis when a test first touches it, and the
database setup starts PostgreSQL.  So ``pytest tests/test_conf.py`` starts
nothing, and a run of unit tests needs nothing installed beyond the Python
packages.  A service that cannot start fails the test that needs it: nothing
is skipped.

With ``QS_DATABASE_TESTS_ONLY=1`` only the tests that use the database or a
service are collected (the test command's PostgreSQL lane).

With ``QS_UNIT=1`` (``make unit``) the settings use a file-based cache and an
in-memory broker, and starting any service is an error that names the test:
such a test belongs with the integration tests (mark it ``services``).

The work directory (database, media, service logs) is removed at the end
unless ``QS_KEEP_WORKDIR=1`` is set, so repeated runs do not fill the disk.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .proxy import TcpProxy
from .services import HOST, MotoServer, PostgresServer, RedisServer

BUCKETS = ("qs-bucket", "qs-photos")

# Tests that need a running service, found by the fixtures they use; whole
# modules that drive real processes mark themselves with ``pytestmark``.
SERVICE_FIXTURES = {"services", "s3", "start_worker", "broker", "live_server"}


def unit_mode() -> bool:
    return os.environ.get("QS_UNIT") == "1"


def reserve_port() -> int:
    """A free port below the kernel's ephemeral range.

    The service binds it later, on first use: outgoing connections take their
    ports from the ephemeral range, so none of them can hold this one meanwhile.
    """
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(20000, min(low, 32768))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


@dataclass
class Services:
    """The services of one test run; each attribute starts at first use through :meth:`need`."""

    workdir: Path
    redis: RedisServer
    moto: MotoServer
    s3_proxy: TcpProxy
    postgres: PostgresServer | None
    started: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def need(self, *names: str) -> Services:
        """Start the named services (``redis``, ``s3``, ``postgres``) unless they run already."""
        with self._lock:
            for name in names:
                if name in self.started:
                    continue
                if unit_mode():
                    current = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
                    raise RuntimeError(
                        f"{current} needs {name}, but QS_UNIT=1 runs only tests that need no service. "
                        "Mark the test (or its module) with pytest.mark.services."
                    )
                if name == "redis":
                    self.redis.start()
                elif name == "s3":
                    self.moto.start(buckets=BUCKETS)
                elif name == "postgres" and self.postgres is not None:
                    self.postgres.start()
                self.started.add(name)
        return self

    def need_all(self) -> Services:
        return self.need("redis", "s3", "postgres")

    def stop(self) -> None:
        self.s3_proxy.stop()
        self.moto.stop()
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.cleanup()


SERVICES: Services | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    global SERVICES
    workdir = Path(tempfile.mkdtemp(prefix="qs-tests-"))
    redis = RedisServer(workdir, port=reserve_port())
    moto = MotoServer(workdir, port=reserve_port())
    # The proxy runs in this process from the start (it costs a thread); its
    # first connection starts moto behind it.  QS_UNIT=1 leaves it closed, so
    # a unit test that reaches for S3 fails at once.
    proxy = TcpProxy(
        HOST, moto.port, port=reserve_port(), on_connect=lambda: SERVICES and SERVICES.need("s3")
    )
    postgres = None
    if os.environ.get("QS_DB") == "postgres":
        postgres = PostgresServer(workdir, port=reserve_port())
        dsn = postgres.dsn
        os.environ.update(QS_PG_HOST=dsn["HOST"], QS_PG_PORT=str(dsn["PORT"]), QS_PG_USER=dsn["USER"])
    os.environ.update(
        QS_WORKDIR=str(workdir), QS_S3_ENDPOINT=proxy.endpoint_url, QS_MOTO_ENDPOINT=moto.endpoint_url
    )
    if not unit_mode():
        os.environ["QS_REDIS_URL"] = redis.url
    SERVICES = Services(workdir, redis, moto, proxy, postgres)
    if not unit_mode():
        proxy.start()


def _broker_needed(**kwargs: Any) -> None:
    # A message published from the test process goes to the Redis broker.
    if SERVICES is not None and not unit_mode():
        SERVICES.need("redis")


def pytest_configure(config: Any) -> None:
    for marker in (
        "services: needs a real service (Redis, S3, a worker, PostgreSQL)",
        "integration: a few end-to-end transfers through a real worker, run in every tox env",
        "e2e: the demo in a browser, the benchmark smoke run; once per test command",
    ):
        config.addinivalue_line("markers", marker)
    from celery.signals import before_task_publish

    before_task_publish.connect(_broker_needed, weak=False)


# The fixtures through which a test reaches the database in its own process.
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
    if os.environ.get("QS_DATABASE_TESTS_ONLY") == "1":
        # A test that neither uses the database nor starts a service (whose processes
        # may) runs the same on any database: the test command runs it in its SQLite
        # lane, and its PostgreSQL lane leaves it out.
        kept: list[Any] = []
        left: list[Any] = []
        for item in items:
            (kept if _uses_a_database(item) else left).append(item)
        config.hook.pytest_deselected(items=left)
        items[:] = kept


def _uses_a_database(item: Any) -> bool:
    return (
        item.get_closest_marker("django_db") is not None
        or item.get_closest_marker("services") is not None
        or bool(DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))
    )


def pytest_unconfigure(config: Any) -> None:
    if SERVICES is None:
        return
    SERVICES.stop()
    if os.environ.get("QS_KEEP_WORKDIR") == "1":
        print(f"\nWork directory kept: {SERVICES.workdir}")
    else:
        shutil.rmtree(SERVICES.workdir, ignore_errors=True)
