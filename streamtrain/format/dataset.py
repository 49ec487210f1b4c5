"""An opened dataset: its location, its index, and its per-sample columns on demand.

Opening reads ``index.json`` only. The durations column is mapped the first
time a plan needs it and the keys column the first time a sample is named,
so commands that need neither (``inspect``, a column check) stay cheap.
"""

from __future__ import annotations

import logging
from functools import cached_property

import numpy as np

from streamtrain.format.columns import DURATIONS, KEEP, KEYS, KeyColumn, open_column
from streamtrain.format.index import (
    INDEX_NAME,
    LEGACY_VERSION,
    DatasetIndex,
    DatasetIndexError,
    check_durations,
    parse_index,
)
from streamtrain.storage.location import LocationError, check_location
from streamtrain.storage.remote import RetryPolicy, ReadError, child_url, read_text, redact

log = logging.getLogger("streamtrain.format")


class Dataset:
    def __init__(self, url: str, index: DatasetIndex, storage_options: dict | None = None,
                 retry: RetryPolicy = RetryPolicy()):
        self.url = url  # folder path or URL of the dataset root, without a trailing slash (may carry a query)
        self.index = index
        self.storage_options = storage_options
        self.retry = retry

    @property
    def display(self) -> str:
        """The URL as it may be printed: no credentials, no query."""
        return redact(self.url)

    def file_url(self, name: str) -> str:
        return child_url(self.url, name)

    def shard_url(self, shard: int) -> str:
        return self.file_url(self.index.shards.names[shard])

    def shard_origin(self, shard: int) -> str:
        return f"{self.display}/{self.index.shards.names[shard]}"

    @cached_property
    def durations(self) -> np.ndarray:
        """(N,) float32 seconds per sample, in dataset order (memory-mapped where possible)."""
        if self.index.inline_durations is not None:
            return self.index.inline_durations
        values = open_column(self.url, self._column(DURATIONS), self.storage_options, self.retry)
        check_durations(values, f"{self.display}/{self._column(DURATIONS).file}")
        return values

    @cached_property
    def keys(self) -> KeyColumn | None:
        """Sample keys by dataset position; None for a format 1 index, which has no keys column."""
        if KEYS not in self.index.columns:
            return None
        column = self._column(KEYS)
        return KeyColumn(open_column(self.url, column, self.storage_options, self.retry), column.length,
                         f"{self.display}/{column.file}")

    @cached_property
    def keep(self) -> np.ndarray | None:
        """(N,) uint8, 1 or 0 per sample in dataset order: a pseudo-label column's verdicts
        (``label --max-wer``); None where the index lists no keep column."""
        if KEEP not in self.index.columns:
            return None
        return open_column(self.url, self._column(KEEP), self.storage_options, self.retry)

    def describe(self, shard: int, position: int) -> str:
        """``dataset/shard.tar#position (key)`` for messages and audits."""
        where = f"{self.shard_origin(shard)}#{position}"
        if self.keys is None:
            return where
        return f"{where} ({self.keys[int(self.index.shards.offsets[shard]) + position]})"

    def _column(self, name: str):
        try:
            return self.index.columns[name]
        except KeyError:
            raise DatasetIndexError(f"{self.display}/{INDEX_NAME}: lists no {name!r} column") from None


def open_dataset(url: str, storage_options: dict | None = None, retry: RetryPolicy = RetryPolicy()) -> Dataset:
    """Read ``index.json`` of the dataset at ``url`` (a folder or any fsspec URL)."""
    try:
        url = check_location(url).rstrip("/")
    except LocationError as error:
        raise DatasetIndexError(str(error)) from None
    origin = f"{redact(url)}/{INDEX_NAME}"
    try:
        text = read_text(child_url(url, INDEX_NAME), storage_options, retry)
    except FileNotFoundError:
        raise DatasetIndexError(f"{origin}: no index.json (is this a packed dataset?)") from None
    except ReadError as error:  # names the file already
        raise DatasetIndexError(str(error)) from None
    except OSError as error:
        raise DatasetIndexError(f"{origin}: cannot read: {error.strerror or error}") from None
    index = parse_index(text, origin)
    if index.format_version == LEGACY_VERSION:  # said here, not by the parser: `index upgrade` parses it too
        log.warning("%s: index format 1 (per-sample durations in JSON) is slow to open at scale; "
                    "run `streamtrain index upgrade DATASET` to convert it to format 2", origin)
    return Dataset(url, index, storage_options, retry)
