"""Out-of-memory back-off: redo the same batch in more, smaller pieces, and keep that size.

Used for the training step (pieces are micro-batches whose gradients
accumulate, so the samples and the effective batch stay the same) and for
evaluation (pieces are transcribed one after the other). The retry starts from
the random state the failed attempt started from (dropout, SpecAugment), so
where the out-of-memory error struck does not change the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("streamtrain.train")
T = TypeVar("T")


class OomBackoff:
    def __init__(self, what: str, pieces: int = 1):
        if pieces < 1:
            raise ValueError(f"pieces must be >= 1, got {pieces}")
        self.what = what
        self.pieces = pieces

    def run(self, size: int, work: Callable[[list[slice]], T], before_retry: Callable[[], None] = lambda: None) -> T:
        """``work(slices)`` over ``size`` rows, split into ``self.pieces`` contiguous slices."""
        random_state = _random_state()
        while True:
            try:
                return work(split(size, self.pieces))
            except torch.OutOfMemoryError:
                if self.pieces >= size:
                    raise
                before_retry()
                _restore(random_state)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.pieces = min(size, self.pieces * 2)
                log.warning("out of memory in %s: retrying the same batch in %d pieces (kept from now on)",
                            self.what, self.pieces)


def split(size: int, pieces: int) -> list[slice]:
    pieces = max(1, min(pieces, size))
    bounds = [size * i // pieces for i in range(pieces + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(pieces)]


def _random_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _restore(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
