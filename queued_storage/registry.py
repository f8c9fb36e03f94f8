"""Every queued storage of the project, found by identity or by label.

A transfer message names its storage by identity; the worker finds the storage
here, built from its own settings.  The project declares storages in two
places, ``settings.STORAGES`` and the ``storage`` of model fields; both are
scanned on first use.  A storage built anywhere else is unknown to other
processes, and known to this one only through :func:`register`.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.core.files.storage import storages
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .storage import QueuedStorage

# Storages registered by hand (tests, scripts): only this process knows them.
_registered: dict[str, QueuedStorage] = {}


def register(storage: QueuedStorage) -> None:
    """Make a storage built outside ``STORAGES`` and model fields known to this process."""
    _registered.setdefault(storage.identity, storage)


def registered() -> list[tuple[str, QueuedStorage]]:
    """``(identity, storage)`` for each storage given to :func:`register`."""
    return list(_registered.items())


def unregister_all() -> None:
    """Forget the storages given to :func:`register`."""
    _registered.clear()


@functools.cache
def everything() -> list[tuple[str, QueuedStorage]]:
    """``(label, storage)`` for every queued storage declared, duplicates included.

    The label is the ``STORAGES`` alias, or ``app_label.Model.field`` for a
    storage declared on a model field.
    """
    from django.apps import apps

    found: list[tuple[str, QueuedStorage]] = []
    for alias, spec in getattr(settings, "STORAGES", {}).items():
        try:
            cls = import_string(spec.get("BACKEND", ""))
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, QueuedStorage):
            built = storages[alias]
            if isinstance(built, QueuedStorage):
                found.append((alias, built))
    for model in apps.get_models():
        for field in model._meta.get_fields():
            on_field = getattr(field, "storage", None)
            if isinstance(on_field, QueuedStorage):
                found.append((f"{model._meta.label}.{field.name}", on_field))
    return found


def declared() -> dict[str, QueuedStorage]:
    """Every declared queued storage once, by label; one declared both ways keeps its alias."""
    found: dict[str, QueuedStorage] = {}
    seen: set[str] = set()
    for label, storage in everything():
        if storage.identity not in seen:
            found[label] = storage
            seen.add(storage.identity)
    return found


def conflicts() -> list[tuple[QueuedStorage, QueuedStorage]]:
    """Pairs of storages with one identity that a worker could not tell apart (task, delete_local)."""
    first: dict[str, QueuedStorage] = {}
    pairs = []
    for _, storage in [*everything(), *registered()]:
        earlier = first.setdefault(storage.identity, storage)
        if earlier is not storage and (earlier.task, earlier.delete_local) != (
            storage.task,
            storage.delete_local,
        ):
            pairs.append((earlier, storage))
    return pairs


def lookup(identity: str) -> QueuedStorage:
    """The queued storage with this identity, or LookupError saying what the worker lacks."""
    for storage in declared().values():
        if storage.identity == identity:
            return storage
    if identity in _registered:
        return _registered[identity]
    raise LookupError(
        f"No QueuedStorage with identity {identity!r} in this process. The worker must run the "
        "same settings and models as the web process: check STORAGES and that every app "
        "declaring storage=QueuedStorage(...) is in INSTALLED_APPS."
    )


def delayed() -> frozenset[str]:
    """The identities whose storage (as :func:`lookup` finds it) is ``delayed``."""
    keys = {storage.identity for _, storage in [*everything(), *registered()]}
    return frozenset(key for key in keys if lookup(key).delayed)


def by_label(label: str) -> QueuedStorage:
    """The declared queued storage called ``label`` (see :func:`declared`), or with that identity."""
    known = declared()
    if label in known:
        return known[label]
    for storage in known.values():
        if storage.identity == label:
            return storage
    raise LookupError(
        f"No queued storage called {label!r}; the declared ones are "
        f"{', '.join(sorted(known)) or 'none'} (a STORAGES alias, or app_label.Model.field)."
    )


def label_of(identity: str) -> str:
    """The label of the storage with this identity, or the identity itself if none is declared."""
    for label, storage in declared().items():
        if storage.identity == identity:
            return label
    return identity


@receiver(setting_changed)
def _forget_declared(*, setting: str, **kwargs: Any) -> None:
    # Model fields never change at run time; STORAGES may, under override_settings.
    if setting == "STORAGES":
        everything.cache_clear()
