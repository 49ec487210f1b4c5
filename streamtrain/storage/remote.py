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
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from streamtrain.storage.atomic import atomic_file

log = logging.getLogger("streamtrain.storage")


class ReadError(IOError):
    """A file (shard, index, column, upload read back) that could not be read completely and correctly."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message  # what went wrong, without the URL


class MissingFileError(ReadError, FileNotFoundError):
    """A file that is not there (not retried); a FileNotFoundError too, so callers can say what it means."""


def _read_error(url: str, reason: str) -> ReadError:
    return ReadError(f"{redact(url)}: {reason}", reason)


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads are retried.

    A read is abandoned when no byte arrives for ``stall_timeout`` seconds
    (http(s) and s3; other backends keep their own timeouts) and retried, like
    any transient fault, from the last complete chunk of ``chunk_bytes``.
    """

    attempts: int = 6
    first_delay: float = 0.2  # seconds; doubled after each failure
    max_delay: float = 10.0
    chunk_bytes: int = 8 * 2**20
    stall_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {self.stall_timeout}")


_USER_INFO = re.compile(r"(?<=://)[^/\s@'\"]*@")
_QUERY = re.compile(r"\?[^\s'\"<>)]*")


def scrub(text: str) -> str:
    """``text`` (e.g. a library's error message) with URLs' credentials and query strings removed."""
    return _QUERY.sub("", _USER_INFO.sub("", text))


def redact(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


#: storage_options keys whose values are secrets (s3fs key/secret/token, gcsfs token, adlfs account_key...).
_SECRET_OPTION = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?|sas_token|connection_string)$", re.I)


def redacted(value, hide_secret_keys: bool = False):
    """A JSON-like value (a recipe, storage_options) as it may be printed or stored: every string,
    mapping keys included, ``redact``-ed; with ``hide_secret_keys``, the value of each key that names a secret (fsspec's
    key, secret, token, password...) replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {redacted(k): "<redacted>" if hide_secret_keys and _SECRET_OPTION.search(str(k))
                else redacted(v, hide_secret_keys) for k, v in value.items()}  # keys too: a mixture's are URLs
    if isinstance(value, list):
        return [redacted(v, hide_secret_keys) for v in value]
    return redact(value) if isinstance(value, str) else value


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


def filesystem(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()):
    """(fsspec filesystem, path) for ``url``, with ``policy.stall_timeout`` as the backend's
    read timeout unless ``storage_options`` sets one."""
    import fsspec

    options = dict(storage_options or {})
    protocol = urlsplit(url).scheme
    if protocol in ("http", "https"):
        import aiohttp

        client = dict(options.get("client_kwargs", {}))
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=policy.stall_timeout,
                                                           sock_read=policy.stall_timeout))
        options["client_kwargs"] = client
    elif protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs", {}))
        config.setdefault("read_timeout", policy.stall_timeout)
        config.setdefault("connect_timeout", policy.stall_timeout)
        options["config_kwargs"] = config
    return fsspec.core.url_to_fs(url, **options)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: network faults and server-side errors, not missing files or bad requests.

    A response that could not be parsed (e.g. garbage left on a keep-alive
    connection by a previous response longer than its Content-Length, which
    aiohttp reports as "400, Bad status line") is a fault of the connection:
    the retry goes out on a fresh one.
    """
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if type(error).__name__.endswith("CredentialsError"):  # botocore's No/Partial credentials: retrying cannot help
        return False
    if _unparsable_response(error):
        return True
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    response = getattr(error, "response", None)
    if status is None and isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) or type(error).__module__.startswith(
        ("aiohttp", "botocore", "urllib3", "fsspec", "s3fs", "asyncio")
    )


def _unparsable_response(error: BaseException) -> bool:
    try:
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:
        return False
    return isinstance(error, HttpProcessingError) or isinstance(error.__cause__, HttpProcessingError)


class _WrongLength(IOError):
    """A ranged read answered with another number of bytes than asked (transient: retried)."""


def read_all(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()) -> bytes:
    """The whole file, whatever its size (for checking a file against what an index says)."""
    if is_local(url):
        try:
            return Path(local_path(url)).read_bytes()
        except OSError as error:
            raise _read_error(url, f"cannot read: {error.strerror or error}") from error
    fs, path = filesystem(url, storage_options, policy)
    size = with_retries(lambda: fs.size(path), url, policy, time.sleep, "cannot stat")
    return b"".join(_chunks(url, size, storage_options, policy, time.sleep))


