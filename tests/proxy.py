"""A fault-injecting TCP proxy for HTTP/1.1 endpoints (used in front of moto S3).

Features: bandwidth limit and per-chunk latency (changeable at runtime),
``refuse()``/``accept()`` to simulate the endpoint going down and back up on
the same port, and counting of the HTTP requests that pass through it
(keep-alive aware, bodies are streamed, never buffered).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["HttpRequestCounter", "TcpProxy"]

HOST = "127.0.0.1"
_MAX_HEADER = 256 * 1024


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class _Throttle:
    """Token bucket shared by every connection of one direction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0
        self._rate: float | None = None

    def wait(self, nbytes: int, rate: float | None) -> None:
        if not rate or rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            if rate != self._rate:  # rate changed at runtime: forget the backlog
                self._rate = rate
                self._next = now
            start = max(now, self._next)
            self._next = start + nbytes / rate
            delay = self._next - now
        if delay > 0:
            time.sleep(delay)


class HttpRequestCounter:
    """Incremental HTTP/1.1 request parser for one client->server stream.

    Only framing is parsed: request line + headers, then the body is skipped
    by ``Content-Length`` or by ``Transfer-Encoding: chunked`` framing
    (aws-chunked signing lives *inside* that framing, so it needs no special
    case).  ``Expect: 100-continue`` requests whose body the server refused
    (final status instead of ``100``) are handled via :meth:`on_response`.
    """

    def __init__(
        self, record: Callable[[str, str], None], on_expect: Callable[[str, str], None] | None = None
    ) -> None:
        self._record = record
        self._on_expect = on_expect
        self._lock = threading.Lock()
        self._state = "head"
        self._buf = bytearray()
        self._remaining = 0
        self._expect_pending = False
        self.broken = False

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._expect_pending and data:
                self._expect_pending = False  # client sent the body anyway
            view = memoryview(data)
            while view and not self.broken:
                view = self._step(view)

    def on_response(self, data: bytes) -> None:
        """Called with every server->client chunk (no-op unless awaiting 100)."""
        with self._lock:
            if not self._expect_pending:
                return
            self._expect_pending = False
            if not data.startswith(b"HTTP/1.1 100") and not data.startswith(b"HTTP/1.0 100"):
                # Final response: the client will not send the body.
                self._state = "head"
                self._remaining = 0

    def _step(self, view: memoryview) -> memoryview:
        state = self._state
        if state == "body":
            n = min(self._remaining, len(view))
            self._remaining -= n
            if self._remaining == 0:
                self._state = "head"
            return view[n:]
        if state == "chunk-data":
            n = min(self._remaining, len(view))
            self._remaining -= n
            if self._remaining == 0:
                self._state = "chunk-crlf"
            return view[n:]
        # Line-oriented states: head, chunk-size, chunk-crlf, trailer.
        self._buf += view
        if state == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                self._check_size()
                return view[:0]
            consumed = end + 4
            self._on_head(bytes(self._buf[:end]))
        else:
            end = self._buf.find(b"\r\n")
            if end < 0:
                self._check_size()
                return view[:0]
            consumed = end + 2
            line = bytes(self._buf[:end])
            if state == "chunk-size":
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._remaining = "chunk-data", size
            elif state == "chunk-crlf":
                self._state = "chunk-size"
            elif state == "trailer" and not line:
                self._state = "head"
        # Bytes of `view` not consumed by this line go back to the caller.
        leftover = len(self._buf) - consumed
        self._buf.clear()
        return view[len(view) - leftover :]

    def _check_size(self) -> None:
        if len(self._buf) > _MAX_HEADER:
            self.broken = True  # not HTTP we understand; stop counting
            self._buf.clear()

    def _on_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        while lines and not lines[0]:  # tolerate stray CRLFs between requests
            lines.pop(0)
        if not lines:
            return
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) < 3:
            self.broken = True
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self._record(method, target)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        else:
            length = int(headers.get("content-length", "0") or 0)
            self._state, self._remaining = ("body", length) if length else ("head", 0)
        if self._state != "head" and headers.get("expect", "").lower() == "100-continue":
            self._expect_pending = True
            if self._on_expect is not None:
                self._on_expect(method, target)


