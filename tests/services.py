"""Real backing services (Redis, moto S3, PostgreSQL, Celery, db_worker) for integration tests.

Every service runs as a subprocess bound to ``127.0.0.1`` on a free port and
logs to a file in a caller-provided directory.  The classes are plain Python
(no pytest dependency) so they can be reused from benchmark scripts::

    with RedisServer(tmp_path) as redis_server:
        ...

A missing binary raises :class:`RuntimeError` explaining how to install it;
nothing is ever skipped silently.  An ``atexit`` hook kills whatever is still
running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "CeleryWorker",
    "DbWorker",
    "MotoServer",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "free_port",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_live: set[_Service] = set()
_live_lock = threading.Lock()


class ServiceError(RuntimeError):
    """A service is missing, failed to start, or did not become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _can_connect(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "<no log>"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "<empty log>"


def _require_binary(name: str, hint: str, extra_dirs: Iterable[str] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_dirs:
        for directory in sorted(glob.glob(pattern), reverse=True):
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    raise ServiceError(f"`{name}` not found on PATH. {hint}")


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (via /proc children files, else a /proc scan)."""
    children: set[int] = set()
    found_files = False
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        found_files = True
        with contextlib.suppress(OSError):
            children.update(int(p) for p in Path(path).read_text().split())
    if found_files:
        return sorted(children)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.add(int(entry))
    return sorted(children)


class _Service:
    """Base class: one subprocess in its own session, logging to a file."""

    name = "service"

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._starts = 0

    # -- lifecycle -------------------------------------------------------
    def start(self) -> Any:
        raise NotImplementedError

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the process (idempotent); SIGKILL after ``timeout``."""
        self._terminate(signal.SIGTERM, timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Any:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        """Full text of the current log file."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # -- helpers ---------------------------------------------------------
    def _spawn(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        if self.proc is not None and self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.proc.pid})")
        self._close_log()
        self._starts += 1
        self.log_path = self.workdir / f"{self.name}.{self._starts}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user, group=group, extra_groups=[])
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            **kwargs,
        )
        with _live_lock:
            _live.add(self)

    def _wait_until(self, check: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise ServiceError(
                    f"{self.name} exited with code {code} while waiting for {what}.\n"
                    f"--- {self.log_path} ---\n{_tail(self.log_path)}"
                )
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL, 2)
                raise ServiceError(
                    f"{self.name} not ready ({what}) after {timeout:.0f}s.\n"
                    f"--- {self.log_path} ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _terminate(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Leftovers of the session (e.g. orphaned pool processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        self.proc = None
        self._close_log()
        with _live_lock:
            _live.discard(self)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _kill_hard(self) -> None:
        """atexit hook: kill everything without waiting politely."""
        self._terminate(signal.SIGKILL, 2)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for service in leftovers:
        with contextlib.suppress(Exception):
            service._kill_hard()


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------
def _redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one RESP command and return the first reply line."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


class RedisServer(_Service):
    """``redis-server`` without persistence; restartable on the same port."""

    name = "redis"

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def start(self) -> RedisServer:
        """Start (or restart) on ``self.port`` and wait for PING -> PONG."""
        binary = _require_binary("redis-server", "Install it with `apt-get install -y redis-server`.")
        self._spawn(
            [
                binary,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ]
        )  # fmt: skip
        self._wait_until(lambda: self.ping(), f"PING on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            return _redis_command(self.port, "PING") == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        reply = _redis_command(self.port, "FLUSHALL")
        if reply != b"+OK":
            raise ServiceError(f"FLUSHALL failed: {reply!r}")


# ---------------------------------------------------------------------------
# moto S3
# ---------------------------------------------------------------------------
class MotoServer(_Service):
    """moto's standalone server (S3 etc.) in its own process.

    moto keeps all state in memory: a restart loses every bucket, so
    :meth:`start` accepts buckets to re-create.
    """

    name = "moto"
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, buckets: Iterable[str] = ()) -> MotoServer:
        """Start on ``self.port``, wait for HTTP, then create ``buckets``."""
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServiceError(
                f"moto server is not importable from {sys.executable} ({exc}). "
                "Install it with `pip install 'moto[s3]' flask flask-cors`."
            ) from exc
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._spawn(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            env=env,
        )
        self._wait_until(self._http_ok, f"HTTP on port {self.port}")
        for bucket in buckets:
            self.create_bucket(bucket)
        return self

    def _http_ok(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/moto-api/data.json")
            return conn.getresponse().status < 500
        finally:
            conn.close()

    def client(self, service: str = "s3", endpoint_url: str | None = None, **kw: Any) -> Any:
        """A boto3 client with test credentials (path-style addressing for S3)."""
        import boto3
        from botocore.config import Config

        config = kw.pop("config", None) or Config(s3={"addressing_style": "path"})
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
            **kw,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Drop all moto state without restarting the process."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
_PG_HINT = (
    "Install PostgreSQL server binaries with `apt-get install -y postgresql` "
    "(they live in /usr/lib/postgresql/<version>/bin)."
)
_PG_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


class PostgresServer(_Service):
    """A throwaway PostgreSQL cluster (trust auth, fsync off).

    PostgreSQL refuses to run as root.  When running as root the cluster is
    owned by the ``postgres`` system user if present (else ``nobody``) and the
    data/socket directory is created under the system temp dir instead of
    ``workdir`` (whose parents are often ``0700`` root-owned, e.g. pytest's
    ``/tmp/pytest-of-root``).  Logs always go to ``workdir``.
    """

    name = "postgres"
    superuser = "postgres"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        dbname: str = "queued_storage",
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self.dbname = dbname
        self.port = port or free_port()
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **(settings or {}),
        }
        self._run_as = run_as
        self._uid: int | None = None
        self._gid: int | None = None
        self.basedir: Path | None = None
        self._own_basedir = False

    @property
    def datadir(self) -> Path:
        assert self.basedir is not None, "PostgresServer not started"
        return self.basedir / "data"

    @property
    def dsn(self) -> dict[str, str]:
        """Connection settings for a Django ``DATABASES`` entry (add ENGINE)."""
        return {
            "HOST": HOST,
            "PORT": str(self.port),
            "USER": self.superuser,
            "NAME": self.dbname,
        }

    def _bin(self, name: str) -> str:
        initdb = _require_binary("initdb", _PG_HINT, _PG_DIRS)
        # Sibling of the real initdb (the one on PATH may be a symlink).
        candidate = Path(os.path.realpath(initdb)).parent / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
        return _require_binary(name, _PG_HINT, _PG_DIRS)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            self.basedir = self.workdir / "pg"
            self.basedir.mkdir(parents=True, exist_ok=True)
            return
        names = [self._run_as] if self._run_as else ["postgres", "nobody"]
        for username in names:
            try:
                entry = pwd.getpwnam(username)
            except KeyError:
                continue
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            break
        else:
            raise ServiceError(
                f"Running as root and none of the users {names} exist; PostgreSQL "
                "refuses to run as root. Create one with `useradd -r postgres`."
            )
        self.basedir = Path(tempfile.mkdtemp(prefix="qs-pg-"))
        self._own_basedir = True
        os.chown(self.basedir, self._uid, self._gid)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if self._uid is not None:
            env["HOME"] = str(self.basedir)
            env["USER"] = env["LOGNAME"] = pwd.getpwuid(self._uid).pw_name
        return env

    def _run(self, cmd: Sequence[str], what: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._uid is not None:
            kwargs.update(user=self._uid, group=self._gid, extra_groups=[])
        result = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env(),
            cwd=self.basedir,
            timeout=120,
            **kwargs,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
                f"{result.stdout.decode(errors='replace')}"
                f"{result.stderr.decode(errors='replace')}"
            )

    def start(self) -> PostgresServer:
        """initdb (first time), start the postmaster, create ``dbname``."""
        postgres = self._bin("postgres")
        if self.basedir is None or not (self.datadir / "PG_VERSION").exists():
            self._prepare_user()
            self._run(
                [
                    self._bin("initdb"),
                    "-D", str(self.datadir),
                    "-U", self.superuser,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
            )  # fmt: skip
            first_start = True
        else:
            first_start = False
        cmd = [
            postgres,
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-k", str(self.basedir),
            "-c", f"listen_addresses={HOST}",
        ]  # fmt: skip
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        self._spawn(cmd, env=self._env(), cwd=self.basedir, user=self._uid, group=self._gid)
        self._wait_until(self._is_ready, f"pg_isready on port {self.port}")
        if first_start:
            self.create_database(self.dbname)
        return self

    def _is_ready(self) -> bool:
        if not _can_connect(self.port):
            return False
        result = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", HOST, "-p", str(self.port),
             "-U", self.superuser, "-d", "postgres"],
            capture_output=True,
            timeout=10,
        )  # fmt: skip
        return result.returncode == 0

    def create_database(self, name: str) -> None:
        self._run(
            [self._bin("createdb"), "-h", HOST, "-p", str(self.port),
             "-U", self.superuser, name],
            f"createdb {name}",
        )  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: disconnects clients), SIGKILL on timeout."""
        self._terminate(signal.SIGINT, timeout)

    def cleanup(self) -> None:
        """Stop and delete the cluster directory if we created it."""
        self.stop()
        if self._own_basedir and self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)
        self.basedir = None
        self._own_basedir = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _kill_hard(self) -> None:
        super()._kill_hard()
        if self._own_basedir and self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Celery worker
# ---------------------------------------------------------------------------
class CeleryWorker(_Service):
    """``celery -A app worker`` subprocess with crash-injection helpers."""

    name = "celery"

    def __init__(
        self,
        app: str,
        env: Mapping[str, str],
        workdir: str | os.PathLike[str],
        *,
        hostname: str,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.app = app
        self.env = dict(env)
        self.hostname = hostname
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.pool = pool
        self.extra_args = list(extra_args)
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.name = "celery-" + "".join(c if c.isalnum() else "_" for c in hostname)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-l", "info",
            "-n", self.hostname,
            "-c", str(self.concurrency),
            "-P", self.pool,
        ]  # fmt: skip
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        cmd += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        return cmd + self.extra_args

    def start(self, timeout: float = READY_TIMEOUT) -> CeleryWorker:
        """Start and wait for the ``ready.`` log line."""
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        pythonpath = [str(self.cwd)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        self._spawn(self.command(), env=env, cwd=self.cwd)
        self._wait_until(lambda: "ready." in self.log_text(), "'ready.' in log", timeout)
        if self.pool == "prefork":
            self._wait_until(lambda: len(self.child_pids()) >= self.concurrency, "pool processes", timeout)
        return self

    def child_pids(self) -> list[int]:
        """Pids of the pool processes (direct children of the main process)."""
        if self.proc is None or not self.running:
            return []
        return [pid for pid in _children_of(self.proc.pid) if _pid_alive(pid)]

    def kill_child(self, pid: int | None = None) -> int:
        """SIGKILL one pool process; the main process survives and replaces it."""
        children = self.child_pids()
        if pid is None:
            if not children:
                raise ServiceError(f"{self.hostname}: no pool child processes to kill")
            pid = children[0]
        elif pid not in children:
            raise ServiceError(f"{self.hostname}: {pid} is not a pool child ({children})")
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_for_new_child(self, old: Iterable[int], timeout: float = READY_TIMEOUT) -> int:
        """Wait until a pool child not in ``old`` exists; return its pid."""
        old_set = set(old)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [p for p in self.child_pids() if p not in old_set]
            if new:
                return new[0]
            time.sleep(0.05)
        raise ServiceError(f"{self.hostname}: no replacement pool child after {timeout}s")

    def kill(self) -> None:
        """SIGKILL the main process and all its children (a hard crash)."""
        proc = self.proc
        if proc is None:
            return
        children = self.child_pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in [proc.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(_pid_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.02)  # orphans get reaped by init
        self._reap()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Warm shutdown (SIGTERM; waits for running tasks), SIGKILL on timeout."""
        self._terminate(signal.SIGTERM, timeout)


# ---------------------------------------------------------------------------
# django-tasks-db worker
# ---------------------------------------------------------------------------
class DbWorker(_Service):
    """``manage.py db_worker`` (django-tasks-db): one process that runs one task at a time."""

    name = "db_worker"

    def __init__(
        self,
        settings: str,
        env: Mapping[str, str],
        workdir: str | os.PathLike[str],
        *,
        worker_id: str,
        queues: Sequence[str] = ("default",),
        pythonpath: Sequence[str] = (),
        interval: float = 0.1,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.settings = settings
        self.env = dict(env)
        self.worker_id = worker_id
        self.queues = list(queues)
        self.pythonpath = [str(p) for p in pythonpath]
        self.interval = interval
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.name = "db_worker-" + "".join(c if c.isalnum() else "_" for c in worker_id)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "django", "db_worker",
            "--settings", self.settings,
            "--queue-name", ",".join(self.queues),
            "--interval", str(self.interval),
            "--worker-id", self.worker_id,
            "--no-startup-delay",
            "--no-reload",
        ]  # fmt: skip

    def start(self, timeout: float = READY_TIMEOUT) -> DbWorker:
        """Start and wait for its ``Starting worker`` log line."""
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, str(self.cwd), *inherited])
        self._spawn(self.command(), env=env, cwd=self.cwd)
        self._wait_until(lambda: "Starting worker" in self.log_text(), "'Starting worker' in log", timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the process (a hard crash): its running task is never finished."""
        self._terminate(signal.SIGKILL, 5)
