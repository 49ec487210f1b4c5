"""An HTTP/1.1 file server on 127.0.0.1 that injects the faults of real networks.

It serves a folder with keep-alive, HEAD, and GET with a single Range (206 and
Content-Range; 200 without Range; 416 past the end). A :class:`FaultPlan`
decides, for each GET whose path matches its pattern, whether that request
fails and how; the decision is a pure function of (seed, request number), so a
test run reproduces its faults whatever the thread timing. The modes:

- ``reset``: headers and half the body, then a TCP reset (SO_LINGER 0, close);
- ``status_5xx``: 500, 502, 503 or 504 (the plan picks), keep-alive kept;
- ``stall``: headers and half the body, then silence for ``stall_seconds``,
  then the rest (the connection is cut instead if the server stops first);
- ``drip``: the whole body, ``drip_bytes`` every ``drip_interval`` seconds;
- ``short``: Content-Length says N, the connection closes after N / 2 bytes;
- ``long``: the body, then, ``long_delay`` seconds later, ``long_extra`` on the
  keep-alive connection: a client that reuses it reads those bytes as the next
  status line (aiohttp: ``400, message='Bad status line'``). Sent together with
  the body, the extra bytes land in the client's read buffer and are dropped
  with it (aiohttp and http.client both), which hides the fault;
- ``wrong_range``: the Range header is ignored: 200 and the whole file.

The server logs what it injected (:class:`Injection`), can require basic-auth
credentials and a ``?token=`` query, and stops, stalls included, when its
context exits or ``lifetime`` seconds have passed. Run it by hand with
``python -m tests.support.faults ROOT --seed 1 --mode stall=0.1,reset=0.05``.
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import socket
import struct
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.sockets import StoppableServer, running

MODES = ("reset", "status_5xx", "stall", "drip", "short", "long", "wrong_range")


class Injection(NamedTuple):
    number: int  # the request's number among those the plan applies to, from 0
    path: str  # without the query string, which may hold a token
    mode: str


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail and how.

    Only GET requests whose path matches ``pattern`` (a regex searched in the
    path without its query) are numbered, from 0, and may fail. A number listed
    in ``at`` gets that mode; any other draws at most one mode with the
    probabilities in ``rates`` from a generator seeded by (seed, number).
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    at: Mapping[str, Sequence[int]] = field(default_factory=dict)
    seed: int = 0
    pattern: str = r"\.tar$"
    statuses: tuple[int, ...] = (500, 502, 503, 504)
    stall_seconds: float = 30.0
    drip_bytes: int = 64
    drip_interval: float = 0.01
    long_extra: bytes = b"JUNK AFTER THE BODY\r\n"
    long_delay: float = 0.05  # seconds between the body and the extra bytes

    def __post_init__(self):
        for mode in [*self.rates, *self.at]:
            if mode not in MODES:
                raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(MODES)}")
        if any(rate < 0 for rate in self.rates.values()) or sum(self.rates.values()) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {dict(self.rates)}")
        if not self.statuses or any(not 500 <= status <= 599 for status in self.statuses):
            raise ValueError(f"statuses must be 5xx codes: {self.statuses}")
        if self.drip_bytes < 1:
            raise ValueError("drip_bytes must be at least 1")

    def mode(self, number: int) -> str | None:
        """The fault of request ``number``, or None."""
        for mode, numbers in self.at.items():
            if number in numbers:
                return mode
        draw = self._random(number, "mode").random()
        for mode in MODES:
            draw -= self.rates.get(mode, 0.0)
            if draw < 0:
                return mode
        return None

    def status(self, number: int) -> int:
        """The status a ``status_5xx`` fault of request ``number`` answers with."""
        return self._random(number, "status").choice(self.statuses)

    def _random(self, number: int, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}/{number}/{purpose}")


class FaultServer(StoppableServer):
    """The running server: ``url``, ``log`` of injected faults, ``requests`` numbered so far."""

    def __init__(self, root: Path, plan: FaultPlan, auth: tuple[str, str] | None, token: str | None,
                 on_fault: Callable[[Injection], None] | None):
        self.root, self.plan, self.token, self.on_fault = root, plan, token, on_fault
        self.authorization = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None
        self.log: list[Injection] = []
        self.requests = 0
        self._pattern = re.compile(plan.pattern)
        self._count_lock = threading.Lock()
        super().__init__(_FaultHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_fault(self, path: str) -> tuple[int, str | None]:
        """Number the request if the plan applies to ``path``; its fault is logged in number order."""
        if not self._pattern.search(path):
            return -1, None
        with self._count_lock:
            number = self.requests
            self.requests += 1
            mode = self.plan.mode(number)
            injection = Injection(number, path, mode) if mode else None
            if injection:
                self.log.append(injection)
        if injection and self.on_fault:
            self.on_fault(injection)
        return number, mode


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` -> (start, end exclusive), the end clipped to
    the file; None for no range, a malformed one or several (answered with the whole file, as
    RFC 9110 allows). A start at or past ``size`` is returned as is: the caller answers 416."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        return max(0, size - int(last)), size
    if last and int(last) < int(first):
        return None
    return int(first), min(size, int(last) + 1) if last else size


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # drips and split writes go out at once, without 40 ms delayed-ACK waits
    server: FaultServer

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._respond(send_body=False)

    def do_GET(self):
        self._respond(send_body=True)

    def _respond(self, send_body: bool):
        url = urlsplit(self.path)
        if self.server.authorization and self.headers.get("Authorization") != self.server.authorization:
            return self._status(401, "credentials required")
        if self.server.token and parse_qs(url.query).get("token") != [self.server.token]:
            return self._status(403, "token required")
        file = self._file(unquote(url.path))
        if file is None:
            return self._status(404, "not found")
        size = file.stat().st_size
        number, mode = self.server.next_fault(url.path) if send_body else (-1, None)
        if mode == "status_5xx":
            return self._status(self.server.plan.status(number), "injected fault")
        span = None if mode == "wrong_range" else parse_range(self.headers.get("Range"), size)
        if span is not None and span[0] >= size:
            return self._status(416, "range not satisfiable", [("Content-Range", f"bytes */{size}")])
        start, end = span or (0, size)
        self.send_response(206 if span else 200)
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if send_body:
            with open(file, "rb") as f:
                f.seek(start)
                body = f.read(end - start)
            _SENDERS.get(mode, _send_whole)(self, body)

    def _file(self, path: str) -> Path | None:
        file = (self.server.root / path.lstrip("/")).resolve()
        return file if self.server.root in file.parents and file.is_file() else None

    def _status(self, code: int, reason: str, headers: Sequence[tuple[str, str]] = ()):
        """A short plain-text answer that keeps the connection open (``send_error`` closes it)."""
        body = f"{code} {reason}\n".encode()
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="streamtrain"')
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cut(self):
        """Close the connection after this response (a FIN: the client sees an early end)."""
        self.close_connection = True


def _send_whole(handler: _FaultHandler, body: bytes):
    handler.wfile.write(body)


def _send_reset(handler: _FaultHandler, body: bytes):
    handler.wfile.write(body[: len(body) // 2])
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.rfile.close()  # it holds a reference: the socket is really closed, with a RST, only without it
    handler.connection.close()
    handler.close_connection = True


def _send_stall(handler: _FaultHandler, body: bytes):
    handler.wfile.write(body[: len(body) // 2])
    if handler.server.stopping.wait(handler.server.plan.stall_seconds):
        return handler._cut()
    handler.wfile.write(body[len(body) // 2 :])


def _send_drip(handler: _FaultHandler, body: bytes):
    plan = handler.server.plan
    for start in range(0, len(body), plan.drip_bytes):
        if start and handler.server.stopping.wait(plan.drip_interval):
            return handler._cut()
        handler.wfile.write(body[start : start + plan.drip_bytes])


def _send_short(handler: _FaultHandler, body: bytes):
    handler.wfile.write(body[: len(body) // 2])
    handler._cut()


def _send_long(handler: _FaultHandler, body: bytes):
    handler.wfile.write(body)
    if handler.server.stopping.wait(handler.server.plan.long_delay):
        return handler._cut()
    handler.wfile.write(handler.server.plan.long_extra)


_SENDERS = {"reset": _send_reset, "stall": _send_stall, "drip": _send_drip, "short": _send_short, "long": _send_long}


@contextmanager
def fault_server(
    root: str | Path,
    plan: FaultPlan = FaultPlan(),
    *,
    auth: tuple[str, str] | None = None,
    token: str | None = None,
    lifetime: float | None = 120.0,
    on_fault: Callable[[Injection], None] | None = None,
) -> Iterator[FaultServer]:
    """Serve ``root`` with ``plan``'s faults until the context exits or ``lifetime`` seconds pass.

    ``auth`` = (user, password) requires basic auth (401 otherwise); ``token``
    requires ``?token=TOKEN`` (403 otherwise). ``on_fault`` is called with each
    injection as it happens. Exiting wakes stalls and closes every connection.
    """
    server = FaultServer(Path(root).resolve(), plan, auth, token, on_fault)
    with running(server, lifetime):
        yield server


def _numbers(text: str) -> list[int]:
    return [int(number) for number in text.split("+")]


def _modes(text: str, convert) -> dict:
    """``stall=0.1,reset=0.05`` -> {"stall": convert("0.1"), ...}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected MODE=VALUE,...: {text!r}")
    return {mode: convert(value) for mode, value in pairs}


