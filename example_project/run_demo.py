#!/usr/bin/env python3
"""Run the example project with everything it needs, in one command; Ctrl-C stops it all.

Starts, on 127.0.0.1: moto's S3 server with the demo bucket (unless
``AWS_STORAGE_BUCKET_NAME`` names a real one), a Celery worker, and Django's
development server, after migrating the SQLite database.  The broker and the
cache need no server: a filesystem queue and a file-based cache under the data
directory, unless ``REDIS_URL`` is set.  With ``--queue tasks`` the transfers
go through Django's Tasks framework instead, queued in the SQLite database
(django-tasks-db) and run by two ``manage.py db_worker`` processes.  ``python3 tools/run.py demo`` runs
this in a virtualenv with the ``[demo]`` extra installed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
MOTO_BUCKET = "queued-storage-demo"
STOP_TIMEOUT = 10.0
# The page polls this every half second; its access log lines would drown the rest.
QUIET_WEB_LINES = ("/api/uploads/", "/static/", "/media/")
# What a fresh demo run starts from; only these are removed from the data directory.
DATA_ENTRIES = (
    "db.sqlite3",
    "db.sqlite3-wal",
    "db.sqlite3-shm",
    "media",
    "cache",
    "broker",
    "broker-control",
)


class DemoError(RuntimeError):
    """A part of the demo did not start; the message says which and shows its log."""


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str = "/") -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


class Process:
    """One child process in its own session, its output prefixed on ours and kept in a log file."""

    def __init__(self, label: str, cmd: list[str], env: dict[str, str], log_dir: Path, echo: bool) -> None:
        self.label = label
        self.cmd = cmd
        self.log_path = log_dir / f"{label}.log"
        self.lines: list[str] = []
        self._echo = echo
        self._log: IO[str] = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        # Its own session: Ctrl-C reaches only this script, which stops the
        # children in order (web first, the worker warm, moto last).
        self.proc = subprocess.Popen(
            cmd,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()
            if self._echo and not any(q in line for q in QUIET_WEB_LINES):
                print(f"[{self.label}] {line}", end="", flush=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if not self.alive():
                raise DemoError(f"{self.label} exited ({self.proc.returncode}) before {what}.\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{self.label}: no {what} after {timeout:.0f} s.\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, count: int = 30) -> str:
        return f"--- last lines of {self.log_path} ---\n" + "".join(self.lines[-count:])

    def stop(self) -> None:
        """SIGTERM (a Celery worker finishes its task), then SIGKILL the whole session."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{self.label} did not stop in {STOP_TIMEOUT:.0f} s; killing it", flush=True)
        # Whatever is left of its session, e.g. worker pool processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(2)
        self._log.close()


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir = Path(args.data_dir).resolve()
        self.own_s3 = not os.environ.get("AWS_STORAGE_BUCKET_NAME")
        self.processes: list[Process] = []
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        pythonpath = [str(HERE)]
        if (REPO / "queued_storage").is_dir():
            pythonpath.append(str(REPO))  # the checkout's package, even if another is installed
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo.settings",
            "DEMO_DATA_DIR": str(self.data_dir),
            "DEMO_BANDWIDTH": str(self.args.bandwidth),
            "DEMO_QUEUE": self.args.queue,
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONUNBUFFERED": "1",
        }
        if self.own_s3:
            self.moto_port = free_port()
            env.update(
                AWS_S3_ENDPOINT_URL=f"http://{HOST}:{self.moto_port}",
                AWS_STORAGE_BUCKET_NAME=MOTO_BUCKET,
                AWS_ACCESS_KEY_ID="demo",
                AWS_SECRET_ACCESS_KEY="demo",  # moto accepts any key
                AWS_S3_REGION_NAME="us-east-1",
            )
        return env

    def start(self, label: str, *cmd: str, echo: bool = True) -> Process:
        process = Process(label, list(cmd), self.env, self.data_dir / "logs", echo and not self.args.quiet)
        self.processes.append(process)
        return process

    def manage(self, *args: str, check: bool = True) -> None:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=HERE, env=self.env, capture_output=True, text=True
        )
        if check and result.returncode:
            raise DemoError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.own_s3:
            # moto keeps its bucket in memory: start the local side afresh too, so
            # no record points at an object that is gone.
            for entry in DATA_ENTRIES:
                path = self.data_dir / entry
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        (self.data_dir / "logs").mkdir(exist_ok=True)

    def run(self) -> None:
        self.prepare()
        if self.own_s3:
            say(f"Starting moto's S3 server on {HOST}:{self.moto_port}")
            moto = self.start(
                "s3", sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.moto_port), echo=False
            )
            moto.wait_until(lambda: http_status(self.moto_port, "/moto-api/data.json") == 200, "HTTP answer")
            self.create_bucket()
        say("Migrating the SQLite database")
        self.manage("migrate", "--noinput")
        self.manage(
            "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com", check=False
        )
        if self.args.queue == "tasks":
            say("Starting two db_worker processes (Django Tasks, queued in the SQLite database)")
            for n in (1, 2):
                worker = self.start(
                    f"worker-{n}",
                    sys.executable, "manage.py", "db_worker",
                    "--interval", "0.2", "--no-startup-delay", "--no-reload", "--worker-id", f"demo-{n}",
                )  # fmt: skip
                worker.wait_until(
                    lambda worker=worker: any("Starting worker" in line for line in worker.lines),
                    "'Starting worker' line",
                )
        else:
            say("Starting a Celery worker")
            worker = self.start(
                "worker",
                sys.executable, "-m", "celery", "-A", "demo", "worker",
                "--loglevel", "info", "--concurrency", "2", "--hostname", "demo@%h",
                # The filesystem broker has no broadcast: no gossip, mingle or heartbeats.
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            )  # fmt: skip
            worker.wait_until(lambda: any("ready." in line for line in worker.lines), "'ready.' line")
        say("Starting the web server")
        web = self.start(
            "web",
            sys.executable,
            "manage.py",
            "runserver",
            "--noreload",
            "--skip-checks",
            f"{HOST}:{self.args.port}",
        )
        web.wait_until(lambda: http_status(self.args.port) == 200, "HTTP 200 on /")
        self.banner()
        while all(p.alive() for p in self.processes):
            time.sleep(0.3)
        dead = next(p for p in self.processes if not p.alive())
        raise DemoError(f"{dead.label} exited unexpectedly ({dead.proc.returncode}).\n{dead.tail()}")

    def create_bucket(self) -> None:
        import boto3

        env = self.env
        boto3.client(
            "s3",
            endpoint_url=env["AWS_S3_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_S3_REGION_NAME"],
        ).create_bucket(Bucket=MOTO_BUCKET)

    def banner(self) -> None:
        s3 = self.env.get("AWS_S3_ENDPOINT_URL") or "AWS S3"
        redis = "Redis at " + self.env["REDIS_URL"] if self.env.get("REDIS_URL") else ""
        if self.args.queue == "tasks":
            queue = f"queue: Django Tasks in the SQLite database; cache: {redis or 'file-based'}"
        else:
            queue = f"broker and cache: {redis or 'filesystem queue'}"
        print(
            "\n"
            f"  Open http://{HOST}:{self.args.port}/  and upload some files.\n"
            f"  Admin: http://{HOST}:{self.args.port}/admin/  (user admin, password admin)\n"
            f"  S3: {s3}, bucket {self.env['AWS_STORAGE_BUCKET_NAME']}; {queue}\n"
            f"  Data and logs: {self.data_dir}\n"
            "  Press Ctrl-C to stop everything.\n",
            flush=True,
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, help="port of the web server (default: 8000, or a free one)")
    parser.add_argument(
        "--data-dir", default=str(HERE / "var"), help="database, media, cache, queue and logs"
    )
    parser.add_argument(
        "--bandwidth",
        type=int,
        default=2 * 1024 * 1024,
        metavar="BYTES_PER_S",
        help="read speed of the transfer, to watch its progress (default 2 MiB/s; 0: no limit)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not echo the processes' output (logs keep it)"
    )
    parser.add_argument(
        "--queue",
        choices=("celery", "tasks"),
        default="celery",
        help="what carries the transfers: a Celery worker (default), or Django's Tasks framework "
        "with its queue in the SQLite database and db_worker processes, with no broker",
    )
    args = parser.parse_args(argv)
    if args.port is None:
        args.port = 8000 if port_free(8000) else free_port()
    elif not port_free(args.port):
        parser.error(f"port {args.port} is in use; pick another with --port")
    # Ctrl-C, and `kill`, stop everything cleanly even when started in the
    # background (where a shell would have SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    demo = Demo(args)
    try:
        demo.run()
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    except DemoError as exc:
        print(f"\nThe demo stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
