"""The dataset index: ``index.json`` at a dataset's root.

It lists every shard with its sample count, audio seconds, bytes and sha256,
plus the dataset's codec, sample rate and format version. The loader plans an
epoch from the index alone, without opening a shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_NAME = "streamtrain-shards"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"


class DatasetIndexError(ValueError):
    """An index.json that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the dataset root, e.g. "shard-000000.tar"
    samples: int
    seconds: float
    bytes: int
    sha256: str
    max_seconds: float = 0.0
    #: Duration of each sample in stored order, in seconds (3 decimals): the
    #: loader plans duration-based batches from the index without reading audio.
    durations: list[float] = field(default_factory=list)


@dataclass
class DatasetIndex:
    codec: str
    sample_rate: int | None  # None when packed with --sample-rate keep (rates vary)
    shards: list[ShardInfo] = field(default_factory=list)
    rejected: int = 0
    created_by: str = ""
    #: The opus encoder's target (bit/s) when packed with --bitrate; None: the encoder's default.
    bitrate: int | None = None
    #: Set for a sidecar column (cached features, pseudo-labels): its name and
    #: the fingerprint of what produced it; its shards align with a base dataset's.
    column: dict | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)

    @property
    def seconds(self) -> float:
        return sum(shard.seconds for shard in self.shards)

    @property
    def bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)

    @property
    def max_seconds(self) -> float:
        return max((shard.max_seconds for shard in self.shards), default=0.0)

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "format_version": self.format_version,
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
            "shards": [asdict(shard) for shard in self.shards],
        }

    @classmethod
    def from_json(cls, data: dict, origin: str = "index") -> "DatasetIndex":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise DatasetIndexError(f"{origin}: not a {FORMAT_NAME} index (field 'format')")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetIndexError(
                f"{origin}: format_version {version!r} is not supported (this streamtrain reads {FORMAT_VERSION})"
            )
        try:
            shards = [ShardInfo(**shard) for shard in data["shards"]]
            index = cls(
                codec=data["codec"],
                sample_rate=data["sample_rate"],
                shards=shards,
                rejected=data.get("totals", {}).get("rejected", 0),
                created_by=data.get("created_by", ""),
                bitrate=data.get("bitrate"),
                column=data.get("column"),
            )
        except (KeyError, TypeError) as error:
            raise DatasetIndexError(f"{origin}: malformed index: {error}") from error
        for shard in shards:
            _check_shard_name(shard.name, origin)
            if len(shard.durations) != shard.samples:
                raise DatasetIndexError(
                    f"{origin}: shard {shard.name!r} lists {len(shard.durations)} durations for {shard.samples} samples"
                )
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader sees the old file or the whole new one."""
        write_json_atomic(path, self.to_json())


def load_index(path: str | os.PathLike) -> DatasetIndex:
    """Load ``index.json`` from a dataset folder or from the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetIndexError(f"{path}: no index.json (is this a packed dataset?)") from None
    except json.JSONDecodeError as error:
        raise DatasetIndexError(f"{path}: invalid JSON: {error}") from error
    return DatasetIndex.from_json(data, origin=str(path))


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_shard_name(name: str, origin: str) -> None:
    """Shard names come from data and become paths: refuse anything but a plain file name."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise DatasetIndexError(f"{origin}: unsafe shard name {name!r}")
