"""The dataset index: ``index.json`` at a dataset's root, and the column files it lists.

Format 2 (written by this version) keeps JSON for what is per dataset and per
shard, and binary files for what is per sample, so that a dataset of 10^8
utterances opens in seconds on every rank:

- the header: format, version, codec, sample rate, opus bitrate, totals, and
  for a sidecar column (cached features, pseudo-labels) what produced it;
- ``shards``: one list per field (name, samples, seconds, bytes, sha256,
  max_seconds), so 10^6 shards parse into arrays instead of 10^6 objects;
- ``columns``: the per-sample column files beside ``index.json`` (durations,
  keys; see ``streamtrain.format.columns``), each with its dtype, length,
  size and sha256.

Format 1 (per-sample durations inside each shard's JSON entry) still opens,
with a warning: ``streamtrain index upgrade DATASET`` converts it in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from streamtrain.storage.atomic import write_json_atomic

FORMAT_NAME = "streamtrain-shards"
FORMAT_VERSION = 2
LEGACY_VERSION = 1
INDEX_NAME = "index.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHARD_FIELDS = ("name", "samples", "seconds", "bytes", "sha256", "max_seconds")


class DatasetIndexError(ValueError):
    """An index.json (or a column file it lists) that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the dataset root, e.g. "shard-000000.tar"
    samples: int
    seconds: float
    bytes: int
    sha256: str
    max_seconds: float = 0.0


class ShardList(Sequence):
    """The shards of a dataset, held by field: one array per numeric field, one list per string field.

    Indexing gives a ``ShardInfo``; the arrays serve vectorised code (plans, totals).
    """

    def __init__(self, names: list[str], samples, seconds, sizes, sha256: list[str], max_seconds):
        self.names = list(names)
        self.samples = np.asarray(samples, dtype=np.int64)
        self.seconds = np.asarray(seconds, dtype=np.float64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.sha256 = list(sha256)
        self.max_seconds = np.asarray(max_seconds, dtype=np.float64)
        lengths = {len(self.names), len(self.samples), len(self.seconds), len(self.sizes), len(self.sha256),
                   len(self.max_seconds)}
        if len(lengths) != 1:
            raise DatasetIndexError(f"shard fields have different lengths {sorted(lengths)}")

    @classmethod
    def of(cls, shards: Sequence[ShardInfo]) -> "ShardList":
        return cls([s.name for s in shards], [s.samples for s in shards], [s.seconds for s in shards],
                   [s.bytes for s in shards], [s.sha256 for s in shards], [s.max_seconds for s in shards])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ShardList(self.names[i], self.samples[i], self.seconds[i], self.sizes[i], self.sha256[i],
                             self.max_seconds[i])
        return ShardInfo(self.names[i], int(self.samples[i]), float(self.seconds[i]), int(self.sizes[i]),
                         self.sha256[i], float(self.max_seconds[i]))

    def __iter__(self) -> Iterator[ShardInfo]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other: "ShardList") -> "ShardList":
        return ShardList(self.names + other.names, np.concatenate([self.samples, other.samples]),
                         np.concatenate([self.seconds, other.seconds]), np.concatenate([self.sizes, other.sizes]),
                         self.sha256 + other.sha256, np.concatenate([self.max_seconds, other.max_seconds]))

    @cached_property
    def offsets(self) -> np.ndarray:
        """(S + 1,) position of each shard's first sample in the dataset, plus the total."""
        return sample_offsets(self.samples)

    def to_json(self) -> dict:
        return {
            "name": self.names,
            "samples": self.samples.tolist(),
            "seconds": [round(x, 6) for x in self.seconds.tolist()],
            "bytes": self.sizes.tolist(),
            "sha256": self.sha256,
            "max_seconds": [round(x, 6) for x in self.max_seconds.tolist()],
        }


