"""Carrying batches' audio from DataLoader workers to the main process through reused shared memory.

Sending a tensor the torch way costs a fresh shared-memory segment per batch:
its pages are faulted in, zeroed and mapped twice, about 2 ms of a worker's
CPU per 2.5 MB batch on the development machine, more than decoding the batch.
Instead the loader maps one anonymous shared buffer before the workers fork,
cut into slots: a few per worker. A worker pads a batch's audio straight into
one of its free slots and sends only the slot's number; the main process
copies the audio out into its own tensor as the batch arrives and marks the
slot free. A batch too wide for a slot, or a worker whose slots are all taken,
falls back to the torch way.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np
import torch

#: Slots per worker: the batches DataLoader lets a worker have in flight, plus the one being written.
SPARE_SLOTS = 2


class AudioSlots:
    def __init__(self, workers: int, per_worker: int, floats_per_slot: int):
        self.per_worker = per_worker
        self.floats = max(1, floats_per_slot)
        count = workers * per_worker
        self._memory = mmap.mmap(-1, count * (self.floats * 4 + 1))  # anonymous, MAP_SHARED: inherited by fork
        self.audio = np.frombuffer(self._memory, dtype=np.float32, count=count * self.floats).reshape(count, -1)
        self.busy = np.frombuffer(self._memory, dtype=np.uint8, offset=count * self.floats * 4, count=count)
        self._next = [0] * workers

    def pad_into(self, worker: int, waveforms: Sequence[np.ndarray]) -> tuple[int, tuple[int, int]] | None:
        """(slot, shape) holding ``waveforms`` zero-padded (worker side), or None if they do not fit a free slot."""
        width = max((len(w) for w in waveforms), default=0)
        if len(waveforms) * width > self.floats:
            return None
        for _ in range(self.per_worker):
            slot = worker * self.per_worker + self._next[worker]
            self._next[worker] = (self._next[worker] + 1) % self.per_worker
            if not self.busy[slot]:
                break
        else:
            return None
        rows = self.audio[slot, : len(waveforms) * width].reshape(len(waveforms), width)
        for row, wave in zip(rows, waveforms):
            row[: len(wave)] = wave
            row[len(wave) :] = 0.0
        self.busy[slot] = 1
        return slot, (len(waveforms), width)

    def take(self, slot: int, shape: tuple[int, int]) -> torch.Tensor:
        """The slot's audio as a tensor of the main process's own; the slot is free again."""
        rows, width = shape
        audio = torch.from_numpy(self.audio[slot, : rows * width].reshape(rows, width).copy())
        self.busy[slot] = 0
        return audio


def slot_floats(batch_sizes: np.ndarray, longest_seconds: np.ndarray, sample_rate: int) -> int:
    """Floats a slot needs for the widest planned batch, with a margin for decoded lengths that
    differ from the index's durations (rounding, resampling)."""
    if not len(batch_sizes):
        return 1
    return int((batch_sizes * (longest_seconds * sample_rate * 1.01 + 64)).max())