def fetch_into(
    url: str,
    size: int,
    sha256: str | None,
    out: IO[bytes],
    storage_options: dict | None = None,
    policy: RetryPolicy = RetryPolicy(),
    observe: Callable[[bytes], None] = lambda chunk: None,
) -> None:
    """Write ``url``'s bytes into ``out``, checking size and sha256 as they stream (one chunk in
    memory); ``observe`` sees every chunk too (e.g. to parse the file in the same pass)."""
    digest = hashlib.sha256()
    written = 0
    for chunk in _chunks(url, size, storage_options, policy, time.sleep):
        digest.update(chunk)
        observe(chunk)
        out.write(chunk)
        written += len(chunk)
    _check(url, written, size, digest if sha256 else None, sha256)


def fetch_to_file(
    url: str,
    size: int,
    sha256: str | None,
    dest: str | os.PathLike,
    storage_options: dict | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> None:
    """Copy ``url`` to the local file ``dest`` (atomically), checking size and sha256 as it streams."""
    with atomic_file(dest) as out:
        fetch_into(url, size, sha256, out, storage_options, policy)


class _Discard:
    def write(self, data) -> int:
        return len(data)


def verify_url(url: str, size: int, sha256: str, storage_options: dict | None = None,
               policy: RetryPolicy = RetryPolicy()) -> None:
    """Re-read ``url`` (streamed, one chunk in memory) and check its size and sha256, e.g. after an upload."""
    fetch_into(url, size, sha256, _Discard(), storage_options, policy)


def sha256_of_file(source: str | os.PathLike | BinaryIO, block: int = 4 * 2**20) -> str:
    """The sha256 of a file, by path or open (an open file is read from the start and rewound)."""
    if not hasattr(source, "read"):
        with open(source, "rb") as file:
            return sha256_of_file(file, block)
    digest = hashlib.sha256()
    source.seek(0)
    while chunk := source.read(block):
        digest.update(chunk)
    source.seek(0)
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
    fs, path = filesystem(url, storage_options, policy)
    position = 0
    while position < size:
        start, end = position, min(size, position + policy.chunk_bytes)
        chunk = with_retries(lambda: _ranged(fs, path, start, end, size), url, policy, sleep,
                              f"read failed at byte {start} of {size}")
        if not chunk:
            return
        position += len(chunk)
        yield chunk


def _ranged(fs, path: str, start: int, end: int, size: int) -> bytes:
    """Bytes [start, end) of the file; a server that ignores the range and sends the whole file
    is answered by cutting the range out of it, any other length is a transient fault."""
    chunk = fs.cat_file(path, start=start, end=end)
    if len(chunk) == end - start or (len(chunk) < end - start and end == size):
        return chunk
    if len(chunk) == size and (start, end) != (0, size):
        return chunk[start:end]
    raise _WrongLength(f"asked for bytes {start}-{end}, got {len(chunk)} bytes")


def read_text(url: str, storage_options: dict | None = None, policy: RetryPolicy = RetryPolicy()) -> str:
    """A small file (index.json), with the same retries."""
    if is_local(url):
        return Path(local_path(url)).read_text()
    fs, path = filesystem(url, storage_options, policy)
    return with_retries(lambda: fs.cat_file(path), url, policy, time.sleep, "cannot read").decode()


def with_retries(action: Callable, url: str, policy: RetryPolicy, sleep, failure: str):
    """``action()``, retried with jittered exponential back-off while its errors are transient.

    The error raised names ``url`` redacted and chains nothing: a library's exception (and its own
    causes) may hold the URL with its credentials, and a traceback prints every link of a chain.
    """
    failures = 0
    while True:
        try:
            return action()
        except Exception as error:  # classified below; fsspec backends raise many types
            failures += 1
            reason = scrub(f"{type(error).__name__}: {error}")
            missing = _missing(error, url)
            final = not is_transient(error) or failures >= policy.attempts
        if final:
            break
        delay = min(policy.max_delay, policy.first_delay * 2 ** (failures - 1)) * (0.5 + random.random() / 2)
        log.warning("%s: transient error (%s: %s), retry %d in %.2fs", redact(url), failure, reason, failures, delay)
        sleep(delay)
    if missing is not None:
        raise MissingFileError(f"{redact(url)}: {failure}: {missing}", f"{failure}: {missing}")
    raise _read_error(url, f"{failure} after {failures} attempt(s): {reason}")


def _missing(error: Exception, url: str) -> str | None:
    """What is missing, for a FileNotFoundError (not retried): its own words ("the specified bucket does
    not exist"), or "no such file" where they only repeat the URL (fsspec's http says so for a 404)."""
    if not isinstance(error, FileNotFoundError):
        return None
    said = scrub(str(error)).strip()
    return "no such file" if not said or urlsplit(redact(url)).path in said else said
