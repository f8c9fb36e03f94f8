"""The services a benchmark run needs, all on 127.0.0.1 and started by the run itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.services import (
    REPO_ROOT,
    CeleryWorker,
    DbWorker,
    MotoServer,
    RedisServer,
    ServiceError,
    free_port,
)

BUCKET = "qs-bench"
PARKED = "bench-parked"  # a queue no worker consumes


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not listen on port {port} within {timeout} s")


def kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak(pid: int) -> None:
    """Restart VmHWM (peak RSS) from the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def prefault_memory(keep: int = 2 << 30) -> tuple[int, float]:
    """Write once to all available memory but ``keep`` bytes, then give it back.

    On a VM whose memory the host backs only when first touched (Firecracker,
    as on the development machine), a 100 MB write into never-touched memory
    took 230 ms instead of 23 ms, whichever storage wrote it.  Touching it
    once up front takes that cost out of every sample.  Returns (bytes, seconds).
    """
    import mmap
    import re

    available = int(re.findall(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text())[0]) * 1024
    size = max(0, available - keep) // mmap.PAGESIZE * mmap.PAGESIZE
    started = time.monotonic()
    if size:
        chunk = 64 << 20  # a multiple of the page size
        ones = b"\1" * (chunk // mmap.PAGESIZE)
        with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as memory:
            view = memoryview(memory)
            for offset in range(0, size, chunk):
                end = min(offset + chunk, size)
                view[offset : end : mmap.PAGESIZE] = ones[: len(range(offset, end, mmap.PAGESIZE))]
            view.release()
    return size, time.monotonic() - started


class Services:
    """Redis, moto's S3 server, the WAN link, Celery workers and a WSGI server."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.moto = MotoServer(workdir)
        self.wan_port = free_port()
        self._wan: subprocess.Popen[bytes] | None = None
        self._workers = 0

    def start(self) -> None:
        self.redis.start()
        self.moto.start(buckets=[BUCKET])
        self._wan = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.wan", "--port", str(self.wan_port),
             "--target-port", str(self.moto.port), "--latency", "0.05", "--bandwidth", "20e6"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.wan_port, self._wan, "the WAN link")
        os.environ.update(
            QS_WORKDIR=str(self.workdir),
            QS_REDIS_URL=self.redis.url,
            QS_S3_ENDPOINT=self.moto.endpoint_url,
            QS_S3_WAN_ENDPOINT=f"http://127.0.0.1:{self.wan_port}",
            DJANGO_SETTINGS_MODULE="benchmarks.settings",
        )

    def stop(self) -> None:
        if self._wan is not None:
            self._wan.terminate()
            self._wan.wait(5)
            self._wan = None
        self.moto.stop()
        self.redis.stop()

    @contextlib.contextmanager
    def worker(self, concurrency: int = 1, **env: str) -> Iterator[CeleryWorker]:
        self._workers += 1
        worker = CeleryWorker(
            "benchmarks.celery_app",
            {"DJANGO_SETTINGS_MODULE": "benchmarks.settings", "QS_BENCH_QUEUE": "", **env},
            self.workdir,
            hostname=f"bench{self._workers}@localhost",
            concurrency=concurrency,
            cwd=REPO_ROOT,
        )
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()

    @contextlib.contextmanager
    def db_worker(self, processes: int = 1, **env: str) -> Iterator[list[DbWorker]]:
        """``processes`` django-tasks-db ``db_worker`` processes on the queue ``default``."""
        workers = []
        try:
            for _ in range(processes):
                self._workers += 1
                worker = DbWorker(
                    "benchmarks.settings",
                    {"QS_BENCH_QUEUE_BACKEND": "tasks", "QS_BENCH_QUEUE": "", **env},
                    self.workdir,
                    worker_id=f"benchdb{self._workers}",
                    cwd=REPO_ROOT,
                )
                workers.append(worker)
                worker.start()
            yield workers
        finally:
            for worker in workers:
                worker.stop()

    @contextlib.contextmanager
    def wsgi_server(self, **env: str) -> Iterator[tuple[int, int]]:
        """waitress serving benchmarks.wsgi in its own process; yields (port, pid)."""
        port = free_port()
        log = (self.workdir / f"waitress-{port}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=4",
             "benchmarks.wsgi:application"],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_port(port, proc, "waitress")
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()

    def s3(self) -> Any:
        return self.moto.client()

    def empty_bucket(self, prefix: str = "") -> None:
        client = self.s3()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    def wait_idle(self, queue: str = "celery", timeout: float = 300) -> None:
        """Until the workers have taken every message of ``queue`` and finished them.

        Messages that wait for their countdown (a busy file's, a retry's) may
        remain: they find their files done.  After a run of small files the
        queue still holds the messages of files a worker took from the table,
        and those would take the next run's files: the next run starts after them.
        """
        import json

        import redis

        client: Any = redis.Redis.from_url(f"{self.redis.url}/0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = [json.loads(raw)[0] for raw in client.hvals("unacked")]
            if not client.llen(queue) and not any(not m["headers"].get("eta") for m in held):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the workers still had messages of {queue!r} after {timeout} s")

    def purge_parked(self) -> None:
        import redis

        redis.Redis.from_url(f"{self.redis.url}/0").delete(PARKED)

    def parked_messages(self) -> list[bytes]:
        import redis

        client: Any = redis.Redis.from_url(f"{self.redis.url}/0")
        return list(client.lrange(PARKED, 0, -1))
