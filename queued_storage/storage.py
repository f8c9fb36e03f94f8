"""The storage: a proxy that writes locally and reads wherever the file lives."""

from __future__ import annotations

import contextvars
import os
from datetime import datetime
from functools import lru_cache, partial
from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.core.files.utils import validate_file_name
from django.db import IntegrityError, router, transaction
from django.utils.deconstruct import deconstructible
from django.utils.encoding import filepath_to_uri
from django.utils.functional import SimpleLazyObject
from django.utils.module_loading import import_string

from . import identity, mirror, transitions
from .conf import conf
from .models import FileRecord, State
from .signals import transfer_requested
from .transitions import FileStatus

DEFAULT_TASK = "queued_storage.tasks.Transfer"

OPTIONS = (
    "local",
    "remote",
    "local_options",
    "remote_options",
    "cache_prefix",
    "delayed",
    "task",
    "delete_local",
    "serve_url",
)

# True inside QueuedStorage.save(), where the record's INSERT checks the name.
_saving: contextvars.ContextVar[bool] = contextvars.ContextVar("queued_storage_saving", default=False)


def _resolve_spec(option: str, spec: str) -> Any:
    """Import a dotted class path, or accept an alias of ``settings.STORAGES``."""
    if spec in getattr(settings, "STORAGES", {}):
        return spec
    try:
        return import_string(spec)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"QueuedStorage option {option}={spec!r} is neither an alias in settings.STORAGES "
            f"nor an importable class: {exc}"
        ) from exc


