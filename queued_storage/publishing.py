"""Sending a saved file's transfer message to Celery: from a background thread, or inline.

Imports Celery only when it sends, so importing it costs a project on
Django Tasks nothing.

By default the commit hands the message to one thread per process and
``save()`` returns without waiting for the broker.  That is safe because the
record is the outbox: a message lost with its process (killed before the
thread sent it) only delays the transfer until a sweep queues it again (the
workers sweep by themselves, see :mod:`queued_storage.threads`).  Normal
interpreter exit waits for the thread (up to ``FLUSH_TIMEOUT``).

The message is sent inline where the thread cannot run or is not wanted
(:func:`mode`): eager Celery, uWSGI without ``--enable-threads``, or
``QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = False``.

The thread also sends a burst of small files in fewer messages: it waits up to
``LINGER`` seconds for more saves, then sends up to ``QUEUED_STORAGE_BATCH_FILES`` files of
one storage and host, each under ``BATCH_MAX_SIZE``, as one task, so the
worker pays Celery's cost per message once for the lot.  A file alone, or a
large one, still gets its own message; a large one waits only ``SETTLE``
seconds, so its copy starts soon.  The sweeper groups its backlog the
same way (:func:`coalesce`).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .conf import SMALL_FILE, conf
from .redaction import redact
from .routing import celery_configured as celery_configured
from .routing import queue_for as queue_for

if TYPE_CHECKING:
    from celery import Task

    from .storage import QueuedStorage

    _Task = Task[Any, Any]

logger = logging.getLogger("queued_storage")

# A publish that cannot reach the broker gives up quickly: the record stays
# pending and the sweeper queues it again, so the request need not wait.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def import_task(path: str) -> Any:
    """The Celery task or Task subclass at dotted ``path``, or ImproperlyConfigured naming it."""
    from celery import Task

    try:
        obj = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"QueuedStorage option task={path!r} does not import: {exc}") from exc
    if isinstance(obj, Task) or (isinstance(obj, type) and issubclass(obj, Task)):
        return obj
    raise ImproperlyConfigured(
        f"QueuedStorage option task={path!r} is {obj!r}, not a Celery task or Task subclass."
    )


def resolve_task(path: str) -> _Task:
    """The Celery task at dotted ``path``; a Task class is registered with the current app.

    Only called once the project's Celery app exists (``celery_configured()``):
    registering binds the class to an app, and Celery's unconfigured fallback
    app would keep it.
    """
    from celery import current_app

    obj = import_task(path)
    if isinstance(obj, type):
        app = current_app
        # A subclass inherits its parent's name; it needs one of its own.
        name = obj.__dict__.get("name") or f"{obj.__module__}.{obj.__qualname__}"
        if name not in app.tasks:
            instance = obj()
            instance.name = name
            app.register_task(instance)
        task: _Task = app.tasks[name]
        return task
    shared: _Task = obj
    return shared


def enqueue(storage: QueuedStorage, name: str, version: str, host: str | None = None, **options: Any) -> bool:
    """Publish the transfer of ``name``; on failure log it and leave it to the sweeper.

    ``host`` is the record's host (where the local copy is); ``None`` means this host.
    ``options`` go to ``apply_async`` (``countdown``, ``retries``).
    """
    return _publish(storage, [(name, version)], host, options)


def enqueue_many(
    storage: QueuedStorage, files: list[tuple[str, str]], host: str | None = None, **options: Any
) -> bool:
    """Publish the transfers of several ``(name, version)`` saved on ``host`` as one message.

    One message is one task for the worker: Celery's cost per message is
    paid once for the lot.  A single file is sent in the one-file form.
    ``options`` go to ``apply_async`` (``countdown``).
    """
    return _publish(storage, files, host, options)


def _publish(
    storage: QueuedStorage, files: list[tuple[str, str]], host: str | None, extra: dict[str, Any]
) -> bool:
    if not files:
        return True
    what = repr(files[0][0]) if len(files) == 1 else f"{len(files)} files ({files[0][0]!r}, ...)"
    if not celery_configured():
        logger.error(
            "queued_storage: no Celery app is configured in this process, so the transfer of %s "
            "stays pending. Import your project's Celery app in proj/__init__.py (Celery's "
            "'First steps with Django'), then run `manage.py queued_storage requeue`.",
            what,
        )
        return False
    try:
        options: dict[str, Any] = {"retry_policy": _PUBLISH_RETRY, **extra}
        queue = queue_for(conf.HOST if host is None else host)
        if queue:
            options["queue"] = queue
        task = resolve_task(storage.task)
        if len(files) == 1:
            task.apply_async((storage.identity, *files[0]), **options)
        else:
            task.apply_async((storage.identity,), {"files": [list(f) for f in files]}, **options)
    except Exception as exc:  # the record is the outbox: nothing is lost
        logger.warning(
            "queued_storage: could not queue the transfer of %s (%s: %s); it stays pending "
            "until a worker's sweep or `manage.py queued_storage requeue` queues it again.",
            what,
            type(exc).__name__,
            redact(str(exc)),
        )
        return False
    return True


FLUSH_TIMEOUT = 10.0
# Long enough for a burst of saves to fill a message (each message costs the
# worker a hand-off and two commits); short beside any transfer it delays.
LINGER = 0.05
# What a message that travels alone waits: longer than the saving thread's
# last steps after its record's commit (the model row's INSERT and COMMIT),
# which the publish would otherwise compete with for the GIL; short beside
# the copy of a large file, whose latency it adds to.
SETTLE = 0.01
# Only small files share a message, so a long copy never holds others back.
BATCH_MAX_SIZE = SMALL_FILE

# storage, name, version, host, size
Message = tuple["QueuedStorage", str, str, "str | None", "int | None"]


def _may_share(message: Message) -> bool:
    """Whether the file of ``message`` is small enough to share a message with others."""
    size = message[4]
    return size is not None and size <= BATCH_MAX_SIZE


def coalesce(
    messages: list[Message], most: int
) -> list[tuple[QueuedStorage, list[tuple[str, str]], str | None]]:
    """Group small files of the same storage and host into messages of up to ``most`` files.

    Groups keep the order of their first file; a large file (or one of
    unknown size) is a group of its own, so it never holds small ones back.
    """
    groups: list[tuple[QueuedStorage, list[tuple[str, str]], str | None]] = []
    open_groups: dict[tuple[str, str | None], int] = {}
    for message in messages:
        storage, name, version, host, _ = message
        if not _may_share(message):
            groups.append((storage, [(name, version)], host))
            continue
        index = open_groups.get((storage.identity, host))
        if index is None or len(groups[index][1]) >= most:
            index = open_groups[(storage.identity, host)] = len(groups)
            groups.append((storage, [], host))
        groups[index][1].append((name, version))
    return groups


def _never() -> bool:
    return False


class _Publisher:
    """One daemon thread sending messages in the order they were committed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: deque[Message] = deque()
        self._unsent = 0
        self._thread: threading.Thread | None = None

    def submit(self, message: Message) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="queued_storage publisher", daemon=True)
                thread.start()
                self._thread = thread
            self._messages.append(message)
            self._unsent += 1
            self._cond.notify_all()

    def _holds(self, count: int) -> bool:
        return len(self._messages) >= count

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._messages))
                most = conf.BATCH_FILES
                if most > 1 and any(_may_share(message) for message in self._messages):
                    # A burst of small files goes out in fewer messages; one save
                    # waits LINGER at most.
                    self._cond.wait_for(partial(self._holds, most), LINGER)
                else:
                    # Each file travels alone (a large one, or batching is off):
                    # the wait only lets the saving thread finish.
                    self._cond.wait_for(_never, SETTLE)
                messages = list(self._messages)
                self._messages.clear()
            for storage, files, host in coalesce(messages, most):
                try:
                    enqueue_many(storage, files, host)  # logs its failures; the sweeper covers them
                except Exception:  # keep the thread alive whatever one message does
                    logger.exception("queued_storage: publishing the transfer of %r failed", files[0][0])
            with self._cond:
                self._unsent -= len(messages)
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted message was sent (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unsent == 0, timeout)


