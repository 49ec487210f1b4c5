"""Reading whole shards from local disk or any fsspec URL, with retries.

A shard is read in ranges; a transient fault (reset connection, timeout, 5xx)
is retried with exponential back-off and the read continues at the offset
reached, so nothing is read twice into the result or lost. The bytes read must
match the index's size and sha256, else the shard is named in an error.
Credentials come from the environment or fsspec's ``storage_options`` and
never appear in messages: URLs are shown without user info or query string.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("streamtrain.data")


class ShardReadError(IOError):
    """A shard that could not be read completely and correctly."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.2  # seconds; doubled after each failure
    max_delay: float = 10.0
    chunk_bytes: int = 16 * 2**20


def redact(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


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
    if is_local(url):
        try:
            with open(local_path(url), "rb") as f:
                data = f.read()
        except OSError as error:
            raise ShardReadError(f"{url}: cannot read shard: {error}") from error
    else:
        data = _read_ranges(url, size, storage_options, policy, sleep)
    if len(data) != size:
        raise ShardReadError(f"{redact(url)}: shard is {len(data)} bytes, the index says {size} (truncated or replaced?)")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ShardReadError(f"{redact(url)}: sha256 does not match the index (corrupt or replaced shard)")
    return data


def _read_ranges(url: str, size: int, storage_options, policy: RetryPolicy, sleep) -> bytes:
    fs, path = filesystem(url, storage_options)
    buffer = bytearray()
    while len(buffer) < size:
        start, end = len(buffer), min(size, len(buffer) + policy.chunk_bytes)
        chunk = _with_retries(
            lambda: fs.cat_file(path, start=start, end=end), url, policy, sleep, f"read failed at byte {start} of {size}"
        )
        if not chunk:
            raise ShardReadError(f"{redact(url)}: shard ends at byte {start}, the index says {size}")
        buffer += chunk
    return bytes(buffer)


def read_text(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()) -> str:
    """A small file (index.json), with the same retries."""
    if is_local(url):
        with open(local_path(url)) as f:
            return f.read()
    fs, path = filesystem(url, storage_options)
    return _with_retries(lambda: fs.cat_file(path), url, policy, time.sleep, "cannot read").decode()


def _with_retries(action, url: str, policy: RetryPolicy, sleep, failure: str):
    """``action()``, retried with jittered exponential back-off while its errors are transient."""
    failures = 0
    while True:
        try:
            return action()
        except Exception as error:  # classified below; fsspec backends raise many types
            failures += 1
            if not is_transient(error) or failures >= policy.attempts:
                raise ShardReadError(
                    f"{redact(url)}: {failure} after {failures} attempt(s): {type(error).__name__}: {error}"
                ) from None
            delay = min(policy.max_delay, policy.first_delay * 2 ** (failures - 1)) * (0.5 + random.random() / 2)
            log.warning("%s: transient error (%s: %s), retry %d in %.2fs",
                        redact(url), failure, type(error).__name__, failures, delay)
            sleep(delay)
