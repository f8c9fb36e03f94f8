"""Locks that one process at a time holds across every host: a row taken by a conditional ``UPDATE``.

A lock is held under a lease, like a file being copied: the holder renews it
(:func:`keep`) while it works, and a holder that dies lets it lapse, so the
next process takes it over.  Each step is one conditional ``UPDATE``, or the
insert of the missing row, so two processes can never both win it, on SQLite
and PostgreSQL alike.  Releasing may keep the lock closed until a given time:
the next turn of a periodic job.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, router, transaction
from django.db.models import Q
from django.utils import timezone

from .models import Lock


def _now() -> datetime:
    return timezone.now()


@dataclass
class Held:
    """A lock this process took: its name, the token that proves it, when it was taken."""

    name: str
    holder: str
    taken_at: datetime
    lease: float
    renewed: float = field(default_factory=time.monotonic)


def take(name: str, lease: float) -> Held | None:
    """The lock ``name`` for ``lease`` seconds, or None while another holds it or its next turn is not due."""
    now = _now()
    holder = secrets.token_hex(16)
    until = now + timedelta(seconds=lease)
    free = Q(until__isnull=True) | Q(until__lt=now)
    if not Lock.objects.filter(free, name=name).update(holder=holder, until=until):
        if Lock.objects.filter(name=name).exists():
            return None
        try:
            with transaction.atomic(using=router.db_for_write(Lock)):
                Lock.objects.create(name=name, holder=holder, until=until)
        except IntegrityError:  # another process inserted it first: that one holds it
            return None
    return Held(name, holder, now, lease)


def keep(held: Held) -> bool:
    """Renew ``held`` once a third of its lease has passed; False when another process has taken it.

    Call it between the steps of the work: the lock excludes others only
    while no step takes longer than two thirds of the lease.
    """
    if time.monotonic() - held.renewed < held.lease / 3:
        return True
    until = _now() + timedelta(seconds=held.lease)
    # The token still there means nobody took the lock, even if the lease lapsed meanwhile.
    kept = Lock.objects.filter(name=held.name, holder=held.holder).update(until=until)
    held.renewed = time.monotonic()
    return bool(kept)


def release(held: Held, *, closed_until: datetime | None = None) -> bool:
    """Give ``held`` back, free at once or from ``closed_until``; False when it was no longer held."""
    return bool(Lock.objects.filter(name=held.name, holder=held.holder).update(holder="", until=closed_until))
