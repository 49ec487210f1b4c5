"""An output location: a local folder, or a folder at any fsspec URL (s3://, gs://, az://, file://).

Writers never write to the store directly. They write each file complete,
atomically, to ``stage(name)``, then call ``publish(name)``. Locally the
staged path is the final one, so publishing does nothing more. At a URL the
file is staged in a private temporary folder, uploaded (fsspec's ``put``,
retried; multipart is the backend's business for large files), verified by
re-reading its size and sha256 from the store, and only then removed locally:
local disk holds only the files in flight, and a file is visible at the URL
only once it has been uploaded whole. Publishing in order (shards, then column
files, then the index last) is what keeps an interrupted writer from leaving
an index that lists a missing or partial file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from streamtrain.storage.atomic import temporary_name, write_atomic
from streamtrain.storage.location import check_location
from streamtrain.storage.remote import (
    MissingFileError,
    RetryPolicy,
    ReadError,
    child_url,
    filesystem,
    is_local,
    local_path,
    read_all,
    redact,
    sha256_of_file,
    verify_url,
    with_retries,
)


class OutputError(OSError):
    """A file that could not be published, listed or removed at an output location (named in the message)."""


def check_writable(folder: str | os.PathLike) -> None:
    """Make the local ``folder`` and write, flush and remove a one-byte probe in it, so that a read-only
    folder or a full disk is an error naming it before a command does its work, not after."""
    folder = Path(folder)
    probe = folder / f".streamtrain-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise OutputError(f"{folder}: cannot write there: {error.strerror or error}") from None
    finally:
        probe.unlink(missing_ok=True)


class Output:
    """Where a command's files go; see the module docstring. Use as a context manager (``close`` drops the staging)."""

    def __init__(self, location: str | os.PathLike, storage_options: dict | None = None,
                 policy: RetryPolicy = RetryPolicy()):
        self.url = check_location(location).rstrip("/") or "/"
        if not is_local(self.url) and urlsplit(self.url).query:
            raise OutputError(f"{redact(self.url)}: an output location cannot carry a query string (it would become "
                              "part of every file's name); give credentials in the environment or storage_options")
        self.storage_options = storage_options
        self.policy = policy
        self.is_local = is_local(self.url)
        self._staging: Path | None = None

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def display(self) -> str:
        """The location as it may be printed: no credentials, no query."""
        return redact(self.url)

    def describe(self, name: str) -> str:
        return f"{self.display}/{name}"

    def file_url(self, name: str) -> str:
        return child_url(self.url, name)

    def create(self) -> None:
        """Make the local folder (object stores have no folders to make)."""
        if self.is_local:
            Path(local_path(self.url)).mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """A local folder is made and probed (``check_writable``); a store answers at its first upload."""
        if self.is_local:
            check_writable(local_path(self.url))

    def names(self) -> list[str]:
        """The names of the files in the folder, sorted; [] when it does not exist."""
        if self.is_local:
            folder = Path(local_path(self.url))
            return sorted(os.listdir(folder)) if folder.is_dir() else []
        fs, path = filesystem(self.url, self.storage_options, self.policy)
        fs.invalidate_cache(path)
        try:
            listed = self._retried(lambda: _missing_as_empty(lambda: fs.ls(path, detail=False)), "cannot list")
        finally:
            fs.invalidate_cache(path)  # fsspec shares the instance: a kept listing would hide files written later
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in listed)

    def read(self, name: str) -> bytes:
        """A whole file, with retries (ReadError naming it if it cannot be read)."""
        return read_all(self.file_url(name), self.storage_options, self.policy)

    def download(self, name: str, target: Path) -> None:
        """Copy ``name`` from a URL to the local file ``target``, atomically, with retries; FileNotFoundError
        naming it when it is not there."""
        fs, path = filesystem(self.file_url(name), self.storage_options, self.policy)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_name(target)
        try:
            with_retries(lambda: fs.get_file(path, str(partial)), self.file_url(name), self.policy, time.sleep,
                         "cannot download")
        except MissingFileError:
            partial.unlink(missing_ok=True)
            raise FileNotFoundError(f"{self.describe(name)}: no such file") from None
        except ReadError as error:
            partial.unlink(missing_ok=True)
            raise OutputError(str(error)) from None
        os.replace(partial, target)

    def stage(self, name: str) -> Path:
        """The local path to write ``name`` to, complete and atomically, before ``publish(name)``."""
        if self.is_local:
            return Path(local_path(self.url)) / name
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="streamtrain-output-"))
        return self._staging / name

    def publish(self, name: str) -> None:
        """Make the staged ``name`` visible at the location: upload, verify, remove locally (a URL)."""
        if self.is_local:
            return
        staged = self.stage(name)
        self.upload(staged, name)
        staged.unlink()

    def upload(self, source: Path, name: str) -> None:
        """Copy the local file ``source`` to ``name`` at a URL, whole, and verify it reads back intact (size and
        sha256); ``source`` stays. For files that grow locally and are sent again (a log), or that a program
        writes into a folder of its own (``save_pretrained``)."""
        size, sha256 = source.stat().st_size, sha256_of_file(source)
        url = self.file_url(name)
        fs, path = filesystem(url, self.storage_options, self.policy)
        self._retried(lambda: fs.put_file(str(source), path), "cannot upload", name)
        stored = self._retried(lambda: fs.size(path), "cannot stat the upload", name)
        try:
            if stored != size:
                raise ReadError(f"{stored} bytes stored, {size} uploaded")
            verify_url(url, size, sha256, self.storage_options, self.policy)
        except ReadError as error:
            raise OutputError(f"{self.describe(name)}: the upload does not read back intact: {error.reason}") from None

    def write(self, name: str, data: bytes | str) -> None:
        """Stage and publish a small file in one go."""
        write_atomic(self.stage(name), data)
        self.publish(name)

    def remove(self, name: str) -> None:
        """Remove ``name`` if it is there."""
        if self.is_local:
            self.stage(name).unlink(missing_ok=True)
            return
        fs, path = filesystem(self.file_url(name), self.storage_options, self.policy)
        self._retried(lambda: _missing_as_empty(lambda: fs.rm_file(path)), "cannot remove", name)

    def clear(self) -> None:
        """Remove the folder and everything in it (an ``--overwrite``), leaving an empty one."""
        if self.is_local:
            if Path(local_path(self.url)).exists():
                shutil.rmtree(local_path(self.url))
            self.create()
            return
        fs, path = filesystem(self.url, self.storage_options, self.policy)
        self._retried(lambda: _missing_as_empty(lambda: fs.rm(path, recursive=True)), "cannot remove")

    def close(self) -> None:
        """Drop what is staged and not published (an interrupted writer's partial files)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _retried(self, action, failure: str, name: str | None = None):
        """``action()`` with the read retries; a failure is an OutputError naming the file."""
        try:
            return with_retries(action, self.file_url(name) if name else self.url, self.policy, time.sleep, failure)
        except ReadError as error:
            raise OutputError(str(error)) from None


def _missing_as_empty(action):
    """``action()``, or [] where what it lists or removes is not there."""
    try:
        return action()
    except FileNotFoundError:
        return []