class _Connection:
    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.counter = HttpRequestCounter(proxy._record, proxy._record_expect)
        self._closed = False
        self._done = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            self.server = socket.create_connection(
                (self.proxy.target_host, self.proxy.target_port), timeout=10
            )
            self.server.settimeout(None)
        except OSError:
            self.close(abort=True)
            return
        for sock in (self.client, self.server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump, args=(True,), daemon=True).start()
        self._pump(False)

    def _pump(self, upstream: bool) -> None:
        src, dst = (self.client, self.server) if upstream else (self.server, self.client)
        assert dst is not None and src is not None
        proxy = self.proxy
        throttle = proxy._up if upstream else proxy._down
        try:
            while not self._closed:
                rate = proxy.bandwidth if (upstream or proxy.throttle_downloads) else None
                # Small reads while throttled keep pacing smooth (~20 slices/s).
                size = 65536 if not rate else max(1024, min(65536, int(rate / 20)))
                data = src.recv(size)
                if not data:
                    break
                if upstream:
                    self.counter.feed(data)
                else:
                    self.counter.on_response(data)
                if proxy.latency:
                    time.sleep(proxy.latency)
                throttle.wait(len(data), rate)
                if self._closed:
                    break
                dst.sendall(data)
                with proxy._lock:
                    if upstream:
                        proxy.bytes_up += len(data)
                    else:
                        proxy.bytes_down += len(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(abort=True)
        finally:
            with self._lock:
                self._done += 1
                both = self._done == 2
            if both:
                self.close()

    def close(self, abort: bool = False) -> None:
        with self._lock:
            if self._closed and not abort:
                return
            self._closed = True
        for sock in (self.client, self.server):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if abort:  # RST instead of FIN, like a crashed peer
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy._forget(self)


class TcpProxy:
    """Threaded TCP proxy on 127.0.0.1 with fault injection and HTTP counting.

    ``bandwidth`` (bytes/s, ``None`` = unlimited) throttles client->server
    traffic, shared by all connections; set ``throttle_downloads`` to apply it
    to server->client too.  ``latency`` (seconds) is added per direction per
    forwarded chunk.  All three can be changed at any time.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        port: int | None = None,
        bandwidth: float | None = None,
        latency: float = 0.0,
        throttle_downloads: bool = False,
        on_connect: Callable[[], object] | None = None,
    ) -> None:
        self.target_host = target_host
        self.on_connect = on_connect
        self.target_port = target_port
        self.port = port or _free_port()
        self.bandwidth = bandwidth
        self.latency = latency
        self.throttle_downloads = throttle_downloads
        self.bytes_up = 0
        self.bytes_down = 0
        self._requests: list[tuple[str, str]] = []
        self._expecting: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._refusing = False
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._up = _Throttle()
        self._down = _Throttle()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> TcpProxy:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="TcpProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (idempotent)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        self.drop_connections()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- fault injection -------------------------------------------------
    def refuse(self) -> None:
        """Reset new connections immediately and drop all existing ones."""
        self._refusing = True
        self.drop_connections()

    def accept(self) -> None:
        """Undo :meth:`refuse`: forward new connections again."""
        self._refusing = False

    @property
    def refusing(self) -> bool:
        return self._refusing

    def drop_connections(self) -> None:
        """Abort (RST) every open connection; the listener stays up."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close(abort=True)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- request counting ------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str]]:
        """Snapshot of ``(method, request-target)`` seen so far, in order.

        The target is the raw request target, query string included
        (e.g. ``/bucket/key?uploadId=...&partNumber=1``).
        """
        with self._lock:
            return list(self._requests)

    @property
    def expecting(self) -> list[tuple[str, str]]:
        """The requests that sent ``Expect: 100-continue`` (a round trip before the body)."""
        with self._lock:
            return list(self._expecting)

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Number of requests, optionally filtered by method and target prefix."""
        with self._lock:
            return sum(
                1
                for m, p in self._requests
                if (method is None or m == method.upper())
                and (path_prefix is None or p.startswith(path_prefix))
            )

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()
            self._expecting.clear()
            self.bytes_up = self.bytes_down = 0

    # -- internals -------------------------------------------------------
    def _record(self, method: str, target: str) -> None:
        with self._lock:
            self._requests.append((method, target))

    def _record_expect(self, method: str, target: str) -> None:
        with self._lock:
            self._expecting.append((method, target))

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            if self.on_connect is not None:
                self.on_connect()  # e.g. start the server behind it on first use
            conn = _Connection(self, client)
            if self._refusing:
                conn.close(abort=True)
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=conn.run, daemon=True).start()
