"""Transfer tasks written the django-queued-storage 0.8 way: override transfer()."""

from __future__ import annotations

from typing import Any

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
