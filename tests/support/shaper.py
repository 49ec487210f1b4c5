"""A slow link on 127.0.0.1: a TCP proxy that adds round-trip latency and caps bandwidth.

Put it in front of any TCP server (the fault server, moto's S3, a file
server) to measure streaming over a long or thin link. What it models:

- **latency**: every chunk is delivered half the RTT after the proxy read it,
  in each direction, so a request's first response byte arrives one RTT after
  it was sent; a new connection costs one more RTT, as TCP's handshake does;
- **capacity**: one token bucket per direction, shared by all connections, as
  a link's capacity is shared;
- **window**: a connection has at most ``window_bytes`` unacknowledged per
  direction (a byte counts until half an RTT after its delivery, when its ACK
  would be back), so one connection moves at most window / RTT, like TCP.

Not modelled: loss and retransmission, slow start, TLS. Resets pass through
(a reset upstream resets the client's connection), as do half-closes.
"""

from __future__ import annotations

import collections
import queue
import socket
import socketserver
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from tests.support.sockets import StoppableServer, running

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Link:
    rtt_ms: float = 50.0
    mbit_s: float = 200.0
    window_bytes: int = 4 * 2**20  # per connection and direction; Linux tunes its windows to a few MB

    def __post_init__(self):
        if self.rtt_ms < 0 or self.mbit_s <= 0 or self.window_bytes < 1:
            raise ValueError(f"a link needs rtt_ms >= 0, mbit_s > 0 and window_bytes >= 1: {self}")

    @property
    def one_way(self) -> float:
        return self.rtt_ms / 2000

    @property
    def bytes_per_second(self) -> float:
        return self.mbit_s * 1e6 / 8


class _TokenBucket:
    """A rate in bytes per second shared by its callers, first come first served.

    ``reserve(n)`` takes n bytes now, going into debt if need be, and says how
    long to wait before sending them: sleeping late does not lose capacity,
    since the debt is paid by the clock, up to ``burst`` bytes of idle credit.
    """

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self._tokens = 0.0
        self._time = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._time) * self.rate) - n
            self._time = now
            return max(0.0, -self._tokens / self.rate)


class _Pipe:
    """One direction of one connection: read, wait half the RTT, take the bandwidth, write."""

    def __init__(self, source: socket.socket, sink: socket.socket, link: Link, bucket: _TokenBucket,
                 stopping: threading.Event, not_before: float = 0.0):
        self.source, self.sink, self.link, self.bucket, self.stopping = source, sink, link, bucket, stopping
        self.not_before = not_before  # nothing is delivered before the connection would be open
        self.chunks: queue.Queue = queue.Queue()  # (due time, bytes | "eof" | "reset")
        self.acks: collections.deque = collections.deque()  # (time, bytes) when window space comes back
        self.in_flight = 0
        self.broken = False
        self.window = threading.Condition()

    def read_loop(self) -> None:
        end = "eof"
        try:
            while room := self._wait_for_window():
                data = self.source.recv(min(CHUNK, room))
                if not data:
                    break
                with self.window:
                    self.in_flight += len(data)
                self.chunks.put((self._due(), data))
        except OSError:
            end = "reset"
        self.chunks.put((self._due(), end))

    def write_loop(self) -> None:
        try:
            while True:
                due, data = self.chunks.get()
                if self._sleep(due - time.monotonic()):
                    return
                if data == "eof":
                    return self.sink.shutdown(socket.SHUT_WR)  # a half-close passes on as one
                if data == "reset":
                    return _abort(self.sink)
                if self._sleep(self.bucket.reserve(len(data))):
                    return
                self.sink.sendall(data)
                with self.window:
                    self.acks.append((time.monotonic() + self.link.one_way, len(data)))
                    self.window.notify()
        except OSError:  # the receiving side went away: stop reading for it
            _abort(self.source)
        finally:
            with self.window:
                self.broken = True
                self.window.notify()

    def _due(self) -> float:
        return max(time.monotonic(), self.not_before) + self.link.one_way

    def _sleep(self, seconds: float) -> bool:
        """Wait; True if the shaper stopped meanwhile."""
        return self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set()

    def _wait_for_window(self) -> int:
        """Bytes that may be read now (0: the writer is gone), once the window has room."""
        with self.window:
            while not self.broken:
                now = time.monotonic()
                while self.acks and self.acks[0][0] <= now:
                    self.in_flight -= self.acks.popleft()[1]
                if self.in_flight < self.link.window_bytes:
                    return self.link.window_bytes - self.in_flight
                self.window.wait(self.acks[0][0] - now if self.acks else 0.1)
            return 0


def _abort(sock: socket.socket) -> None:
    """Reset ``sock`` when it is closed, and wake a reader blocked on it now."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:  # already gone
        pass


class _ShaperServer(StoppableServer):
    def __init__(self, upstream: tuple[str, int], link: Link):
        self.upstream, self.link = upstream, link
        burst = max(CHUNK, link.bytes_per_second * 0.02)  # 20 ms of credit absorbs a late wake-up
        self.buckets = (_TokenBucket(link.bytes_per_second, burst), _TokenBucket(link.bytes_per_second, burst))
        super().__init__(_ShaperHandler)


class _ShaperHandler(socketserver.BaseRequestHandler):
    server: _ShaperServer

    def handle(self):
        opened = time.monotonic() + self.server.link.rtt_ms / 1000  # the handshake's round trip
        client = self.request
        upstream = socket.create_connection(self.server.upstream, timeout=10)
        upstream.settimeout(None)
        self.server.track(upstream)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link, (up, down), stopping = self.server.link, self.server.buckets, self.server.stopping
        pipes = (_Pipe(client, upstream, link, up, stopping, opened), _Pipe(upstream, client, link, down, stopping))
        threads = [threading.Thread(target=run, daemon=True) for p in pipes for run in (p.read_loop, p.write_loop)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.server.forget(upstream)
        upstream.close()
        client.close()  # here, not in socketserver's shutdown_request: its FIN would precede a reset


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"the upstream must be a URL with a host: {url!r}")
    return parts.hostname, parts.port or {"https": 443}.get(parts.scheme, 80)


def _proxied(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's; user info, path and query kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextmanager
def link_shaper(upstream_url: str, rtt_ms: float = 50.0, mbit_s: float = 200.0, *,
                window_bytes: int = Link.window_bytes, lifetime: float | None = None) -> Iterator[str]:
    """A proxy in front of ``upstream_url`` over a link of ``rtt_ms`` and ``mbit_s``; yields the URL to use
    instead (same scheme, user info, path and query). Stops, connections included, on exit."""
    server = _ShaperServer(_endpoint(upstream_url), Link(rtt_ms, mbit_s, window_bytes))
    with running(server, lifetime):
        yield _proxied(upstream_url, server.port)
