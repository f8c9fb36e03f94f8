"""A WAN-like link for the S3 endpoint: fixed one-way delay plus a bandwidth cap.

A delay line, not a per-chunk sleep: bytes leave ``latency`` seconds after
they arrive, so a long upload pays the delay once and runs at the capped
rate, like a real long-distance link.  Runs as its own process
(``python -m benchmarks.wan``) so it never competes for the benchmark's GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import threading
import time


class _Bucket:
    """Token bucket shared by every connection of one direction."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            delay = self._next - now
        if delay > 0:
            time.sleep(delay)


def _pipe(src: socket.socket, dst: socket.socket, latency: float, bucket: _Bucket) -> None:
    line: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def deliver() -> None:
        try:
            while True:
                due, data = line.get()
                if not data:
                    break
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                bucket.wait(len(data))
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    try:
        while data := src.recv(65536):
            line.put((time.monotonic() + latency, data))
    except OSError:
        pass
    line.put((0.0, b""))
    sender.join()


def _serve(
    client: socket.socket, target: tuple[str, int], latency: float, up: _Bucket, down: _Bucket
) -> None:
    try:
        server = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    there = threading.Thread(target=_pipe, args=(client, server, latency, up), daemon=True)
    there.start()
    _pipe(server, client, latency, down)
    there.join()
    client.close()
    server.close()


def serve(port: int, target_port: int, latency: float, bandwidth: float) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(256)
    up, down = _Bucket(bandwidth), _Bucket(bandwidth)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=_serve, args=(client, ("127.0.0.1", target_port), latency, up, down), daemon=True
        ).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.05, help="one-way delay in seconds")
    parser.add_argument("--bandwidth", type=float, default=20e6, help="bytes per second, each way")
    args = parser.parse_args()
    serve(args.port, args.target_port, args.latency, args.bandwidth)


if __name__ == "__main__":
    main()
