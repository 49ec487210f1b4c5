"""Threaded TCP servers on 127.0.0.1 that stop promptly, open connections included.

socketserver's ``shutdown()`` only stops accepting: a handler blocked on a
keep-alive connection, a stalled response or a slow upstream would outlive the
test. A :class:`StoppableServer` tracks its sockets, shuts them all down on
``stop()`` and sets ``stopping`` so that handlers waiting on purpose wake up;
:func:`running` also stops it after ``lifetime`` seconds, so a hung client
cannot hang a test run forever.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class StoppableServer(socketserver.ThreadingTCPServer):
    """A thread per connection, on a free port of 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[socketserver.BaseRequestHandler]):
        self.stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def track(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the server stops (accepted sockets are tracked already)."""
        with self._lock:
            if self.stopping.is_set():
                _shut(sock)
            self._sockets.add(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def process_request(self, request, client_address):
        self.track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.forget(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        """Clients that hang up and stops that cut connections are expected; anything else is printed."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def stop(self) -> None:
        """Stop accepting, wake waiting handlers and cut every open connection."""
        with self._lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
            sockets = list(self._sockets)
        self.shutdown()
        self.server_close()
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass


@contextmanager
def running(server: StoppableServer, lifetime: float | None) -> Iterator[StoppableServer]:
    """Serve in a daemon thread; stop on exit or after ``lifetime`` seconds, whichever is first."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime, server.stop) if lifetime is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield server
    finally:
        if timer is not None:
            timer.cancel()
        server.stop()
        thread.join(timeout=5)
