"""Settings of queued_storage, read lazily so ``override_settings`` always works.

Reading a setting never raises: a value out of its range reads as the
default, and the system check ``queued_storage.E007`` (and a worker at its
start) names it with what a valid value is.  Validation lives in
:func:`problems`, the one place that knows each range.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.functional import empty

# Not a setting: files up to this size travel several to a message, and a
# worker takes more of them from the table after its message's own.  Only
# small files: a long copy never holds others back.
SMALL_FILE = 1024 * 1024


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


@dataclass(frozen=True)
class _Setting:
    default: Any
    valid: Callable[[Any], bool]
    expected: str  # what a valid value is, for the error message


_SETTINGS: dict[str, _Setting] = {
    "QUEUED_STORAGE_CACHE": _Setting("default", _text, "the alias of a cache in CACHES"),
    "QUEUED_STORAGE_CACHE_PREFIX": _Setting("queued_storage", _text, "a non-empty string"),
    "QUEUED_STORAGE_CACHE_TIMEOUT": _Setting(
        24 * 3600,
        _optional(_positive),
        "a positive number of seconds, or None to keep entries until the cache evicts them",
    ),
    "QUEUED_STORAGE_RETRIES": _Setting(
        5,
        lambda v: _whole(v) and v >= 0,
        "a whole number, 0 or more (0: a transfer is failed at its first error)",
    ),
    "QUEUED_STORAGE_RETRY_DELAY": _Setting(
        60, lambda v: _number(v) and v > 0, "a positive number of seconds"
    ),
    "QUEUED_STORAGE_RETRY_BACKOFF_MAX": _Setting(
        3600, lambda v: _number(v) and v > 0, "a positive number of seconds"
    ),
    "QUEUED_STORAGE_QUEUE": _Setting(None, _optional(_text), "a queue name, or None for the default queue"),
    "QUEUED_STORAGE_LEASE": _Setting(60, _positive, "a positive number of seconds"),
    "QUEUED_STORAGE_HOST": _Setting(None, _optional(_text), "a host name, or None for this machine's"),
    "QUEUED_STORAGE_HOST_QUEUE": _Setting(
        None,
        _optional(lambda v: _text(v) and "{host}" in v),
        "a queue name containing '{host}', such as 'transfers.{host}', or None",
    ),
    "QUEUED_STORAGE_SERVE_PERMISSION": _Setting(
        None, _optional(_text), "the dotted path of a callable(request, name) -> bool, or None"
    ),
    "QUEUED_STORAGE_S3_REQUEST_CHECKSUMS": _Setting(True, lambda v: isinstance(v, bool), "True or False"),
    "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND": _Setting(
        True,
        lambda v: isinstance(v, bool),
        "True (send transfer messages from a background thread where one can run) or False (inline)",
    ),
    "QUEUED_STORAGE_BATCH_FILES": _Setting(
        10,
        lambda v: _whole(v) and v >= 1,
        "a whole number of files, 1 or more (1 sends each file in a message of its own)",
    ),
    "QUEUED_STORAGE_SWEEP_INTERVAL": _Setting(
        60,
        _optional(lambda v: _number(v) and v >= 0),
        "a positive number of seconds, or 0 or None to leave sweeping to `manage.py queued_storage requeue`",
    ),
    "QUEUED_STORAGE_QUEUE_BACKEND": _Setting(
        None,
        _optional(lambda v: v in ("celery", "tasks")),
        "'celery', 'tasks' (Django's Tasks framework), or None to take the one the project configures",
    ),
    "QUEUED_STORAGE_TASKS_BACKEND": _Setting("default", _text, "the alias of a backend in TASKS"),
}


def default(name: str) -> Any:
    """The value a ``QUEUED_STORAGE_*`` setting has when the project does not set it."""
    return _SETTINGS[name].default


def problems() -> list[str]:
    """What is wrong with each ``QUEUED_STORAGE_*`` setting the project sets out of its range."""
    found = []
    for name, spec in _SETTINGS.items():
        if hasattr(settings, name) and not spec.valid(value := getattr(settings, name)):
            found.append(
                f"{name} must be {spec.expected}; got {value!r}. Until it is fixed, "
                f"the default {spec.default!r} applies."
            )
    return found


# The valid value of each setting read so far, with the settings object it
# was read from.  Every read of a file's location reads two settings, and
# Django answers an unset one by raising AttributeError inside; the values
# are read anew whenever ``override_settings`` (and pytest-django's
# ``settings``) puts other settings in place, as Django does not support
# changing settings otherwise at run time.
_read: dict[str, tuple[object, Any]] = {}


class Settings:
    """Typed accessors for the ``QUEUED_STORAGE_*`` settings; each returns a valid value."""

    def _get(self, name: str) -> Any:
        holder = settings._wrapped  # type: ignore[misc]  # LazySettings, typed as what it wraps
        known = _read.get(name)
        if known is not None and known[0] is holder:
            return known[1]
        spec = _SETTINGS[name]
        value = getattr(settings, name, spec.default)
        value = value if spec.valid(value) else spec.default
        if holder is not empty:
            _read[name] = (holder, value)
        return value

    @property
    def CACHE(self) -> str:
        """Alias in ``settings.CACHES`` that mirrors file locations."""
        return str(self._get("QUEUED_STORAGE_CACHE"))

    @property
    def CACHE_PREFIX(self) -> str:
        """Prefix of every cache key this app writes."""
        return str(self._get("QUEUED_STORAGE_CACHE_PREFIX"))

    @property
    def CACHE_TIMEOUT(self) -> int | None:
        """Seconds a location stays in the cache; the database remains the truth."""
        value = self._get("QUEUED_STORAGE_CACHE_TIMEOUT")
        return None if value is None else int(value)

    @property
    def RETRIES(self) -> int:
        """How many times a failed transfer is retried before it is ``failed``."""
        return int(self._get("QUEUED_STORAGE_RETRIES"))

    @property
    def RETRY_DELAY(self) -> float:
        """Base of the exponential backoff between retries, in seconds."""
        return float(self._get("QUEUED_STORAGE_RETRY_DELAY"))

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        """Upper bound of one backoff interval, in seconds."""
        return float(self._get("QUEUED_STORAGE_RETRY_BACKOFF_MAX"))

    @property
    def QUEUE(self) -> str | None:
        """Queue of the transfer task; ``None`` means the queue system's default queue."""
        value = self._get("QUEUED_STORAGE_QUEUE")
        return None if value is None else str(value)

    @property
    def LEASE(self) -> float:
        """Seconds a worker owns a file it copies; renewed while the copy progresses."""
        return float(self._get("QUEUED_STORAGE_LEASE"))

    @property
    def HOST(self) -> str:
        """Name of this host, recorded with each file saved here."""
        return str(self._get("QUEUED_STORAGE_HOST") or socket.gethostname())

    @property
    def HOST_QUEUE(self) -> str | None:
        """Queue name pattern with ``{host}``: transfers go to the queue of the file's host."""
        value = self._get("QUEUED_STORAGE_HOST_QUEUE")
        return None if value is None else str(value)

    @property
    def SERVE_PERMISSION(self) -> str | None:
        """Dotted path of ``callable(request, name) -> bool`` guarding the serving view."""
        value = self._get("QUEUED_STORAGE_SERVE_PERMISSION")
        return None if value is None else str(value)

    @property
    def S3_REQUEST_CHECKSUMS(self) -> bool:
        """Whether boto3 sends CRC checksums with uploads; some S3-compatible servers reject them."""
        return bool(self._get("QUEUED_STORAGE_S3_REQUEST_CHECKSUMS"))

    @property
    def PUBLISH_IN_BACKGROUND(self) -> bool:
        """Whether a commit hands transfer messages to a background thread (where one can run)."""
        return bool(self._get("QUEUED_STORAGE_PUBLISH_IN_BACKGROUND"))

    @property
    def BATCH_FILES(self) -> int:
        """Most small files in one transfer message (background publishing, the sweeper); 1: one each."""
        return int(self._get("QUEUED_STORAGE_BATCH_FILES"))

    @property
    def SWEEP_INTERVAL(self) -> float | None:
        """Seconds between the sweeps of the workers, one at a time across all; ``None``: no sweeps."""
        value = self._get("QUEUED_STORAGE_SWEEP_INTERVAL")
        return float(value) if value else None

    @property
    def QUEUE_BACKEND(self) -> str | None:
        """``"celery"`` or ``"tasks"`` (Django's Tasks framework); ``None``: the one configured."""
        value = self._get("QUEUED_STORAGE_QUEUE_BACKEND")
        return None if value is None else str(value)

    @property
    def TASKS_BACKEND(self) -> str:
        """Alias in ``settings.TASKS`` of the backend that carries transfers (Django Tasks)."""
        return str(self._get("QUEUED_STORAGE_TASKS_BACKEND"))


conf = Settings()