_publisher = _Publisher()


def _after_fork() -> None:
    # The parent's thread and queued messages stay with the parent; a lock held
    # by a thread at fork time would never be released in the child.
    global _publisher
    _publisher = _Publisher()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(lambda: _publisher.flush(FLUSH_TIMEOUT))


class Mode(NamedTuple):
    """How this process sends the transfer messages of its saves, and why."""

    background: bool
    reason: str


def mode() -> Mode:
    """Background where a thread of this process can run and the settings allow it; else inline."""
    if not conf.PUBLISH_IN_BACKGROUND:
        return Mode(False, "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND is False")
    if celery_eager():
        return Mode(False, "Celery runs tasks eagerly (task_always_eager), so a transfer runs within save()")
    if uwsgi_without_threads():
        return Mode(
            False,
            "this process runs under uWSGI without --enable-threads, where a thread the application "
            "starts does not run",
        )
    if hasattr(settings, "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND"):
        return Mode(True, "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND is True")
    return Mode(True, "the default")


def in_background() -> bool:
    """:func:`mode`'s decision without its reason, as every save asks it."""
    return conf.PUBLISH_IN_BACKGROUND and not celery_eager() and not uwsgi_without_threads()


class _Eager:
    """Celery's ``task_always_eager``, read again only when its sources may have changed.

    Reading it walks Celery's layers of configuration (the project's Django
    settings among them), which costs a save more than the rest of its
    publish.  The value can change only through the app's ``conf`` (its
    ``changes`` map: ``app.conf.x = ...``, ``update()``), a new configuration
    (``config_from_object()``), another current app, or Django's settings as
    ``override_settings`` changes them (``setting_changed``); each of those
    makes the next call read it again.
    """

    def __init__(self) -> None:
        # (app, its conf, a copy of conf.changes, settings generation, value): one
        # tuple, so a thread never pairs one call's key with another's value.
        self._read: tuple[Any, Any, dict[str, Any], int, bool] | None = None
        self._settings = 0

    def settings_changed(self, **kwargs: Any) -> None:
        self._settings += 1

    def __call__(self) -> bool:
        from celery import current_app

        app = cast(Any, current_app)._get_current_object()  # the app itself, not its proxy
        config = app.conf
        if type(config.changes) is not dict:  # not loaded yet: reading it loads it
            return bool(config.task_always_eager)
        read = self._read
        if (
            read is None
            or read[0] is not app
            or read[1] is not config
            or read[3] != self._settings
            or read[2] != config.changes
        ):
            generation = self._settings
            read = (app, config, dict(config.changes), generation, bool(config.task_always_eager))
            self._read = read
        return read[4]


