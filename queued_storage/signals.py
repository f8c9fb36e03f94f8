"""Signals: what the transfer task reports, and what the storage asks of the queue."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent once a file's remote copy is verified and reads switched to it.
#: Arguments: ``name``, ``local``, ``remote`` (the two storage instances).
file_transferred = Signal()

#: Sent once a transfer has failed for good (retries exhausted or a permanent error).
#: Arguments: ``name``, ``local``, ``remote``, ``error`` (the exception).
transfer_failed = Signal()

#: Sent by a queued storage, after the transaction commits, for each file it
#: wants transferred (saved, or ``transfer()`` called); the queue listens.
#: Arguments: ``storage``, ``name``, ``version``, ``host``, ``size``.
transfer_requested = Signal()
