"""Real servers on 127.0.0.1 for object-store tests: a static file server with
Range support, a fault-injecting HTTP proxy, and moto's S3 server. For more
kinds of fault see ``faults.fault_server``; for a slow link, ``shaper.link_shaper``.

Faults are scheduled by request count, so a test is deterministic: e.g.
``Faults(status_503=[0, 3], drop_midway=[1])`` answers the first and fourth
shard requests with 503 and cuts the second one off halfway through its body.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.faults import fault_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass


@dataclass
class Faults:
    """Which proxied requests (counted from 0, only those whose path matches) fail, and how."""

    status_503: list[int] = field(default_factory=list)
    drop_midway: list[int] = field(default_factory=list)
    path_contains: str = ".tar"
    seen: int = 0
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, path: str) -> str | None:
        if self.path_contains not in path:
            return None
        with self.lock:
            n = self.seen
            self.seen += 1
            fault = "503" if n in self.status_503 else "drop" if n in self.drop_midway else None
            if fault:
                self.injected += 1
            return fault


def _proxy_handler(upstream: str, faults: Faults):
    target = urlsplit(upstream)

    class ProxyHandler(_QuietHandler):
        def do_GET(self):
            self._forward()

        def do_HEAD(self):
            self._forward()

        def do_PUT(self):
            self._forward()

        def do_POST(self):
            self._forward()

        def do_DELETE(self):
            self._forward()

        def _forward(self):
            fault = faults.next_fault(self.path) if self.command == "GET" else None
            if fault == "503":
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            request_body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            connection.request(self.command, self.path, body=request_body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "drop":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

    return ProxyHandler


@contextmanager
def _serve(handler) -> str:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def file_server(root: str | os.PathLike):
    """Serve ``root`` over HTTP with Range support; yields the base URL (the fault server, without faults)."""
    with fault_server(root, lifetime=None) as server:
        yield server.url


@contextmanager
def fault_proxy(upstream: str, faults: Faults):
    """An HTTP proxy in front of ``upstream`` that injects ``faults``; yields its URL."""
    with _serve(_proxy_handler(upstream, faults)) as url:
        yield url


@contextmanager
def s3_server():
    """moto's S3 server on 127.0.0.1, empty; yields its endpoint URL. Credentials: any.

    moto keeps its buckets in process-wide state, so a server started after another
    in the same process would see that one's buckets: each starts by resetting it."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
        yield endpoint
    finally:
        server.stop()


def point_aws_at(monkeypatch, endpoint: str) -> None:
    """``AWS_ENDPOINT_URL`` set as a user sets it, for what opens ``s3://`` with no options (``audit``).

    fsspec keeps one S3FileSystem per set of options for the process: one made earlier, while
    the variable named another test's server, would be handed back without reading it again.
    """
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()


def upload_dataset(local_root: str | os.PathLike, s3_url: str, endpoint_url: str) -> None:
    """Copy a packed dataset folder to ``s3://bucket/prefix`` (the bucket is created)."""
    import s3fs

    fs = s3fs.S3FileSystem(anon=False, client_kwargs={"endpoint_url": endpoint_url})
    bucket = s3_url[len("s3://") :].split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for path in sorted(Path(local_root).iterdir()):
        fs.put_file(str(path), f"{s3_url.rstrip('/')}/{path.name}")
