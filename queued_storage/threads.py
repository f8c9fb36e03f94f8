"""The helper threads of a worker process: the lease keeper, the upload threads and the sweeper.

The first two are started at first use and kept for later tasks, the sweeper
when the process starts; a forked child forgets its parent's and starts its
own.  None knows of any queue: the sweep itself is given to the sweeper.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.db import connections

from . import lock, transitions
from .conf import conf
from .transfer import Progress

logger = logging.getLogger("queued_storage")


class LeaseKeeper(threading.Thread):
    """Renews the leases of the files this process copies and records their progress.

    One per process, beating every third of the lease: one commit per beat
    for all its files, not one per file or per chunk copied.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="queued_storage lease")
        self._files: dict[tuple[str, str], tuple[str, list[int]]] = {}
        self._lock = threading.Lock()

    def add(self, storage: str, name: str, version: str) -> Progress:
        """Keep the lease of ``name`` until :meth:`discard`; returns the callback its copy reports to."""
        done = [0]
        with self._lock:
            self._files[storage, name] = (version, done)

        def progress(n: int) -> None:
            done[0] = n

        return progress

    def discard(self, storage: str, name: str) -> None:
        with self._lock:
            self._files.pop((storage, name), None)

    def kept(self) -> list[tuple[str, str]]:
        """``(storage, name)`` of every file whose lease is renewed now."""
        with self._lock:
            return list(self._files)

    @staticmethod
    def _beat() -> float:
        """A third of the lease (a setting out of range reads as the default, see check E007)."""
        return conf.LEASE / 3

    def run(self) -> None:
        while True:
            time.sleep(self._beat())
            self.renew()

    def renew(self) -> None:
        """One beat: renew the lease and record the progress of every file kept."""
        with self._lock:
            files = [(key[0], key[1], version, done[0]) for key, (version, done) in self._files.items()]
        if not files:
            return
        try:
            transitions.heartbeat_many(files)
        except Exception:
            # The database is down: the next beat tries again, and a lease
            # that lapses meanwhile only lets the sweeper queue the file.
            logger.exception("queued_storage: could not renew the leases of %d files", len(files))
        finally:
            # No idle connection held between beats: every one this thread
            # opened, wherever a router sends FileRecord.
            connections.close_all()


_keeper: LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def lease_keeper() -> LeaseKeeper:
    """This process's lease keeper, started at first use."""
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = LeaseKeeper()
            _keeper.start()
        return _keeper


class _Uploader:
    """Held by one thread alone (thread-local): when that thread ends, it is freed."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="queued_storage upload")


_uploaders = threading.local()
# Every upload executor of this process, with what stops it when its owning thread ends.
# No lock: each change is one dict operation, and a finalizer may run in any thread.
_uploads: dict[ThreadPoolExecutor, weakref.finalize[Any, _Uploader]] = {}


def upload_executor() -> ThreadPoolExecutor:
    """The one-thread executor that copies the files of several-file messages run by this thread.

    One per calling thread (one per process with prefork), kept for later
    tasks: the remote storage's connection is per thread (django-storages),
    and a new one costs a new boto3 client.  It is shut down when the calling
    thread ends and at the worker's shutdown (:func:`stop_upload_executors`).
    """
    uploader: _Uploader | None = getattr(_uploaders, "uploader", None)
    if uploader is None or uploader.executor not in _uploads:
        uploader = _uploaders.uploader = _Uploader()
        _uploads[uploader.executor] = weakref.finalize(uploader, _retire, uploader.executor)
    return uploader.executor


def upload_executors() -> list[ThreadPoolExecutor]:
    """Every upload executor of this process still running."""
    return list(_uploads)


def _retire(executor: ThreadPoolExecutor, *, wait: bool = False) -> None:
    """Shut ``executor`` down: copies queued and not started are dropped (their leases lapse)."""
    _uploads.pop(executor, None)
    executor.shutdown(wait=wait, cancel_futures=True)


def stop_upload_executors(**kwargs: Any) -> None:
    """Shut down every upload executor of this process and wait for them: at the worker's shutdown."""
    for executor, finalizer in list(_uploads.items()):
        finalizer.detach()
        _retire(executor, wait=True)


SWEEP_LOCK = "sweep"

# Called with a check of the sweep lock: ``held()`` renews it and is False
# once another process has taken it over, when the sweep should stop.
Sweep = Callable[[Callable[[], bool]], object]


class Sweeper(threading.Thread):
    """Runs ``sweep`` every ``QUEUED_STORAGE_SWEEP_INTERVAL`` seconds, in turn with every other process.

    One per worker process.  At each turn it tries the cluster-wide sweep
    lock (:mod:`queued_storage.lock`) and sweeps only if it got it; released,
    the lock stays closed until an interval after that sweep began.  So the
    processes together sweep about once per interval, never two at once, and
    with nobody running anything.
    """

    def __init__(self, sweep: Sweep) -> None:
        super().__init__(daemon=True, name="queued_storage sweeper")
        self._sweep = sweep
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:
            interval = conf.SWEEP_INTERVAL
            if interval is None or self._stopped.wait(interval):
                return
            try:
                self.turn()
            finally:
                # No idle connection held between turns, wherever a router sends the rows.
                connections.close_all()

    def stop(self) -> None:
        """End the thread after its current turn."""
        self._stopped.set()

    def turn(self) -> bool:
        """Sweep if this process takes the sweep lock (its turn is due, nobody sweeps); whether it swept."""
        try:
            held = lock.take(SWEEP_LOCK, conf.LEASE)
            if held is None:
                return False
            try:
                self._sweep(lambda: lock.keep(held))
            finally:
                next_turn = held.taken_at + timedelta(seconds=conf.SWEEP_INTERVAL or 0)
                lock.release(held, closed_until=next_turn)
        except Exception:
            # The database or the broker is down: the next turn tries again.
            logger.exception("queued_storage: the sweep failed; the next turn tries again")
            return False
        return True


_sweeper: Sweeper | None = None
_sweeper_lock = threading.Lock()


def start_sweeper(sweep: Sweep) -> Sweeper | None:
    """Start this process's sweeper, unless one runs or ``QUEUED_STORAGE_SWEEP_INTERVAL`` is off."""
    global _sweeper
    with _sweeper_lock:
        if conf.SWEEP_INTERVAL is None:
            return None
        if _sweeper is None or not _sweeper.is_alive():
            _sweeper = Sweeper(sweep)
            _sweeper.start()
        return _sweeper


def stop_sweeper(**kwargs: Any) -> None:
    """Stop this process's sweeper after its current turn: at the worker's shutdown."""
    global _sweeper
    with _sweeper_lock:
        if _sweeper is not None:
            _sweeper.stop()
            _sweeper = None


def _forget_threads() -> None:
    # A forked child does not have the parent's threads: nothing to stop, only to forget.
    global _uploaders, _uploads, _keeper, _keeper_lock, _sweeper, _sweeper_lock
    for finalizer in list(_uploads.values()):
        finalizer.detach()
    _uploaders, _uploads = threading.local(), {}
    _keeper, _keeper_lock = None, threading.Lock()
    _sweeper, _sweeper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_threads)
