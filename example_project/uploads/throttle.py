"""The demo's slowed reads (``DEMO_BANDWIDTH``), so the progress of a transfer can be watched."""

from __future__ import annotations

import time
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import Storage

CHUNK = 64 * 1024


class _SlowFile:
    """Reads at most ``rate`` bytes per second, in small chunks."""

    def __init__(self, raw: IO[bytes], rate: int) -> None:
        self._raw = raw
        self._rate = rate
        self._started = time.monotonic()
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(CHUNK if size is None or size < 0 else min(size, CHUNK))
        self._read += len(data)
        ahead = self._read / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            time.sleep(ahead)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _SlowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class _SlowStorage:
    """The local storage as the transfer sees it: same files, slower reads, and no ``path()``.

    Given a path, the transfer would let boto3 read the file itself, at full
    speed and past this throttle; without one it streams the file through
    ``open()``, reporting progress as it reads.  The check that the file did
    not change during the copy needs a path too, so the slowed demo skips it.
    """

    def __init__(self, storage: Storage, rate: int) -> None:
        self._storage = storage
        self._rate = rate

    def open(self, name: str, mode: str = "rb") -> _SlowFile:
        return _SlowFile(self._storage.open(name, mode), self._rate)

    def path(self, name: str) -> str:
        raise NotImplementedError("the demo's throttled storage is read through open() only")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def throttled(local: Storage) -> Any:
    """``local`` read at ``DEMO_BANDWIDTH`` bytes per second; as it is when that is 0."""
    rate = settings.DEMO_BANDWIDTH
    return _SlowStorage(local, rate) if rate > 0 else local
