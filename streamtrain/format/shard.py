"""Tar shards in the WebDataset layout: members ``<key>.<ext>`` grouped by key.

Writing is deterministic (fixed mtime, owner and mode) so the same input gives
byte-identical shards, and atomic (a ``.tmp`` file renamed when complete).
Reading is ``streamtrain.format.shard_reader``'s; nothing decodes or unpickles anything here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from streamtrain.format.tar_layout import LayoutReader, MemberLayout

#: A key is a plain name: WebDataset splits member names at the first dot, and
#: keys become parts of file names, so dots and slashes are not allowed.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_key(key: str) -> None:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid sample key {key!r}: use letters, digits, '_' and '-' only")


def sanitize_key(name: str) -> str:
    """Turn a file path or id into a valid key (other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name).strip("_") or "_"


class _HashingWriter(io.RawIOBase):
    def __init__(self, f):
        self.f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks for the offset when it opens
        return self.bytes

    def write(self, data) -> int:
        self.f.write(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)


class ShardWriter:
    """Write one shard; ``close()`` renames it into place and returns (bytes, sha256)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp_path, "wb")
        self._hasher = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        check_key(key)
        for ext, data in members.items():
            self._tar.addfile(_member_info(key, ext, len(data)), io.BytesIO(data))
        self.samples += 1

    def bytes_if_added(self, key: str, members: dict[str, bytes]) -> int:
        """The size the closed shard would have with this sample added.

        Exact: tar headers, 512-byte block padding, the end-of-archive blocks and
        the final record padding included, so a packer can keep shards under a limit.
        """
        size = self._hasher.bytes
        for ext, data in members.items():
            header = _member_info(key, ext, len(data)).tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
            size += len(header) + -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        size += 2 * tarfile.BLOCKSIZE
        return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def close(self) -> tuple[int, str]:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self._hasher.bytes, self._hasher.sha256.hexdigest()

    def abort(self) -> None:
        """Drop the partial shard; never raises for the file (a full disk also fails the final flush)."""
        try:
            self._file.close()
        except OSError:
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)


def _member_info(key: str, ext: str, size: int) -> tarfile.TarInfo:
    """Fixed mtime, mode and owner: the same sample gives the same bytes anywhere."""
    info = tarfile.TarInfo(f"{key}.{ext}")
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def sample_layout(file: BinaryIO, origin: str, chunk: int = 4 * 2**20) -> tuple[list[str], list[MemberLayout]]:
    """Keys in stored order, and where each sample's members lie, from the headers (one pass over ``file``)."""
    reader = LayoutReader(origin)
    file.seek(0)
    while block := file.read(chunk):
        reader.feed(block)
    return reader.result()


def list_shard_keys(path: str | os.PathLike) -> list[str]:
    """Keys of a local shard, read from its headers only."""
    with open(path, "rb") as file:
        return sample_layout(file, str(path))[0]
