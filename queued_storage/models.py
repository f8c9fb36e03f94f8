"""The durable record of where each file lives."""

from __future__ import annotations

from django.db import models


class State(models.TextChoices):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    REMOTE = "remote"
    FAILED = "failed"
    # Internal: a tombstone.  The file is deleted and reads find nothing, but
    # the row holds the name until whoever holds its lease (the worker that
    # copies it, the delete() call, or else the sweeper) has removed both
    # copies and then the row.  Never returned by status().
    DELETED = "deleted"


class FileRecord(models.Model):
    """One file of one queued storage; the source of truth for its location."""

    storage = models.CharField(max_length=64, help_text="Identity of the QueuedStorage.")
    name = models.CharField(max_length=1024)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # A new random token per save: a task carries it, so a message for a file
    # that was since deleted and saved again can never switch the new one.
    version = models.CharField(max_length=32)
    size = models.BigIntegerField(null=True)
    checksum = models.CharField(max_length=80, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    host = models.CharField(max_length=255, blank=True, default="")
    bytes_done = models.BigIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    transferred_at = models.DateTimeField(null=True, blank=True)
    # When a transfer message was last sent by transfer(), retry or the
    # sweeper; the sweeper sends at most one per file per threshold.  Null for
    # a save's own message, and for a delayed file never queued.
    queued_at = models.DateTimeField(null=True, blank=True)
    # When the local copy of a remote file was deleted (``delete_local``,
    # ``cleanup-local``) or found gone; null while one may remain, so
    # ``cleanup-local`` reads only the files it may still have to clean up.
    local_deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "queued file"
        constraints = [
            models.UniqueConstraint(fields=["storage", "name"], name="queued_storage_unique_name"),
        ]
        # Every query that reads many records reads them through one of these, so
        # its time grows with the rows it acts on, not with the table (the plans:
        # docs/query-plans.rst; tests/test_scale.py holds them).  The conditional
        # ones hold only the rows they are for, and cost a write nothing otherwise.
        indexes = [
            # The rows of one state in key order: the sweeper, status, the admin's state filter.
            models.Index(fields=["state", "id"], name="queued_storage_state_pk_idx"),
            # Remote files whose local copy may remain: cleanup-local.  Led by
            # state like the index above, so that SQLite, which knows no sizes,
            # sees the same columns in both and takes this, the smaller one.
            models.Index(
                fields=["state", "id"],
                condition=models.Q(state=State.REMOTE, local_deleted_at__isnull=True),
                name="queued_storage_local_idx",
            ),
            # The latest errors: status.
            models.Index(
                fields=["updated_at"], condition=~models.Q(last_error=""), name="queued_storage_error_idx"
            ),
            # The latest transfer: status.
            models.Index(
                fields=["transferred_at"],
                condition=models.Q(transferred_at__isnull=False),
                name="queued_storage_transferred_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"


class Lock(models.Model):
    """A lock one process at a time holds across every host, such as the sweep's (see ``lock.py``)."""

    name = models.CharField(max_length=64, primary_key=True)
    # A new random token per take; empty once released.
    holder = models.CharField(max_length=32, blank=True, default="")
    # While held: when the holder's lease lapses.  Once released: when the
    # next turn is due.  Free from then on.
    until = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "lock"

    def __str__(self) -> str:
        return self.name
