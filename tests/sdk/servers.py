"""Small real servers for the resilience tests: a scripted HTTP server and a TCP proxy that can cut.

Both run in threads of the test process on loopback ports; nothing is mocked inside the client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival


class ScriptedServer:
    """Answers the requests it receives with ``replies`` in order (the last one repeats) and records them."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies, self.seen = list(replies), list[Seen]()
        self.answered_at = list[float]()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.seen.append(Seen(self.command, self.path, headers, body, time.monotonic()))
                reply = owner.replies[min(len(owner.seen), len(owner.replies)) - 1]
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
                owner.answered_at.append(time.monotonic())

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class CuttingProxy:
    """Forwards TCP connections to ``upstream``; the FIRST connection is cut (both sides closed) once the
    server has sent ``cut_after_frames`` SSE frames (blank-line ends) and a few bytes of the next one.
    Later connections pass through untouched."""

    def __init__(self, upstream: tuple[str, int], cut_after_frames: int) -> None:
        self.upstream, self.cut_after_frames = upstream, cut_after_frames
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.cut = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.upstream)
            first = self.connections == 1
            self._spawn(self._pipe, downstream, upstream, None)
            self._spawn(self._pipe, upstream, downstream, self.cut_after_frames if first else None)

    def _pipe(self, source: socket.socket, sink: socket.socket, cut_after: int | None) -> None:
        frames = 0
        try:
            for chunk in _chunks(source):
                if cut_after is not None:
                    frames += chunk.count(b"\n\n")
                    if frames >= cut_after:
                        end = _after_nth(chunk, b"\n\n", chunk.count(b"\n\n") - (frames - cut_after))
                        sink.sendall(chunk[: end + 5])  # the frame that completes the count, and 5 bytes more
                        self.cut.set()
                        break
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while chunk := sock.recv(65536):
        yield chunk


def _after_nth(data: bytes, needle: bytes, n: int) -> int:
    """The index just past the ``n``-th occurrence of ``needle`` in ``data`` (n >= 1)."""
    index = -len(needle)
    for _ in range(n):
        index = data.index(needle, index + len(needle))
    return index + len(needle)
