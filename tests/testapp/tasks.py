"""Transfer tasks written the django-queued-storage 0.8 way: override transfer()."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from queued_storage.tasks import Transfer


class PlainCopy(Transfer):
    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> bool:
        with local.open(name) as fh:
            remote.save(name, fh)
        return True


class NeverDone(Transfer):
    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> bool:
        return False


class Confused(Transfer):
    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> Any:
        return "yes"


class FailsOnBad(Transfer):
    """Copies every file except those named bad*, which it reports as not done."""

    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> Any:
        if name.startswith("bad"):
            return False
        return super().transfer(name, local, remote, **kwargs)


class Watched(Transfer):
    """Records how many copies run at once, which thread runs them and for which message."""

    running = 0
    most = 0
    threads: ClassVar[set[str]] = set()
    task_ids: ClassVar[set[str | None]] = set()
    lock = threading.Lock()

    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> Any:
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.most = max(cls.most, cls.running)
            cls.threads.add(threading.current_thread().name)
            cls.task_ids.add(self.request.id)
        try:
            time.sleep(0.02)
            return super().transfer(name, local, remote, **kwargs)
        finally:
            with cls.lock:
                cls.running -= 1