def sample_offsets(counts: np.ndarray) -> np.ndarray:
    """(len(counts) + 1,) int64: where each run of ``counts`` starts in their concatenation, plus the total."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start, start + size)`` for each pair, vectorised."""
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = sample_offsets(sizes)
    out = np.repeat(np.asarray(starts, dtype=np.int64) - offsets[:-1], sizes)
    out += np.arange(offsets[-1], dtype=np.int64)
    return out


@dataclass(frozen=True)
class ColumnFile:
    """A per-sample column stored in a file beside ``index.json``."""

    file: str  # name relative to the dataset root
    dtype: str  # numpy dtype string, e.g. "<f4", or "text" (newline-terminated lines)
    length: int  # values (samples)
    bytes: int
    sha256: str


@dataclass
class DatasetIndex:
    codec: str
    sample_rate: int | None  # None when packed with --sample-rate keep (rates vary)
    shards: ShardList = field(default_factory=lambda: ShardList.of([]))
    columns: dict[str, ColumnFile] = field(default_factory=dict)
    rejected: int = 0
    created_by: str = ""
    #: The opus encoder's target (bit/s) when packed with --bitrate; None: the encoder's default.
    bitrate: int | None = None
    #: Set for a sidecar column (cached features, pseudo-labels): its name and
    #: the fingerprint of what produced it; its shards align with a base dataset's.
    column: dict | None = None
    format_version: int = FORMAT_VERSION
    #: Format 1 only: the per-sample durations read from the JSON itself.
    inline_durations: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return int(self.shards.samples.sum())

    @property
    def seconds(self) -> float:
        return float(self.shards.seconds.sum())

    @property
    def bytes(self) -> int:
        return int(self.shards.sizes.sum())

    @property
    def max_seconds(self) -> float:
        return float(self.shards.max_seconds.max()) if len(self.shards) else 0.0

    @cached_property
    def fingerprint(self) -> str:
        """What the dataset holds, not where it lives: the same shards give the same fingerprint
        (also after ``index upgrade`` or a move to another bucket)."""
        digest = hashlib.sha256()
        digest.update(self.shards.samples.astype("<i8").tobytes())
        digest.update("\n".join(self.shards.sha256).encode())
        return digest.hexdigest()[:24]

    def to_json(self) -> dict:
        if self.format_version != FORMAT_VERSION:
            raise DatasetIndexError(f"only format {FORMAT_VERSION} indexes are written")
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            **({"bitrate": self.bitrate} if self.bitrate is not None else {}),
            "created_by": self.created_by,
            **({"column": self.column} if self.column is not None else {}),
            "totals": {
                "samples": self.samples,
                "seconds": round(self.seconds, 6),
                "bytes": self.bytes,
                "shards": len(self.shards),
                "rejected": self.rejected,
            },
            "shards": self.shards.to_json(),
            "columns": {name: _column_json(column) for name, column in self.columns.items()},
        }

    @classmethod
    def from_json(cls, data: dict, origin: str = "index") -> "DatasetIndex":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise DatasetIndexError(f"{origin}: not a {FORMAT_NAME} index (field 'format')")
        version = data.get("format_version")
        if version not in (FORMAT_VERSION, LEGACY_VERSION):
            raise DatasetIndexError(
                f"{origin}: format_version {version!r} is not supported (this streamtrain reads 1 and 2)"
            )
        try:
            if version == LEGACY_VERSION:
                shards, durations, columns = _legacy_shards(data["shards"], origin)
            else:
                shards = ShardList(*(data["shards"][name] for name in SHARD_FIELDS))
                durations = None
                columns = {name: ColumnFile(**value) for name, value in data["columns"].items()}
            index = cls(
                codec=data["codec"],
                sample_rate=data["sample_rate"],
                shards=shards,
                columns=columns,
                rejected=data.get("totals", {}).get("rejected", 0),
                created_by=data.get("created_by", ""),
                bitrate=data.get("bitrate"),
                column=data.get("column"),
                format_version=version,
                inline_durations=durations,
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, DatasetIndexError):
                raise DatasetIndexError(f"{origin}: {error}") from None
            raise DatasetIndexError(f"{origin}: malformed index: {type(error).__name__}: {error}") from error
        _check_shard_names_and_digests(shards, origin)
        for column in columns.values():
            check_file_name(column.file, origin, "column file")
            if column.length != index.samples:
                raise DatasetIndexError(
                    f"{origin}: column file {column.file!r} holds {column.length} values for {index.samples} samples"
                )
        if (shards.samples < 0).any() or (shards.sizes < 0).any():
            raise DatasetIndexError(f"{origin}: negative sample counts or sizes")
        if durations is not None:
            check_durations(durations, origin)
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader sees the old file or the whole new one."""
        write_json_atomic(path, self.to_json())


def _column_json(column: ColumnFile) -> dict:
    return {"file": column.file, "dtype": column.dtype, "length": column.length, "bytes": column.bytes,
            "sha256": column.sha256}


def _legacy_shards(entries: list[dict], origin: str) -> tuple[ShardList, np.ndarray, dict]:
    """Format 1: a list of shard objects, each with its samples' durations inline."""
    shards = ShardList.of([
        ShardInfo(e["name"], e["samples"], e["seconds"], e["bytes"], e["sha256"], e.get("max_seconds", 0.0))
        for e in entries
    ])
    for entry in entries:
        if len(entry["durations"]) != entry["samples"]:
            raise DatasetIndexError(
                f"shard {entry['name']!r} lists {len(entry['durations'])} durations for {entry['samples']} samples"
            )
    durations = np.array([d for e in entries for d in e["durations"]], dtype=np.float32)
    return shards, durations, {}


