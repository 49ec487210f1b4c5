"""Per-sample column files beside ``index.json``: durations and keys.

- ``durations``: little-endian float32 seconds, one per sample in dataset order
  (``<index stem>.durations.f32``). The loader plans batches from it without
  opening a shard.
- ``keys``: each sample's key on its own line, in dataset order
  (``<index stem>.keys.txt``). The audit and error messages name samples by it.
- ``keep``: one byte per sample, 1 or 0, in dataset order (``<index stem>.keep.u1``),
  only in a pseudo-label column: whether the sample's label passed ``label --max-wer``.
  The loader leaves the 0s out of the plan without opening a shard. It is derived
  from the column's shards, which the column's fingerprint covers, and is checked
  against its size and sha256 like the others.

Local column files are memory-mapped, so the ranks of a node share one
page-cache copy; remote ones are streamed (ranged, retried) into a local file
and mapped. Either way the file must have the size and sha256 the index lists,
or opening it is an error naming the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from streamtrain.format.index import (
    FORMAT_VERSION,
    INDEX_NAME,
    ColumnFile,
    DatasetIndex,
    DatasetIndexError,
    check_durations,
    sample_offsets,
)
from streamtrain.storage.atomic import atomic_file
from streamtrain.storage.output import Output
from streamtrain.storage.remote import (
    RetryPolicy,
    ReadError,
    child_url,
    fetch_to_file,
    is_local,
    local_path,
    sha256_of_file,
)

DURATIONS = "durations"
KEYS = "keys"
KEEP = "keep"
_EXTENSIONS = {DURATIONS: "f32", KEYS: "txt", KEEP: "u1"}
DURATIONS_DTYPE = "<f4"
KEEP_DTYPE = "|u1"
TEXT = "text"
#: Every how many keys the key column remembers a line start (memory: 8 bytes per this many samples).
KEY_STRIDE = 1024


def column_file_name(index_name: str, column: str) -> str:
    """``index.json`` -> ``index.durations.f32``; a part's index names its own files."""
    stem = index_name[: -len(".json")] if index_name.endswith(".json") else index_name
    return f"{stem}.{column}.{_EXTENSIONS[column]}"


def write_durations(root: str | os.PathLike, index_name: str, durations: np.ndarray) -> ColumnFile:
    """Write the durations column (atomically) and return its index entry."""
    values = np.ascontiguousarray(durations, dtype=DURATIONS_DTYPE)
    check_durations(values, f"{Path(root)}: durations")
    return write_column_file(Path(root) / column_file_name(index_name, DURATIONS), [values.tobytes()], DURATIONS_DTYPE,
                         len(values))


def write_keys(root: str | os.PathLike, index_name: str, keys: Iterable[str]) -> ColumnFile:
    """Write the keys column (atomically), one key per line, and return its index entry."""
    keys = list(keys)
    for key in keys:
        if not key or "\n" in key:
            raise ValueError(f"invalid sample key {key!r} for the keys column")
    blob = ("\n".join(keys) + "\n").encode("utf-8") if keys else b""
    return write_column_file(Path(root) / column_file_name(index_name, KEYS), [blob], TEXT, len(keys))


def write_keep(root: str | os.PathLike, index_name: str, keep: np.ndarray) -> ColumnFile:
    """Write the keep column (atomically), 1 or 0 per sample, and return its index entry."""
    values = np.ascontiguousarray(keep, dtype=bool).astype(KEEP_DTYPE)
    return write_column_file(Path(root) / column_file_name(index_name, KEEP), [values.tobytes()], KEEP_DTYPE,
                             len(values))


def concatenate_columns(root: str | os.PathLike, index_name: str, column: str,
                        parts: list[tuple[np.ndarray, ColumnFile]]) -> ColumnFile:
    """One column file made of the parts' opened columns in order (``pack --merge``), streamed from their mappings."""
    def pieces() -> Iterator[bytes]:
        for values, _ in parts:
            raw = values.view(np.uint8)
            for start in range(0, len(raw), 2**24):
                yield raw[start : start + 2**24].tobytes()

    dtype = DURATIONS_DTYPE if column == DURATIONS else TEXT
    return write_column_file(Path(root) / column_file_name(index_name, column), pieces(), dtype,
                             sum(entry.length for _, entry in parts))