def _announce(injection: Injection) -> None:
    print(f"injected {injection.mode} into request {injection.number} {injection.path}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the folder to serve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", type=lambda text: _modes(text, float), default={},
                        help=f"probabilities per request, e.g. stall=0.1,reset=0.05; modes: {', '.join(MODES)}")
    parser.add_argument("--at", type=lambda text: _modes(text, _numbers), default={},
                        help="request numbers per mode, e.g. reset=0+3,long=5")
    parser.add_argument("--pattern", default=FaultPlan.pattern, help="regex of the paths that may fail")
    parser.add_argument("--stall-seconds", type=float, default=FaultPlan.stall_seconds)
    parser.add_argument("--user", help="require basic auth as USER:PASSWORD")
    parser.add_argument("--token", help="require ?token=TOKEN")
    parser.add_argument("--lifetime", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    try:
        plan = FaultPlan(args.mode, args.at, args.seed, args.pattern, stall_seconds=args.stall_seconds)
    except ValueError as error:
        parser.error(str(error))
    if args.user and ":" not in args.user:
        parser.error("--user takes USER:PASSWORD")
    auth = tuple(args.user.split(":", 1)) if args.user else None
    with fault_server(args.root, plan, auth=auth, token=args.token, lifetime=args.lifetime, on_fault=_announce) as server:
        print(server.url, flush=True)
        try:
            server.stopping.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
