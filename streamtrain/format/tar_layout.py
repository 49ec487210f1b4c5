"""Where a tar shard's samples lie, found while its bytes stream by.

The reader is fed the shard's bytes in order, in chunks of any size (the same
pass that hashes it, or that downloads it), and picks out only the 512-byte
headers: ``(key, extension, data offset, size)`` of every regular file, grouped
by key as WebDataset groups them. Then each sample's members can be read by
offset, with no second pass over the shard and no per-member object.

It reads POSIX ustar headers, with the pax (``x``) and GNU (``L``) extended
headers that other writers use for long names; other member types (directories,
links) are skipped, as WebDataset skips them. A header with a bad checksum, or a
member that ends past the end of the shard, is a ``ShardError`` naming the shard.
"""

from __future__ import annotations

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_PAX, _PAX_GLOBAL, _GNU_LONG_NAME, _GNU_LONG_LINK = b"x", b"g", b"L", b"K"

#: A sample's members as (extension, data offset in the shard, size).
MemberLayout = list[tuple[str, int, int]]


class ShardError(ValueError):
    """A shard that cannot be read: truncated, corrupt or not a tar file."""


class LayoutReader:
    """Feed the shard's bytes with ``feed``; ``result()`` gives (keys, each sample's members)."""

    def __init__(self, origin: str):
        self.origin = origin
        self.keys: list[str] = []
        self.layout: list[MemberLayout] = []
        self._seen = 0  # bytes fed so far
        self._wanted = 0  # offset of the next header
        self._partial = bytearray()  # a header (or extended header's data) split across chunks
        self._extended: tuple[bytes, int] | None = None  # (type, size) of an extended header's data being read
        self._after_extended = 0  # where the header after that data is
        self._override: dict[str, str] = {}  # from extended headers, for the next member
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        start, self._seen = self._seen, self._seen + len(chunk)
        view = memoryview(chunk)
        while not self._ended and self._wanted < self._seen:
            need = self._extended[1] if self._extended else BLOCK
            offset = self._wanted + len(self._partial) - start
            piece = view[offset : offset + need - len(self._partial)]
            self._partial += piece
            if len(self._partial) < need:
                return
            data, self._partial = bytes(self._partial), bytearray()
            if self._extended:
                self._take_extended(data)
            else:
                self._take_header(data)

    def result(self) -> tuple[list[str], list[MemberLayout]]:
        """The layout, once every byte was fed; ShardError if the shard stops inside a member."""
        if not self._ended and (self._partial or self._extended or self._wanted > self._seen):
            raise ShardError(f"{self.origin}: corrupt or truncated tar: it ends inside a member")
        return self.keys, self.layout

    def _take_header(self, block: bytes) -> None:
        header_at = self._wanted
        if block == bytes(BLOCK):  # end of archive
            self._ended = True
            return
        if _checksum(block) != _number(block[148:156], self.origin):
            raise ShardError(f"{self.origin}: corrupt tar: bad header checksum at byte {header_at}")
        kind = block[156:157]
        size = int(self._override.pop("size", _number(block[124:136], self.origin)))
        self._wanted = header_at + BLOCK + -(-size // BLOCK) * BLOCK
        if kind in (_PAX, _PAX_GLOBAL, _GNU_LONG_NAME, _GNU_LONG_LINK):
            self._extended = (kind, size)
            self._after_extended = self._wanted
            self._wanted = header_at + BLOCK
            return
        name = self._override.pop("path", None) or _name(block)
        self._override.clear()
        if kind in _REGULAR:
            self._add(name, header_at + BLOCK, size)

    def _take_extended(self, data: bytes) -> None:
        kind, _ = self._extended
        self._extended = None
        self._wanted = self._after_extended
        if kind == _PAX:
            self._override.update(_pax_records(data, self.origin))
        elif kind == _GNU_LONG_NAME:
            self._override["path"] = data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _add(self, name: str, offset: int, size: int) -> None:
        base = name.rsplit("/", 1)[-1]
        key, _, ext = base.partition(".")
        if not ext:
            raise ShardError(f"{self.origin}: member {name!r} has no extension")
        if not self.keys or self.keys[-1] != key:
            self.keys.append(key)
            self.layout.append([])
        self.layout[-1].append((ext, offset, size))


def _checksum(block: bytes) -> int:
    """The ustar checksum: the header's bytes summed, its checksum field counted as spaces."""
    return sum(block) - sum(block[148:156]) + 8 * 32


def _number(field: bytes, origin: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for sizes over 8 GB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardError(f"{origin}: corrupt or not a tar file (bad number {bytes(field)!r})") from None


def _name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _pax_records(data: bytes, origin: str) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records; only the ones that change where a member lies or its name matter."""
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        space = data.find(b" ", position)
        try:
            length = int(data[position:space])
        except ValueError:
            raise ShardError(f"{origin}: corrupt tar: bad pax record") from None
        key, _, value = data[space + 1 : position + length - 1].partition(b"=")
        if key in (b"path", b"size"):
            records[key.decode()] = value.decode("utf-8", "replace")
        position += length
    return records
