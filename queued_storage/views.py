"""The stable URL of a file: a redirect to the remote copy, or the local file streamed.

Mounted with ``queued_storage.urls``; the URL stays right when the file moves,
so pages and CDNs may cache it (see docs/operations.rst).
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
)
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import http_date, parse_http_date_safe
from django.utils.module_loading import import_string
from django.views.decorators.http import require_safe

from . import mirror
from .conf import conf
from .models import State
from .registry import by_label
from .storage import QueuedStorage

BLOCK_SIZE = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Slice:
    """Reads ``length`` bytes of ``file`` from its current position, then reports EOF.

    Deliberately without ``fileno()``: a server's ``wsgi.file_wrapper`` would
    otherwise send the file up to its end, past the requested range.
    """

    def __init__(self, file: IO[bytes], length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


def _storage(label: str) -> QueuedStorage:
    try:
        return by_label(label)
    except LookupError as exc:
        raise ImproperlyConfigured(f"queued_storage.urls is included with storage={label!r}: {exc}") from exc


def _guard(permission: str | None) -> str | None:
    """The dotted path of the permission check that applies, if any."""
    return permission or conf.SERVE_PERMISSION


def _allowed(request: HttpRequest, name: str, path: str | None) -> bool:
    if not path:
        return True
    try:
        check = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"QUEUED_STORAGE_SERVE_PERMISSION (or the permission of queued_storage.urls) is {path!r}, "
            f"which does not import: {exc}"
        ) from exc
    return bool(check(request, name))


def _range(header: str, size: int) -> tuple[int, int] | None:
    """The one satisfiable ``(start, end)`` (inclusive) of a ``Range`` header; ``None`` to send all.

    Raises ``ValueError`` when the range cannot be satisfied (416).  Several
    ranges, or a header we do not parse, get the whole file, as RFC 9110 allows.
    """
    match = _RANGE.match(header.replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise ValueError
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        raise ValueError
    return start, min(int(last) if last else size - 1, size - 1)


@require_safe
def serve(
    request: HttpRequest, name: str, storage: str = "default", permission: str | None = None
) -> HttpResponseBase:
    """Redirect to the remote copy of ``name``, or stream its local copy (Range and 304 aware).

    Only recorded files are served: a name without a record is 404 even if a
    file of that name lies in the local directory (dropped there, or another
    storage's file nested inside), and a request never creates a record.
    """
    qs = _storage(storage)
    name = qs.check_name(name)  # traversal, NUL bytes, absolute paths: SuspiciousFileOperation -> 400
    guard = _guard(permission)
    if not _allowed(request, name, guard):
        raise PermissionDenied
    state = mirror.cached_state(qs.identity, name)
    if state == State.REMOTE:
        return _redirect(qs, name)
    if state not in (State.PENDING, State.TRANSFERRING, State.FAILED):
        raise Http404("No such file.")
    try:
        file = qs.local.open(name, "rb")
    except FileNotFoundError:
        # Switched since the lookup, its local copy deleted (delete_local)?
        if mirror.row_state(qs.identity, name) == State.REMOTE:
            return _redirect(qs, name)
        raise Http404("No such file.") from None
    try:
        response = _local_response(request, name, file)
        if guard:
            # Allowed for this request only: no shared cache may keep it for others.
            patch_cache_control(response, private=True)
    except BaseException:
        file.close()  # no response reaches the server to close it
        raise
    return response


def _redirect(qs: QueuedStorage, name: str) -> HttpResponseBase:
    response = HttpResponseRedirect(qs.remote.url(name))
    # Signed URLs expire: the redirect itself must not be cached.
    patch_cache_control(response, no_cache=True, private=True)
    return response


def _fingerprint(name: str, file: Any) -> tuple[int, float]:
    try:
        stat = os.fstat(file.fileno())
    except (AttributeError, OSError, ValueError):
        # Not a real file (another local storage): ask the file object.
        return int(file.size), 0.0
    return stat.st_size, stat.st_mtime


def _local_response(request: HttpRequest, name: str, file: Any) -> HttpResponseBase:
    size, mtime = _fingerprint(name, file)
    etag = f'"{size:x}-{int(mtime * 1e6):x}"' if mtime else None
    last_modified = int(mtime) if mtime else None
    not_modified = get_conditional_response(request, etag=etag, last_modified=last_modified)
    if not_modified is not None:  # 304, or 412 for a failed precondition
        file.close()
        return not_modified
    headers = {"Accept-Ranges": "bytes"}
    if etag:
        headers["ETag"] = etag
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified)
    basename = os.path.basename(name)
    span = None
    header = request.headers.get("Range")
    if header and _if_range_holds(request, etag, last_modified):
        try:
            span = _range(header, size)
        except ValueError:
            file.close()
            return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if span is None:
        # FileResponse guesses the type from filename (a .gz stays application/gzip).
        response = FileResponse(file, filename=basename, headers=headers)
    else:
        start, end = span
        file.seek(start)
        response = FileResponse(
            _Slice(file, end - start + 1),
            status=206,
            filename=basename,
            headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
        )
        response["Content-Length"] = str(end - start + 1)
    response.block_size = BLOCK_SIZE
    # User uploads served from the site's own origin: never let one run as a page.
    response["Content-Security-Policy"] = "sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _if_range_holds(request: HttpRequest, etag: str | None, last_modified: int | None) -> bool:
    """Whether a ``Range`` applies: no ``If-Range``, or one naming the current version."""
    condition = request.headers.get("If-Range")
    if not condition:
        return True
    if condition.startswith(('"', "W/")):
        return etag is not None and condition == etag
    date = parse_http_date_safe(condition)
    return date is not None and last_modified is not None and date == last_modified
