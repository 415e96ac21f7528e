"""Real servers on 127.0.0.1 for the storage tests: an HTTP file server with range support,
a reverse proxy that counts the bytes it passes and injects faults by rule, and a way to start
a server program on a free port.

The stores' servers (moto's for S3, gcp-storage-emulator for GCS, azurite for Azure: their
real HTTP APIs) are started by the fixtures in conftest.py; the proxy sits in front of each
(and of the file server), so every fault is a real one on the wire: a reset socket, a 500 or
503 response, a held-back part. Nothing here mocks fsspec, its filesystems or HTTP.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from hashlib import md5
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Response bodies are relayed in pieces of this size, so a fault can strike mid-body.
RELAY_CHUNK = 64 * 1024
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


class _Served:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port) running ``handler``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server that must be told one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_program(
    argv: list[str], port: int, log: Path, timeout: float = 60
) -> subprocess.Popen[bytes]:
    """``argv`` started with its output in ``log``, returned once it accepts connections on
    ``port``; a program that exits or stays deaf for ``timeout`` seconds raises with the end
    of its log."""
    with log.open("wb") as output:
        program = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return program
        except OSError:
            if program.poll() is not None or time.monotonic() > deadline:
                program.kill()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{argv[0]} did not start on port {port}: {tail}") from None
            time.sleep(0.1)


def _reset(connection: socket.socket) -> None:
    """Close ``connection`` with a TCP reset (SO_LINGER 0), as a crashed peer would."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass


@dataclass
class Fault:
    """What the proxy does to requests matching ``method`` and the ``target`` regex (on the
    path and query): after letting ``skip`` of them through, it acts on the next ``times``
    (``None``: on every one).

    ``action`` is ``status`` (answer ``status`` with ``body``, never forwarding),
    ``reset_response`` (forward, then reset the connection after ``after_bytes`` bytes of
    the response body, ``seconds`` after the last of them: a reset drops whatever the client
    has not yet read from its socket, so a test that needs those bytes read waits),
    ``reset_request`` (reset while reading the request body) or
    ``delay`` (wait ``seconds``, then forward).
    """

    method: str
    target: str
    action: str
    status: int = 500
    body: bytes = b""
    after_bytes: int = 0
    seconds: float = 0.0
    skip: int = 0
    times: int | None = 1
    seen: int = 0
    applied: int = 0

    def claims(self, method: str, target: str) -> bool:
        if method != self.method or not re.search(self.target, target):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


@dataclass
class Exchange:
    """One request the proxy saw: what it was, and how many body bytes went each way."""

    method: str
    target: str
    headers: dict[str, str]
    status: int | None = None
    sent: int = 0  # response body bytes sent to the client
    received: int = 0  # request body bytes read from the client
    fault: str | None = None


def s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>kbundle-test</RequestId></Error>"
    ).encode()


@dataclass
class FaultProxy(_Served):
    """A threaded HTTP/1.1 reverse proxy from 127.0.0.1:``port`` to ``upstream``."""

    upstream: tuple[str, int]
    faults: list[Fault] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._serve(Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.exchanges.clear()

    def bytes_sent(self, predicate: Callable[[Exchange], bool] = lambda _e: True) -> int:
        with self.lock:
            return sum(e.sent for e in self.exchanges if predicate(e))

    def matching(self, method: str, target: str) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.method == method and re.search(target, e.target)]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the exchanges are recorded instead."""

    def do_GET(self) -> None:
        self._relay()

    def do_HEAD(self) -> None:
        self._relay()

    def do_PUT(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def do_DELETE(self) -> None:
        self._relay()

    def _fault(self) -> Fault | None:
        with self.owner.lock:
            return next((f for f in self.owner.faults if f.claims(self.command, self.path)), None)

    def _relay(self) -> None:
        exchange = Exchange(
            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
        )
        with self.owner.lock:
            self.owner.exchanges.append(exchange)
        fault = self._fault()
        exchange.fault = fault.action if fault else None
        length = int(self.headers.get("Content-Length") or 0)
        if fault is not None and fault.action == "reset_request":
            exchange.received = len(self.rfile.read(min(length, max(1, length // 2))))
            self.close_connection = True
            _reset(self.connection)
            return
        body = self._request_body(length)
        exchange.received = len(body)
        if fault is not None and fault.action == "status":
            exchange.status = fault.status
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(fault.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(fault.body)
                exchange.sent = len(fault.body)
            return
        if fault is not None and fault.action == "delay":
            time.sleep(fault.seconds)
        upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            exchange.status = response.status
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            whole = None
            if response.getheader("Content-Length") is None and self.command != "HEAD":
                whole = response.read()  # a chunked answer is relayed with its length
                self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = fault.after_bytes if fault and fault.action == "reset_response" else None
            pieces = iter(lambda: response.read(RELAY_CHUNK), b"") if whole is None else [whole]
            for chunk in pieces:
                if limit is not None and exchange.sent + len(chunk) > limit:
                    self.wfile.write(chunk[: limit - exchange.sent])
                    self.wfile.flush()
                    exchange.sent = limit
                    time.sleep(fault.seconds)
                    self.close_connection = True
                    _reset(self.connection)
                    return
                self.wfile.write(chunk)
                exchange.sent += len(chunk)
        finally:
            upstream.close()

    def _request_body(self, length: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(length) if length else b""


class RangeFileServer(_Served):
    """Serves the files under ``root`` over HTTP/1.1 with ``Range`` (single ranges), ``HEAD``,
    ``Content-Length``, ``ETag`` and ``Accept-Ranges``, as a static web server does."""

    def __init__(self, root: Path) -> None:
        server_root = root

        class Handler(_FileHandler):
            root = server_root

        self._serve(Handler)


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = self.root / name
        if not name or ".." in name.split("/") or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        stat = path.stat()
        size = stat.st_size
        etag = '"' + md5(f"{stat.st_mtime_ns}-{size}".encode()).hexdigest() + '"'
        start, end = 0, size - 1
        status = 200
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if wanted and (wanted.group(1) or wanted.group(2)):
            if wanted.group(1):
                start = int(wanted.group(1))
                end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
            else:
                start = max(0, size - int(wanted.group(2)))
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with path.open("rb") as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(RELAY_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
