"""A storage's identity: one id that every process computes alike from the configuration.

The identity names a queued storage in its records, cache keys and task
messages, and is the key under which the worker finds the storage again. It
covers the class paths, the options (secrets left out), the ``cache_prefix``
and where the remote storage puts the bytes, as that storage resolves it from
its options and the settings.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import json
import pathlib
import types
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

# Option names holding a credential, matched anywhere in the lowercased name
# (and in the keys of nested dicts): such values stay out of the identity, so
# rotating credentials keeps every record, and out of migration files.
SECRET_WORDS = ("secret", "passw", "passphrase", "token", "key", "credential", "signer", "connection_string")

# Attributes of a built storage that say where it puts the bytes: bucket or
# container, account, endpoint or host, and the prefix or directory.
# FileSystemStorage's directory is read as configured (``base_location``): its
# absolute ``location`` would depend on the working directory of the process.
WHERE = (
    "bucket_name",
    "azure_container",
    "account_name",
    "endpoint_url",
    "host",
    "root_path",
    "base_location",
    "location",
)

_MAX_DEPTH = 10


def is_secret(name: str) -> bool:
    """Whether an option called ``name`` holds a credential."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def public(value: Any) -> Any:
    """``value`` with every secret-looking key left out of the dicts in it, at any depth."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not (isinstance(k, str) and is_secret(k))}
    if isinstance(value, (list, tuple)):
        return type(value)(public(v) for v in value)
    return value


def _unstable(option: str, value: Any, why: str) -> ImproperlyConfigured:
    # The type only, never the value: the value may be anything, a credential included.
    return ImproperlyConfigured(
        f"QueuedStorage option {option} is a {type(value).__module__}.{type(value).__qualname__}, {why}; "
        "the worker must compute the same storage identity as the web process. Declare the storage "
        "with this option in STORAGES[alias]['OPTIONS'] and name the alias as 'local' or 'remote', "
        "or set it as a class attribute of a subclass of the storage class and name that subclass."
    )


def _qualified(value: Any, option: str) -> str:
    name = f"{value.__module__}.{value.__qualname__}"
    if "<lambda>" in name or "<locals>" in name:
        raise _unstable(option, value, "which cannot be named by an import path")
    return name


def canonical(value: Any, option: str, depth: int = 0) -> Any:
    """A JSON form of ``value`` that is the same in every process, or ImproperlyConfigured.

    Plain data as is (sets sorted, secret-looking keys left out); an object as
    its class path and public attributes, or its ``deconstruct()``; a
    function or class as its import path.  Never ``repr()``, which may hold
    a memory address.
    """
    if depth > _MAX_DEPTH:
        raise _unstable(option, value, "nested too deeply to be compared")
    deeper = depth + 1
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {
            str(k): canonical(v, f"{option}[{k!r}]", deeper)
            for k, v in value.items()
            if not (isinstance(k, str) and is_secret(k))
        }
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{option}[{i}]", deeper) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted(
            (canonical(v, f"{option} item", deeper) for v in value),
            key=lambda v: json.dumps(v, sort_keys=True),
        )
    if isinstance(value, enum.Enum):
        return {"enum": _qualified(type(value), option), "name": value.name}
    if isinstance(value, pathlib.PurePath):
        # As its string: a storage takes either alike, and the class's module
        # differs between Python versions (pathlib._local from 3.13 on).
        return str(value)
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, uuid.UUID)):
        return {"type": _qualified(type(value), option), "value": str(value)}
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return {"import": _qualified(value, option)}
    if type(value) is object:
        return {"object": None}  # a bare sentinel: it holds nothing to compare
    deconstruct = getattr(value, "deconstruct", None)
    if callable(deconstruct):
        path, args, kwargs = deconstruct()
        return {
            "class": path,
            "args": canonical(args, option, deeper),
            "kwargs": canonical(kwargs, option, deeper),
        }
    attributes = getattr(value, "__dict__", None)
    if not isinstance(attributes, dict):
        raise _unstable(option, value, "which keeps no attributes to compare")
    return {
        "class": _qualified(type(value), option),
        "attributes": canonical(
            {k: v for k, v in attributes.items() if not k.startswith("_")}, option, deeper
        ),
    }


def _without_password(value: Any) -> Any:
    """A URL without the password in it (an FTP location carries one)."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def where(storage: Any) -> dict[str, Any]:
    """Where ``storage`` puts the bytes, as it resolved it from its options and the settings."""
    found = {attr: _without_password(getattr(storage, attr)) for attr in WHERE if hasattr(storage, attr)}
    if "base_location" in found:
        found.pop("location", None)
    return found


def of(
    *,
    local: str,
    remote: str,
    local_options: dict[str, Any],
    remote_options: dict[str, Any],
    cache_prefix: str | None,
    remote_where: dict[str, Any],
) -> str:
    """The identity: readable class names, then a hash of the canonical configuration."""
    configuration = {
        "local": local,
        "remote": remote,
        "local_options": canonical(local_options, "local_options"),
        "remote_options": canonical(remote_options, "remote_options"),
        "cache_prefix": cache_prefix,
        "remote_where": canonical(remote_where, "remote storage's location"),
    }
    digest = hashlib.sha256(json.dumps(configuration, sort_keys=True).encode()).hexdigest()[:12]
    short = "-".join(path.rsplit(".", 1)[-1][:20] for path in (local, remote))
    return f"{short}-{digest}"