def write_column_file(path: Path, pieces: Iterable[bytes], dtype: str, length: int) -> ColumnFile:
    """Write a column file from ``pieces`` (streamed, hashed as it goes), atomically."""
    digest, size = hashlib.sha256(), 0
    with atomic_file(path) as f:
        for piece in pieces:
            f.write(piece)
            digest.update(piece)
            size += len(piece)
    return ColumnFile(path.name, dtype, length, size, digest.hexdigest())


def open_column(
    root_url: str, column: ColumnFile, storage_options: dict | None = None, retry: RetryPolicy = RetryPolicy()
) -> np.ndarray:
    """A read-only array over the column file, after checking its size and sha256.

    Local files are memory-mapped in place. Remote files are streamed into a
    private temporary file that is mapped and unlinked at once (the mapping
    keeps it alive, nothing is left behind). Text columns map as uint8 bytes.
    """
    url = child_url(root_url, column.file)
    if is_local(url):
        path = local_path(url)
        try:
            size = os.path.getsize(path)
        except OSError as error:
            raise DatasetIndexError(f"{url}: cannot read column file: {error.strerror or error}") from None
        if size != column.bytes:
            raise DatasetIndexError(f"{url}: column file is {size} bytes, the index says {column.bytes} (truncated?)")
        if sha256_of_file(path) != column.sha256:
            raise DatasetIndexError(f"{url}: column file's sha256 does not match the index (corrupt or replaced)")
        return _map(path, column)
    handle, tmp = tempfile.mkstemp(prefix="streamtrain-column-")
    os.close(handle)
    try:
        fetch_to_file(url, column.bytes, column.sha256, tmp, storage_options, retry)
        return _map(tmp, column)
    except ReadError as error:
        raise DatasetIndexError(f"column file: {error}") from None
    finally:
        os.unlink(tmp)