def check_durations(durations: np.ndarray, origin: str) -> None:
    """Durations must be finite and not negative (a NaN would silently break batching by seconds)."""
    bad = ~np.isfinite(durations) | (durations < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetIndexError(
            f"{origin}: {int(bad.sum())} sample duration(s) are negative, NaN or infinite "
            f"(the first is sample {first}: {float(durations[first])!r})"
        )


def load_index(path: str | os.PathLike) -> DatasetIndex:
    """Load ``index.json`` from a local dataset folder or from the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetIndexError(f"{path}: no index.json (is this a packed dataset?)") from None
    return parse_index(text, str(path))


def parse_index(text: str, origin: str) -> DatasetIndex:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetIndexError(f"{origin}: invalid JSON: {error}") from error
    return DatasetIndex.from_json(data, origin=origin)


def _check_shard_names_and_digests(shards: ShardList, origin: str) -> None:
    """Every shard name plain, every digest a sha256: at 10^6 shards checked over joined strings, in C;
    only when that finds a fault is each entry checked in Python, to name the first bad one."""
    if not (_all_plain_names(shards.names) and _all_sha256(shards.sha256)):
        for name, digest in zip(shards.names, shards.sha256):
            check_file_name(name, origin, "shard")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise DatasetIndexError(f"{origin}: the sha256 of shard {name!r} is not a sha256 digest: {digest!r}")


def _all_plain_names(names: Sequence) -> bool:
    """What ``check_file_name`` asks of each name, asked of all of them at once."""
    try:
        joined = "\n" + "\n".join(names) + "\n"
    except TypeError:
        return False
    return (joined.count("\n") == len(names) + 1 and "\n\n" not in joined and "\n." not in joined
            and "/" not in joined and "\\" not in joined)


def _all_sha256(digests: Sequence) -> bool:
    try:
        joined = "".join(digests).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        return False
    return set(map(len, digests)) <= {64} and not joined.translate(None, b"0123456789abcdef")


def check_file_name(name: str, origin: str, what: str) -> None:
    """File names come from data and become paths: refuse anything but a plain file name."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith("."):
        raise DatasetIndexError(f"{origin}: unsafe {what} name {name!r}")
