"""Pytest plugin: starts the real services before Django reads the settings.

Loaded with ``-p tests.plugin`` (see setup.cfg).  Redis, moto's S3 server, a
TCP proxy in front of it, and with ``QS_DB=postgres`` a PostgreSQL server
start on free ports of 127.0.0.1; their addresses go into the environment,
which tests/settings.py and every Celery worker the tests start read.  A
service that cannot start fails the run: nothing is skipped.  The work
directory (database, media, service logs) is removed at the end unless
``QS_KEEP_WORKDIR=1`` is set, so repeated runs do not fill the disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .proxy import TcpProxy
from .services import MotoServer, PostgresServer, RedisServer

BUCKETS = ("qs-bucket", "qs-photos")


@dataclass
class Services:
    workdir: Path
    redis: RedisServer
    moto: MotoServer
    s3_proxy: TcpProxy
    postgres: PostgresServer | None


SERVICES: Services | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    global SERVICES
    workdir = Path(tempfile.mkdtemp(prefix="qs-tests-"))
    redis = RedisServer(workdir).start()
    moto = MotoServer(workdir).start(buckets=BUCKETS)
    proxy = TcpProxy("127.0.0.1", moto.port).start()
    postgres = None
    if os.environ.get("QS_DB") == "postgres":
        postgres = PostgresServer(workdir).start()
        dsn = postgres.dsn
        os.environ.update(QS_PG_HOST=dsn["HOST"], QS_PG_PORT=str(dsn["PORT"]), QS_PG_USER=dsn["USER"])
    os.environ.update(
        QS_WORKDIR=str(workdir),
        QS_REDIS_URL=redis.url,
        QS_S3_ENDPOINT=proxy.endpoint_url,
        QS_MOTO_ENDPOINT=moto.endpoint_url,
    )
    SERVICES = Services(workdir, redis, moto, proxy, postgres)


def pytest_unconfigure(config: Any) -> None:
    if SERVICES is None:
        return
    SERVICES.s3_proxy.stop()
    SERVICES.moto.stop()
    SERVICES.redis.stop()
    if SERVICES.postgres is not None:
        SERVICES.postgres.cleanup()
    if os.environ.get("QS_KEEP_WORKDIR") == "1":
        print(f"\nWork directory kept: {SERVICES.workdir}")
    else:
        shutil.rmtree(SERVICES.workdir, ignore_errors=True)
