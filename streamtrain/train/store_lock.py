"""The run lock of a run folder at a URL: a lease object, ``RUN/.lock``.

An object store has no ``lockf``, and nothing drops a lock when its process
dies. So the trainer holds a *lease*: ``.lock`` holds its owner (host, pid), a
random token, the time of its last heartbeat and the lease's length. It is
created only if absent (S3's conditional ``PUT``, ``If-None-Match: *``), then
rewritten every ``HEARTBEAT_S`` seconds only if it is still the object this
process wrote (``If-Match`` on its ETag), and removed at exit.

A second trainer is refused while the heartbeat is younger than the lease. A
lease that has expired (its holder was killed, or lost its network) is taken
over, again with ``If-Match``, so of two trainers taking it over at once one
wins. A holder whose heartbeat finds the lease taken (``lost``) stops at its
next checkpoint instead of writing one.

Limits: the heartbeat times are the nodes' clocks, so they must agree within
a fraction of the lease (NTP does); a run killed with SIGKILL keeps its folder
locked for up to ``LEASE_S`` seconds; on stores without conditional writes
(anything but s3:// here) creating and taking over are a check, then a write:
two trainers starting in the same instant may both start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from fsspec.asyn import sync

from streamtrain.storage.remote import filesystem, scrub
from streamtrain.train.config import RecipeError
from streamtrain.train.run_folder import RunFolder

log = logging.getLogger("streamtrain.train")

LEASE_S = 60.0  # train.lock_lease's default
HEARTBEAT_S = LEASE_S / 4


class LeaseError(RecipeError):
    """A run folder at a URL that another trainer holds, or whose lease this trainer lost."""


class _Conflict(Exception):
    """The lock object is not what the conditional write expected."""


class StoreLease:
    """Exclusive use of a run folder at a URL by this process, for as long as it keeps the lease fresh."""

    def __init__(self, run: RunFolder, name: str, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S):
        self.run, self.lease_s, self.heartbeat_s = run, lease_s, heartbeat_s
        self.display = f"{run}/{name}"
        self.fs, self.path = filesystem(run.output.file_url(name), run.storage_options)
        self.owner = f"pid {os.getpid()} on {socket.gethostname()}"
        self.token = secrets.token_hex(8)
        self.lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            self._etag = self._create()
        except _Conflict:
            self._take_over()
        except OSError as error:  # no such bucket, no credentials, no network
            raise LeaseError(f"cannot use run folder {self.run}: cannot write its lock object {self.display}: "
                             f"{scrub(str(error))}") from None
        self._thread = threading.Thread(target=self._beat, name="streamtrain-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self._holder().get("token") == self.token:
            self.fs.rm_file(self.path)

    def _take_over(self) -> None:
        # the ETag first: a holder that renews in between changes it, and the takeover below fails
        etag, holder = self._etag_now(), self._holder()
        if not holder:  # released since: create it again, if no one else did first
            try:
                self._etag = self._create()
                return
            except _Conflict:
                etag, holder = self._etag_now(), self._holder()
        age = time.time() - holder.get("heartbeat", 0.0)
        if age < holder.get("lease_s", self.lease_s):
            raise LeaseError(f"run folder {self.run} is in use by another `streamtrain train` "
                             f"({holder.get('owner', 'unknown')}, heartbeat {age:.0f} s ago, lease "
                             f"{holder.get('lease_s', self.lease_s):.0f} s); wait for it to stop, or choose another "
                             "train.output_dir")
        log.warning("%s: taking over the lock of %s, whose last heartbeat was %.0f s ago (the lease is %.0f s)",
                    self.display, holder.get("owner", "unknown"), age, holder.get("lease_s", self.lease_s))
        try:
            self._etag = self._replace(etag)
        except _Conflict:
            raise LeaseError(f"run folder {self.run}: another `streamtrain train` took over its expired lock "
                             "at the same time; choose another train.output_dir or wait") from None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self.beat():
            pass

    def beat(self) -> bool:
        """Renew the lease; False once it is lost (``check`` then raises)."""
        try:
            self._etag = self._replace(self._etag)
        except _Conflict:
            holder = self._holder()
            self.lost = (f"run folder {self.run}: the lock was taken over by {holder.get('owner', 'another run')} "
                         f"(this run's heartbeat was late by more than the {self.lease_s:.0f} s lease); "
                         "stopping without writing a checkpoint")
            log.error("%s", self.lost)
            return False
        except OSError as error:  # the store did not answer: try again at the next beat
            log.warning("%s: heartbeat failed (%s); retrying in %.0f s", self.display, error, self.heartbeat_s)
        return True

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "token": self.token, "heartbeat": time.time(),
                           "lease_s": self.lease_s}).encode()

    def _holder(self) -> dict:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return {}
        except ValueError:  # not ours to read: treat as held with an unknown heartbeat
            return {"owner": f"{self.display} is not a streamtrain lock: remove it if no run holds the folder",
                    "heartbeat": time.time()}

    def _etag_now(self) -> str | None:
        self.fs.invalidate_cache(self.path)
        try:
            return self.fs.info(self.path).get("ETag")
        except FileNotFoundError:
            return None

    def _is_s3(self) -> bool:
        return hasattr(self.fs, "_call_s3")

    def _create(self) -> str | None:
        try:
            self.fs.pipe_file(self.path, self._body(), mode="create")
        except FileExistsError:
            raise _Conflict() from None
        return self._etag_now()

    def _replace(self, etag: str | None) -> str | None:
        """Rewrite the lock object if it is still the one with ``etag``; its new ETag."""
        if not self._is_s3():
            if self._etag_now() != etag:
                raise _Conflict()
            self.fs.pipe_file(self.path, self._body())
            return self._etag_now()
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            answer = sync(self.fs.loop, self.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=self._body(),
                          IfMatch=etag)
        except OSError as error:
            if "condition" in str(error).lower():  # 412 Precondition Failed, as s3fs words it
                raise _Conflict() from None
            raise
        return answer["ETag"]
