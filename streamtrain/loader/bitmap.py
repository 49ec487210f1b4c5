"""Sets of ids as packed bitmaps, and their text form in JSON (base64 of ``numpy.packbits``)."""

from __future__ import annotations

import base64

import numpy as np


class Bitmap:
    """A set of the ids ``0 .. size-1``: one bit each, most significant bit first in each byte."""

    def __init__(self, size: int, packed: np.ndarray | None = None):
        self.size = int(size)
        self.packed = np.zeros((self.size + 7) // 8, dtype=np.uint8) if packed is None else packed

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> "Bitmap":
        return cls(len(mask), np.packbits(np.asarray(mask, dtype=bool)))

    @classmethod
    def from_text(cls, text: str, size: int) -> "Bitmap":
        """The inverse of ``to_text``; ValueError when the text is not base64 or holds another size."""
        packed = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8).copy()
        if len(packed) != (size + 7) // 8:
            raise ValueError(f"a bitmap of {len(packed)} bytes cannot hold {size} bits")
        return cls(size, packed)

    def to_text(self) -> str:
        return base64.b64encode(self.packed.tobytes()).decode()

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.packed, count=self.size).astype(bool)

    def has(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return (self.packed[ids >> 3] & _flags(ids)) != 0

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Insert ``ids``; returns those that were in the set already (or twice in ``ids``)."""
        unique, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        present = self.has(unique)
        np.bitwise_or.at(self.packed, unique >> 3, _flags(unique))
        return unique[present | (counts > 1)]

    def count(self) -> int:
        return int(np.unpackbits(self.packed, count=self.size).sum())

    def __or__(self, other: "Bitmap") -> "Bitmap":
        return Bitmap(self.size, self.packed | other.packed)

    def missing(self, limit: int) -> tuple[int, list[int]]:
        """(how many ids are not in the set, the first ``limit`` of them)."""
        absent = ~self.mask()
        return int(absent.sum()), np.flatnonzero(absent)[:limit].tolist()


def _flags(ids: np.ndarray) -> np.ndarray:
    return np.right_shift(0x80, ids & 7).astype(np.uint8)
