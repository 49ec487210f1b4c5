"""Reading files from local disk or any fsspec URL, in ranges, with retries.

A file is read in ranges; a transient fault (reset connection, timeout, 5xx)
is retried with exponential back-off and the read continues at the offset
reached, so nothing is read twice into the result or lost. The bytes read must
match the expected size and sha256, else the file is named in an error.
Credentials come from the environment or fsspec's ``storage_options`` and
never appear in messages: URLs are shown without user info or query string.
A dataset URL's query (a signed URL's token) is carried to every file under it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streamtrain.storage.atomic import atomic_file

log = logging.getLogger("streamtrain.storage")


class ShardReadError(IOError):
    """A file that could not be read completely and correctly."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message  # what went wrong, without the URL


def _read_error(url: str, reason: str) -> ShardReadError:
    return ShardReadError(f"{redact(url)}: {reason}", reason)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.2  # seconds; doubled after each failure
    max_delay: float = 10.0
    chunk_bytes: int = 16 * 2**20


def redact(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def child_url(base: str, name: str) -> str:
    """``name`` inside the folder ``base``; a query on ``base`` (a token) is kept on the child."""
    if is_local(base):
        return os.path.join(base, name)
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def filesystem(url: str, storage_options: dict | None = None):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def is_transient(error: BaseException) -> bool:
    """Worth retrying: network faults and server-side errors, not missing files or bad requests."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    response = getattr(error, "response", None)
    if status is None and isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) or type(error).__module__.startswith(
        ("aiohttp", "botocore", "urllib3", "fsspec", "s3fs", "asyncio")
    )


def read_url(
    url: str,
    size: int,
    sha256: str | None,
    storage_options: dict | None = None,
    policy: RetryPolicy = RetryPolicy(),
    sleep=time.sleep,
) -> bytes:
    """Read exactly ``size`` bytes of ``url``; check the sha256 when given."""
    digest = hashlib.sha256()
    data = bytearray()
    for chunk in _chunks(url, size, storage_options, policy, sleep):
        digest.update(chunk)
        data += chunk
    _check(url, len(data), size, digest if sha256 else None, sha256)
    return bytes(data)


def read_all(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()) -> bytes:
    """The whole file, whatever its size (for checking a file against what an index says)."""
    if is_local(url):
        try:
            return Path(local_path(url)).read_bytes()
        except OSError as error:
            raise _read_error(url, f"cannot read: {error.strerror or error}") from error
    fs, path = filesystem(url, storage_options)
    size = _with_retries(lambda: fs.size(path), url, policy, time.sleep, "cannot stat")
    return b"".join(_chunks(url, size, storage_options, policy, time.sleep))


def fetch_to_file(
    url: str,
    size: int,
    sha256: str | None,
    dest: str | os.PathLike,
    storage_options: dict | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> None:
    """Copy ``url`` to the local file ``dest`` (atomically), checking size and sha256 as it streams.

    Memory stays at one chunk whatever the file's size.
    """
    digest = hashlib.sha256()
    written = 0
    with atomic_file(dest) as out:
        for chunk in _chunks(url, size, storage_options, policy, time.sleep):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
        _check(url, written, size, digest if sha256 else None, sha256)


def sha256_of_file(path: str | os.PathLike, block: int = 4 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _check(url: str, got: int, size: int, digest, sha256: str | None) -> None:
    if got != size:
        raise _read_error(url, f"{got} bytes, the index says {size} (truncated or replaced?)")
    if digest is not None and digest.hexdigest() != sha256:
        raise _read_error(url, "sha256 does not match the index (corrupt or replaced)")


def _chunks(url: str, size: int, storage_options, policy: RetryPolicy, sleep) -> Iterator[bytes]:
    """The file's bytes in chunks of at most ``policy.chunk_bytes``, up to ``size`` (or its end, if shorter)."""
    if is_local(url):
        path = local_path(url)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(min(policy.chunk_bytes, size + 1)):
                    yield chunk
        except OSError as error:
            raise _read_error(url, f"cannot read: {error.strerror or error}") from error
        return
    fs, path = filesystem(url, storage_options)
    position = 0
    while position < size:
        start, end = position, min(size, position + policy.chunk_bytes)
        chunk = _with_retries(
            lambda: fs.cat_file(path, start=start, end=end), url, policy, sleep, f"read failed at byte {start} of {size}"
        )
        if not chunk:
            return
        position += len(chunk)
        yield chunk


def read_text(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()) -> str:
    """A small file (index.json), with the same retries."""
    if is_local(url):
        return Path(local_path(url)).read_text()
    fs, path = filesystem(url, storage_options)
    return _with_retries(lambda: fs.cat_file(path), url, policy, time.sleep, "cannot read").decode()


def _with_retries(action: Callable, url: str, policy: RetryPolicy, sleep, failure: str):
    """``action()``, retried with jittered exponential back-off while its errors are transient."""
    failures = 0
    while True:
        try:
            return action()
        except Exception as error:  # classified below; fsspec backends raise many types
            failures += 1
            if not is_transient(error) or failures >= policy.attempts:
                raise _read_error(
                    url, f"{failure} after {failures} attempt(s): {type(error).__name__}: {error}"
                ) from None
            delay = min(policy.max_delay, policy.first_delay * 2 ** (failures - 1)) * (0.5 + random.random() / 2)
            log.warning("%s: transient error (%s: %s), retry %d in %.2fs",
                        redact(url), failure, type(error).__name__, failures, delay)
            sleep(delay)
