"""Settings of queued_storage, read lazily so ``override_settings`` always works."""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_DEFAULTS: dict[str, Any] = {
    "QUEUED_STORAGE_CACHE": "default",
    "QUEUED_STORAGE_CACHE_PREFIX": "queued_storage",
    "QUEUED_STORAGE_CACHE_TIMEOUT": 24 * 3600,
    "QUEUED_STORAGE_RETRIES": 5,
    "QUEUED_STORAGE_RETRY_DELAY": 60,
    "QUEUED_STORAGE_RETRY_BACKOFF_MAX": 3600,
    "QUEUED_STORAGE_QUEUE": None,
    "QUEUED_STORAGE_LEASE": 60,
    "QUEUED_STORAGE_HOST": None,
    "QUEUED_STORAGE_HOST_QUEUE": None,
    "QUEUED_STORAGE_SERVE_PERMISSION": None,
    "QUEUED_STORAGE_S3_REQUEST_CHECKSUMS": True,
    "QUEUED_STORAGE_PUBLISH_IN_BACKGROUND": False,
    "QUEUED_STORAGE_BATCH_FILES": 10,
}


def default(name: str) -> Any:
    """The value a ``QUEUED_STORAGE_*`` setting has when the project does not set it."""
    return _DEFAULTS[name]


class Settings:
    """Typed accessors for the ``QUEUED_STORAGE_*`` settings."""

    def _get(self, name: str) -> Any:
        return getattr(settings, name, _DEFAULTS[name])

    def _positive(self, name: str, *, allow_zero: bool = False) -> float:
        value = self._get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            raise ImproperlyConfigured(
                f"{name} must be a positive number of seconds or a count, got {value!r}."
            )
        return value  # type: ignore[no-any-return]

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
        return int(self._positive("QUEUED_STORAGE_RETRIES", allow_zero=True))

    @property
    def RETRY_DELAY(self) -> float:
        """Base of the exponential backoff between retries, in seconds."""
        return self._positive("QUEUED_STORAGE_RETRY_DELAY")

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        """Upper bound of one backoff interval, in seconds."""
        return self._positive("QUEUED_STORAGE_RETRY_BACKOFF_MAX")

    @property
    def QUEUE(self) -> str | None:
        """Celery queue of the transfer task; ``None`` means Celery's default queue."""
        value = self._get("QUEUED_STORAGE_QUEUE")
        return None if value is None else str(value)

    @property
    def LEASE(self) -> float:
        """Seconds a worker owns a file it copies; renewed while the copy progresses."""
        return self._positive("QUEUED_STORAGE_LEASE")

    @property
    def HOST(self) -> str:
        """Name of this host, recorded with each file saved here."""
        return str(self._get("QUEUED_STORAGE_HOST") or socket.gethostname())

    @property
    def HOST_QUEUE(self) -> str | None:
        """Queue name pattern with ``{host}``: transfers go to the queue of the file's host."""
        value = self._get("QUEUED_STORAGE_HOST_QUEUE")
        if value is None:
            return None
        if not isinstance(value, str) or "{host}" not in value:
            raise ImproperlyConfigured(
                f"QUEUED_STORAGE_HOST_QUEUE must be a queue name containing '{{host}}', such as "
                f"'transfers.{{host}}', or None; got {value!r}."
            )
        return value

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
        """Whether a commit hands transfer messages to a background thread instead of sending them."""
        return bool(self._get("QUEUED_STORAGE_PUBLISH_IN_BACKGROUND"))

    @property
    def BATCH_FILES(self) -> int:
        """Most small files in one transfer message (background publishing, the sweeper); 1: one each."""
        value = self._get("QUEUED_STORAGE_BATCH_FILES")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImproperlyConfigured(
                f"QUEUED_STORAGE_BATCH_FILES must be a whole number of files, 1 or more (1 sends each "
                f"file in a message of its own); got {value!r}."
            )
        return value


conf = Settings()