@deconstructible(path="queued_storage.QueuedStorage")
class QueuedStorage(Storage):
    """Saves to ``local`` at once and moves each file to ``remote`` in a Celery task.

    As in django-queued-storage 0.8, a subclass may preset any option as a class
    attribute; such a subclass needs no arguments, so a library that rebuilds a
    storage from its class path gets the same storage.  After construction
    ``local`` and ``remote`` are the storage instances (the local one built on
    first use, the remote one at once for the identity; both reused, with
    their connections).
    """

    local: Any = None
    remote: Any = None
    local_options: dict[str, Any] | None = None
    remote_options: dict[str, Any] | None = None
    cache_prefix: str | None = None
    delayed: bool = False
    task: str = DEFAULT_TASK
    delete_local: bool = False
    serve_url: str | None = None

    def __init__(
        self,
        local: str | None = None,
        remote: str | None = None,
        local_options: dict[str, Any] | None = None,
        remote_options: dict[str, Any] | None = None,
        cache_prefix: str | None = None,
        delayed: bool | None = None,
        task: str | None = None,
        delete_local: bool | None = None,
        serve_url: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown QueuedStorage option(s) {', '.join(map(repr, sorted(unknown)))}; "
                f"valid options are {', '.join(OPTIONS)}."
            )
        cls = type(self)
        self.local_path: str = local or cls.local or ""
        self.remote_path: str = remote or cls.remote or ""
        self.local_options = dict(local_options or cls.local_options or {})
        self.remote_options = dict(remote_options or cls.remote_options or {})
        self.cache_prefix = cache_prefix if cache_prefix is not None else cls.cache_prefix
        self.delayed = cls.delayed if delayed is None else bool(delayed)
        self.task = task or cls.task
        self.delete_local = cls.delete_local if delete_local is None else bool(delete_local)
        self.serve_url = serve_url if serve_url is not None else cls.serve_url
        if self.serve_url is not None and not str(self.serve_url).endswith("/"):
            raise ImproperlyConfigured(
                f"QueuedStorage option serve_url={self.serve_url!r} must end with a slash, "
                "like the prefix you include queued_storage.urls under (e.g. '/files/')."
            )

        for option in ("local", "remote"):
            path = getattr(self, f"{option}_path")
            if not isinstance(path, str) or not path:
                raise self._missing(option)
        self._local_cls = _resolve_spec("local", self.local_path)
        self._remote_cls = _resolve_spec("remote", self.remote_path)
        self._connect()
        self.identity = identity.of(
            local=self.local_path,
            remote=self.remote_path,
            local_options=self.local_options,
            remote_options=self.remote_options,
            cache_prefix=self.cache_prefix,
            # The remote as it resolves its settings now; built here, it makes no request.
            remote_where=identity.where(self.remote),
        )

    def _missing(self, option: str) -> ImproperlyConfigured:
        name = type(self).__name__
        message = (
            f"{name} has no {option!r} storage: give it a dotted storage class path such as "
            "'django.core.files.storage.FileSystemStorage', or the alias of a STORAGES entry."
        )
        if getattr(self, "_given", None) == ((), {}):
            message += (
                f" This {name} was built without arguments, as a library that keeps a storage by its "
                "class path rebuilds it (sorl-thumbnail does, for a field's storage), so its options "
                "were lost. Subclass QueuedStorage with local, remote and their options as class "
                "attributes and give the field storage=YourSubclass(): the subclass is rebuilt whole "
                "from its path. Where the library takes a STORAGES alias instead, declare the storage "
                "in STORAGES and give it the alias."
            )
        return ImproperlyConfigured(message)

    # -- migrations

    @property
    def _constructor_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments ``deconstruct()`` writes into a migration: as given, secrets left out."""
        args, kwargs = self._given
        return identity.public(args), identity.public(kwargs)

    @_constructor_args.setter
    def _constructor_args(self, given: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        # Set by @deconstructible for every instance, subclasses included.
        self._given = given

    # -- the two storages, built on first use and reused (with their connections)

    def _connect(self) -> None:
        self.local = SimpleLazyObject(
            partial(self._build, self._local_cls, self.local_options or {}, "local")
        )
        self.remote = SimpleLazyObject(self._build_remote)

    def _build_remote(self) -> Storage:
        remote = self._build(self._remote_cls, self.remote_options or {}, "remote")
        config = getattr(remote, "client_config", None)
        if config is not None and not conf.S3_REQUEST_CHECKSUMS:
            from botocore.config import Config

            # Only when the operation requires one, as before boto3 1.36.
            remote.client_config = config.merge(  # type: ignore[attr-defined]
                Config(
                    request_checksum_calculation="when_required", response_checksum_validation="when_required"
                )
            )
        return remote

    def _build(self, cls: Any, options: dict[str, Any], option: str) -> Storage:
        if isinstance(cls, str):
            if options:
                raise ImproperlyConfigured(
                    f"QueuedStorage {option}={cls!r} names a STORAGES alias; set its options "
                    f"in STORAGES[{cls!r}]['OPTIONS'] instead of {option}_options."
                )
            return storages[cls]
        return cls(**options)  # type: ignore[no-any-return]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["local"], state["remote"]  # rebuilt lazily; connections do not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._connect()

    # -- routing

    def get_cache_key(self, name: str) -> str:
        return mirror.cache_key(self.identity, name)

    def check_name(self, name: str) -> str:
        """``name`` normalised, or SuspiciousFileOperation for traversal, absolute paths and NUL bytes."""
        return _checked_name(str(name))

    def locate(self, name: str) -> str:
        """The file's state; a file unknown to the app is looked up once and recorded.

        Only for the storage API, whose names come from the application (a
        file field's value), so a name without a record is a file saved before
        the app was installed, as under django-queued-storage 0.8.  The serving
        view, whose names come from requests, reads ``mirror.cached_state()``
        and never records anything.
        """
        state = mirror.cached_state(self.identity, name)
        if state is None:
            # Remote first: a file moved by another tool (or by 0.8) is remote
            # even if a stale local copy remains.
            on_remote = self.remote.exists(name)
            on_local = not on_remote and self.local.exists(name)
            size = None
            if on_local or on_remote:
                size = (self.local if on_local else self.remote).size(name)
            state = transitions.remember_unknown(
                self.identity, name, on_remote=on_remote, on_local=on_local, size=size
            )
        return state

    def get_storage(self, name: str) -> Storage:
        """The storage that holds ``name`` now."""
        storage: Storage = self.remote if self.locate(self.check_name(name)) == State.REMOTE else self.local
        return storage

    def using_local(self, name: str) -> bool:
        return self.get_storage(name) is self.local

    def using_remote(self, name: str) -> bool:
        return self.get_storage(name) is self.remote

    # -- writing

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        token = _saving.set(True)
        try:
            return str(super().save(name, content, max_length=max_length))
        finally:
            _saving.reset(token)

    def is_name_available(self, name: str, max_length: int | None = None) -> bool:
        if not _saving.get():
            return bool(super().is_name_available(name, max_length=max_length))
        # Within save() only the local disk is asked: the INSERT of the record
        # in _save() is the check against every recorded name (a SELECT less).
        name = self.check_name(name)
        return not (max_length and len(name) > max_length) and not self.local.exists(name)

    def _save(self, name: str, content: Any) -> str:
        size = getattr(content, "size", None)
        for _ in range(10):
            stored = ""
            try:
                # A savepoint, so a lost race does not break the caller's transaction.
                with transaction.atomic(using=router.db_for_write(FileRecord)):
                    # The record first: it reserves the name before any byte is written.
                    record = transitions.record_saved(self.identity, name, size)
                    stored = self._write_local(name, content)
                    if stored != name:  # a local file of that name appeared meanwhile
                        record = transitions.rename(record, stored)
            except IntegrityError:
                # The name is recorded already (a remote-only file, or another
                # process won the race): nothing of ours was kept, try another.
                if stored:
                    self.local.delete(stored)
                content.seek(0)
                token = _saving.set(False)
                try:
                    name = self.get_available_name(name)
                finally:
                    _saving.reset(token)
                continue
            # The cache is left alone: the only entry a name without a row can
            # have is "absent" (a delete clears its entry before dropping the
            # row), and a reader checks a cached "absent" against the row.
            if not self.delayed:
                self._queue(stored, record.version, record.host, size)
            return stored
        raise SuspiciousFileOperation(f"Could not find a free name for {name!r} after 10 tries.")

    def _write_local(self, name: str, content: Any) -> str:
        """Write ``content`` locally under ``name``, or under another free name if it was taken meanwhile."""
        local: Any = self.local
        plain = local.__class__ is FileSystemStorage  # a name, not a narrowing: the stubs lack _save()
        if plain:
            # Its _save() creates the file exclusively and takes another name
            # itself if one appeared (or, with allow_overwrite, replaces it, as
            # its save() would): save() would only repeat the availability
            # check get_available_name() has just made.
            return str(local._save(name, content))
        return str(local.save(name, content))

    def _queue(self, name: str, version: str, host: str, size: int | None) -> None:
        """Ask for the transfer of ``name`` once the transaction commits (the queue listens)."""
        transaction.on_commit(
            partial(
                transfer_requested.send,
                sender=QueuedStorage,
                storage=self,
                name=name,
                version=version,
                host=host,
                size=size,
            ),
            using=router.db_for_write(FileRecord),
        )

    def transfer(self, name: str) -> bool:
        """Queue the copy of ``name`` now (after the transaction commits); False if already remote."""
        name = self.check_name(name)
        self.locate(name)
        record = transitions.requeue(self.identity, name)
        if record is None:
            raise FileNotFoundError(f"{name!r} is not in this storage.")
        if record.state == State.REMOTE:
            return False
        self._queue(name, record.version, record.host, record.size)
        return True

    def delete(self, name: str) -> None:
        """Delete ``name`` from both storages, and then its record.

        The record is marked deleted first (a tombstone: reads find nothing,
        the name stays taken), then the local and the remote copy go, then
        the record.  If removing a copy fails the error is raised, as Django's
        storages do, and the tombstone stays: the sweeper (``queued_storage
        requeue``) finishes it, or call ``delete()`` again.
        """
        name = self.check_name(name)
        tombstone = transitions.forget(self.identity, name)
        if tombstone is None:  # a file the app never recorded: whatever copy exists goes
            self.local.delete(name)
            self.remote.delete(name)
        elif tombstone.lease is None:
            # The worker copying it removes its remote copy and the record.
            self.local.delete(name)
        else:
            self._finish_delete(name, tombstone.record.version, tombstone.lease, remote=tombstone.had_remote)

    def _finish_delete(self, name: str, version: str, lease: datetime | None, *, remote: bool = True) -> None:
        """Remove the copies of a tombstone this caller holds the ``lease`` on, then its record.

        On failure the lease is given back, the error recorded on the
        tombstone and raised: the next sweeper run tries again.
        """
        try:
            self.local.delete(name)
            if remote:
                self.remote.delete(name)
        except Exception as exc:
            transitions.release_tombstone(
                self.identity, name, version, error=f"{type(exc).__name__}: {exc}", lease=lease
            )
            raise
        transitions.discard(self.identity, name, version)

    # -- reading

    def _open(self, name: str, mode: str = "rb") -> Any:
        return self.get_storage(name).open(name, mode)

    def exists(self, name: str) -> bool:
        """Whether ``name`` is taken: recorded in any state, or present locally.

        Never asks the remote storage, so ``save()`` costs no remote request.
        """
        name = self.check_name(name)
        return transitions.name_taken(self.identity, name) or self.local.exists(name)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        dirs, files = self.local.listdir(path)
        try:
            rdirs, rfiles = self.remote.listdir(path)
        except FileNotFoundError:
            rdirs, rfiles = [], []
        return sorted(set(dirs) | set(rdirs)), sorted(set(files) | set(rfiles))

    def size(self, name: str) -> int:
        return self.get_storage(name).size(name)

    def url(self, name: str | None) -> str:
        """The backend's URL of where the file is now, or the stable URL with ``serve_url``."""
        if name is None:
            local_url: str = self.local.url(name)
            return local_url
        if self.serve_url is not None:
            # Stays right when the file moves, so it may be cached in pages and CDNs.
            return urljoin(self.serve_url, filepath_to_uri(self.check_name(name)).lstrip("/"))
        url: str = self.get_storage(name).url(name)
        return url

    def path(self, name: str) -> str:
        return self.get_storage(name).path(name)

    def get_valid_name(self, name: str) -> str:
        valid: str = self.local.get_valid_name(name)
        return valid

    def generate_filename(self, filename: str | os.PathLike[str]) -> str:
        generated: str = self.local.generate_filename(filename)
        return generated

    def get_accessed_time(self, name: str) -> datetime:
        return self.get_storage(name).get_accessed_time(name)

    def get_created_time(self, name: str) -> datetime:
        return self.get_storage(name).get_created_time(name)

    def get_modified_time(self, name: str) -> datetime:
        return self.get_storage(name).get_modified_time(name)

    # -- state

    def status(self, name: str) -> FileStatus:
        """Where ``name`` is and how its transfer goes."""
        name = self.check_name(name)
        record = transitions.get(self.identity, name)
        if record is None and self.locate(name) != mirror.ABSENT:
            record = transitions.get(self.identity, name)  # unknown until now: recorded by locate()
        if record is None or record.state == State.DELETED:
            raise FileNotFoundError(f"{name!r} is not in this storage.")
        return FileStatus.of(record)

    def __repr__(self) -> str:
        key = getattr(self, "identity", "(not built)")
        return f"<{type(self).__name__} {key}: {self.local_path} -> {self.remote_path}>"


QueuedRemoteStorage = QueuedStorage


@lru_cache(maxsize=4096)
def _checked_name(name: str) -> str:
    """:meth:`QueuedStorage.check_name`, kept for the names a page reads over and over.

    A pure function of the name; a name it refuses raises each time (an
    exception is never cached).
    """
    name = name.replace("\\", "/")
    if "\x00" in name:
        raise SuspiciousFileOperation(f"File name {name!r} contains a NUL byte; remove it.")
    validate_file_name(name, allow_relative_path=True)
    return name