def _map(path: str, column: ColumnFile) -> np.ndarray:
    dtype = np.uint8 if column.dtype == TEXT else np.dtype(column.dtype)
    count = column.bytes if column.dtype == TEXT else column.length
    if count == 0:
        return np.zeros(0, dtype=dtype)
    if column.dtype != TEXT and count * dtype.itemsize != column.bytes:
        raise DatasetIndexError(f"{path}: {column.bytes} bytes cannot hold {count} values of {column.dtype}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class KeyColumn:
    """Sample keys by position, from a text column, without an offset per sample.

    Line starts are found once, by a vectorised scan, and only every
    ``KEY_STRIDE``-th is kept: a lookup scans at most that many lines.
    """

    def __init__(self, blob: np.ndarray, length: int, origin: str):
        self.blob = blob  # uint8, newline-terminated keys
        self.length = length
        self.origin = origin
        self._starts: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def _line_starts(self) -> np.ndarray:
        if self._starts is None:
            kept, seen, chunk = [np.zeros(1, dtype=np.int64)], 0, 2**26
            for begin in range(0, len(self.blob), chunk):
                ends = np.flatnonzero(self.blob[begin : begin + chunk] == 10) + begin + 1
                # line n starts after the newline ending line n - 1: keep those with n % stride == 0
                numbers = np.arange(seen + 1, seen + 1 + len(ends))
                kept.append(ends[numbers % KEY_STRIDE == 0])
                seen += len(ends)
            if seen != self.length:
                raise DatasetIndexError(f"{self.origin}: keys column has {seen} lines, the index says {self.length}")
            self._starts = np.concatenate(kept)
        return self._starts

    def __getitem__(self, position: int) -> str:
        if not 0 <= position < self.length:
            raise IndexError(position)
        start = int(self._line_starts()[position // KEY_STRIDE])
        for _ in range(position % KEY_STRIDE):
            start = int(np.argmax(self.blob[start:] == 10)) + start + 1
        end = int(np.argmax(self.blob[start:] == 10)) + start
        return bytes(self.blob[start:end]).decode("utf-8")

    def range(self, first: int, end: int) -> list[str]:
        """Keys ``first .. end - 1``, in order."""
        if first >= end:
            return []
        begin = int(self._line_starts()[first // KEY_STRIDE])
        skip = first % KEY_STRIDE
        lines: list[str] = []
        position = begin
        while len(lines) < skip + end - first:
            stop = min(len(self.blob), position + 2**20)
            block = bytes(self.blob[position:stop])
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                raise DatasetIndexError(f"{self.origin}: keys column ends inside a key")
            lines += block[:cut].decode("utf-8").splitlines()
            position += cut
        return lines[skip : skip + end - first]


def save_index(root: str | os.PathLike, index: DatasetIndex, durations: np.ndarray, keys: Iterable[str],
               index_name: str = INDEX_NAME) -> DatasetIndex:
    """Write the per-sample column files, then ``index_name`` listing them (last, atomically).

    ``durations`` and ``keys`` are in dataset order (shard after shard).
    """
    _write_columns(Path(root), index, durations, keys, None, index_name)
    index.save(Path(root) / index_name)
    return index


def publish_index(out: Output, index: DatasetIndex, durations: np.ndarray, keys: Iterable[str],
                  index_name: str = INDEX_NAME, keep: np.ndarray | None = None) -> DatasetIndex:
    """``save_index`` at an output location: the column files are published first, the index last.

    ``keep`` (bool per sample, dataset order), for a pseudo-label column, is written as its keep column.
    """
    _write_columns(out.stage(index_name).parent, index, durations, keys, keep, index_name)
    publish_staged_index(out, index, index_name)
    return index


def _write_columns(root: Path, index: DatasetIndex, durations: np.ndarray, keys: Iterable[str],
                   keep: np.ndarray | None, index_name: str) -> None:
    index.columns = {DURATIONS: write_durations(root, index_name, durations), KEYS: write_keys(root, index_name, keys)}
    if keep is not None:
        index.columns[KEEP] = write_keep(root, index_name, keep)
    index.format_version = FORMAT_VERSION
    index.inline_durations = None
    if index.columns[DURATIONS].length != index.samples:
        raise DatasetIndexError(f"{root}: {index.columns[DURATIONS].length} durations for {index.samples} samples")


def publish_staged_index(out: Output, index: DatasetIndex, index_name: str = INDEX_NAME) -> None:
    """Publish the staged column files ``index`` lists, then write and publish ``index_name`` itself."""
    for column in index.columns.values():
        out.publish(column.file)
    index.save(out.stage(index_name))
    out.publish(index_name)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _key_hashes(keys: KeyColumn, chunk: int = 2**26) -> np.ndarray:
    """A 64-bit FNV-1a hash of every key, vectorised over keys (one pass per character position)."""
    hashes, position = [], 0
    while position < len(keys.blob):
        data = np.asarray(keys.blob[position : position + chunk])
        cut = len(data) - int(np.argmax(data[::-1] == 10)) if (data == 10).any() else 0
        if cut == 0:
            raise DatasetIndexError(f"{keys.origin}: keys column ends inside a key")
        data = data[:cut]
        ends = np.flatnonzero(data == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        lengths = ends - starts
        value = np.full(len(ends), _FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for offset in range(int(lengths.max(initial=0))):
                more = np.flatnonzero(lengths > offset)
                value[more] = (value[more] ^ data[starts[more] + offset].astype(np.uint64)) * _FNV_PRIME
        hashes.append(value)
        position += cut
    return np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)


def find_duplicate_key(columns: list[KeyColumn]) -> tuple[str, int, int] | None:
    """A key present twice across ``columns`` (taken as one sequence): (key, first position, second position).

    Hashes every key, sorts the hashes and compares the keys of equal hashes
    exactly: memory is 16 bytes per key, whatever the keys' length.
    """
    hashes = np.concatenate([_key_hashes(column) for column in columns]) if columns else np.zeros(0, np.uint64)
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order[1:]] == hashes[order[:-1]])
    starts = sample_offsets(np.array([len(column) for column in columns], dtype=np.int64))

    def key_at(position: int) -> str:
        part = int(np.searchsorted(starts, position, side="right") - 1)
        return columns[part][position - int(starts[part])]

    for i in same.tolist():
        first, second = sorted((int(order[i]), int(order[i + 1])))
        if key_at(first) == key_at(second):
            return key_at(first), first, second
    return None
