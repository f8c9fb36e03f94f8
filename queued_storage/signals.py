"""Signals sent by the transfer task."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent once a file's remote copy is verified and reads switched to it.
#: Arguments: ``name``, ``local``, ``remote`` (the two storage instances).
file_transferred = Signal()

#: Sent once a transfer has failed for good (retries exhausted or a permanent error).
#: Arguments: ``name``, ``local``, ``remote``, ``error`` (the exception).
transfer_failed = Signal()
