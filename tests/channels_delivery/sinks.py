"""A real HTTP server on 127.0.0.1 that stands in for a provider in tests.

Providers are exercised over real sockets (STYLE.md 10): the sink records
every request it receives and answers with the replies a test queued, so a
test can check both what was sent and what the provider made of the answer.
"""

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True, kw_only=True)
class SinkRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    received: float = field(default_factory=time.monotonic)  # when its body was read


@dataclass(frozen=True, kw_only=True)
class SinkReply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow provider)
    trickle: float = 0.0  # seconds between the body's bytes (a provider that drips)


class HttpSink:
    """Queued replies, recorded requests; an empty queue answers 200 with no body."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._replies: deque[SinkReply] = deque()
        self._replies_by_path: dict[str, deque[SinkReply]] = {}
        self.requests: list[SinkRequest] = []
        self.closing = threading.Event()  # cuts a reply's delay short at teardown
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def reply(
        self,
        status: int = 200,
        body: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        trickle: float = 0.0,
        path: str | None = None,
    ) -> None:
        """Queue the answer to the next request (to ``path`` only, if given: for
        requests that arrive in no fixed order)."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            queue = (
                self._replies if path is None else self._replies_by_path.setdefault(path, deque())
            )
            queue.append(
                SinkReply(
                    status=status,
                    body=data,
                    headers=dict(headers or {}),
                    delay=delay,
                    trickle=trickle,
                )
            )

    def _take(self, request: SinkRequest) -> SinkReply:
        with self._lock:
            self.requests.append(request)
            for_path = self._replies_by_path.get(request.path)
            if for_path:
                return for_path.popleft()
            return self._replies.popleft() if self._replies else SinkReply()


class _Handler(BaseHTTPRequestHandler):
    server: "_SinkServer"
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = SinkRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        reply = self.server.sink._take(request)
        if reply.delay and self.server.sink.closing.wait(reply.delay):
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if not reply.trickle:
            self.wfile.write(reply.body)
            return
        self.wfile.flush()
        for index in range(len(reply.body)):
            if self.server.sink.closing.wait(reply.trickle):
                return
            self.wfile.write(reply.body[index : index + 1])
            self.wfile.flush()

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    sink: HttpSink

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) is expected, not an error


@contextmanager
def http_sink() -> Iterator[HttpSink]:
    """A running sink on a free port of 127.0.0.1, stopped on exit."""
    server = _SinkServer(("127.0.0.1", 0), _Handler)
    sink = HttpSink(server)
    server.sink = sink
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield sink
    finally:
        sink.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