celery_eager = _Eager()
setting_changed.connect(celery_eager.settings_changed, dispatch_uid="queued_storage.publishing.eager")


def _truthy(value: Any) -> bool:
    """A uWSGI option's value as given on the command line or in an ini file (``true``, ``1``, ``4``)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    if isinstance(value, list):  # an option given more than once
        return any(_truthy(v) for v in value)
    return bool(value)


@functools.cache
def uwsgi_without_threads() -> bool:
    """Whether this process runs under uWSGI with Python threads off (no ``--enable-threads``).

    uWSGI runs a thread the application starts only with ``--enable-threads``,
    or ``--threads``, which implies it.  The options are fixed for the
    process's life: asked once.
    """
    try:
        import uwsgi  # only inside uWSGI
    except ImportError:
        return False
    options = getattr(uwsgi, "opt", None) or {}
    if _truthy(options.get("enable-threads")) or _truthy(options.get("threads")):
        return False
    logger.warning(
        "queued_storage: uWSGI runs without --enable-threads, so this process sends transfer "
        "messages inline and each save waits for the broker. Start uWSGI with --enable-threads "
        "to send them from a background thread."
    )
    return True


def publish(
    storage: QueuedStorage, name: str, version: str, host: str | None, size: int | None = None
) -> None:
    """Send the transfer message of a committed save, as :func:`mode` says."""
    if not celery_configured():  # enqueue() logs what to do; the record waits for the sweeper
        enqueue(storage, name, version, host)
        return
    if in_background():
        _publisher.submit((storage, name, version, host, size))
    else:
        enqueue(storage, name, version, host)


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Wait for messages still in this process's background publisher; False on timeout."""
    return _publisher.flush(timeout)
