"""Resampling in numpy: torchaudio's Kaiser sinc kernel, applied as matrix products.

Neither the packer's workers nor the loader's need torch for audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided


#: torchaudio ``Resample(..., resampling_method="sinc_interp_kaiser", lowpass_filter_width=64,
#: rolloff=0.9475937167399596, beta=14.769656459379492)``, the "kaiser_best" filter.
_ZERO_CROSSINGS = 64
_ROLLOFF = 0.9475937167399596
_BETA = 14.769656459379492
#: Multiply-adds per matrix product. OpenBLAS (numpy's wheels) runs products up to
#: 2**18 on the calling thread and starts its thread pool for larger ones, which in
#: a worker process beside other workers costs more CPU than it saves (measured on
#: 60 s of audio: 41 ms of CPU instead of 7).
_PRODUCT_SIZE = 2**18
#: Output phases per matrix product: fewer read more zero taps, more make thin products.
_PHASES_PER_PRODUCT = 32


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (Kaiser window, 64 zero crossings).

    (T,) float32 -> (ceil(T * new_rate / orig_rate),) float32: torchaudio's
    ``Resample`` with the settings above, to float32 rounding (tested), without torch.
    """
    if orig_rate == new_rate:
        return waveform
    return _polyphase(orig_rate, new_rate)(np.asarray(waveform, dtype=np.float32))


@dataclass(frozen=True)
class _Group:
    """Output phases [first, last) of a block and the input taps [start, stop) they read."""

    first: int
    last: int
    start: int
    stop: int
    kernel: np.ndarray  # (stop - start) x (last - first) float32


@dataclass(frozen=True)
class _Polyphase:
    """torchaudio's strided convolution as matrix products over blocks of the input.

    Block b of ``block_in`` input samples gives ``block_out`` output samples; each
    output reads 2 x ``width`` taps, so the kernel is split into groups of phases
    that read neighbouring taps instead of one block-wide product that is mostly zeros.
    """

    orig: int  # both rates divided by their gcd
    new: int
    width: int
    block_in: int
    block_out: int
    groups: tuple[_Group, ...]
    rows: int  # blocks per product, to keep each under _PRODUCT_SIZE

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        length = len(waveform)
        padded = np.zeros(length + 2 * self.width + self.block_in, dtype=np.float32)
        padded[self.width : self.width + length] = waveform
        blocks = length // self.block_in + 1
        frames = as_strided(padded, (blocks, 2 * self.width + self.block_in), (4 * self.block_in, 4), writeable=False)
        out = np.empty((blocks, self.block_out), dtype=np.float32)
        for row in range(0, blocks, self.rows):
            rows = slice(row, row + self.rows)
            for group in self.groups:
                np.matmul(frames[rows, group.start : group.stop], group.kernel, out=out[rows, group.first : group.last])
        return out.reshape(-1)[: math.ceil(self.new * length / self.orig)]


@lru_cache(maxsize=16)
def _polyphase(orig_rate: int, new_rate: int) -> _Polyphase:
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(_ZERO_CROSSINGS * orig / (min(orig, new) * _ROLLOFF))
    # Blocks of `repeat` periods, so that a block is longer than the taps its group of
    # phases reads: BLAS then reads the overlapping rows of `frames` where they lie.
    repeat = -(-4 * width // orig)
    block_in, block_out = orig * repeat, new * repeat
    count = max(2, block_out // _PHASES_PER_PRODUCT)
    groups = tuple(
        _group(orig, new, width, block_out * i // count, block_out * (i + 1) // count, block_in) for i in range(count)
    )
    largest = max((g.stop - g.start) * (g.last - g.first) for g in groups)
    return _Polyphase(orig, new, width, block_in, block_out, groups, max(1, _PRODUCT_SIZE // largest))


def _group(orig: int, new: int, width: int, first: int, last: int, block_in: int) -> _Group:
    """Phases [first, last) of a block of ``block_in // orig`` periods: phase p is
    torchaudio's phase p % new, shifted by (p // new) periods. Taps past the 64th
    zero crossing (where torchaudio's kernel is below 1e-16) are left out."""
    phases = np.arange(first, last)
    taps = np.arange(2 * width + block_in)[None, :] - (phases // new * orig)[:, None]  # column in the period's kernel
    t = _kernel_time(orig, new, width, phases % new, taps)
    inside = (np.abs(t) < _ZERO_CROSSINGS) & (taps >= 0) & (taps < 2 * width + orig)
    columns = np.flatnonzero(inside.any(axis=0))
    start, stop = int(columns[0]), int(columns[-1]) + 1
    kernel = np.where(inside, _kaiser_sinc(t, min(orig, new) * _ROLLOFF / orig), 0.0)[:, start:stop]
    return _Group(first, last, start, stop, np.ascontiguousarray(kernel.T, dtype=np.float32))


def _kernel_time(orig: int, new: int, width: int, phase: np.ndarray, tap: np.ndarray) -> np.ndarray:
    """Time of ``tap`` for output ``phase``, in zero crossings, rounded as torchaudio
    computes it: the phase offset in float32, the rest in float64."""
    offset = (np.float32(-1) * phase.astype(np.float32) / np.float32(new)).astype(np.float64)
    return (offset[:, None] + (tap - width) / orig) * (min(orig, new) * _ROLLOFF)


def _kaiser_sinc(t: np.ndarray, scale: float) -> np.ndarray:
    beta = float(np.float32(_BETA))  # torchaudio holds beta, and i0(beta), in float32
    window = np.i0(beta * np.sqrt(np.clip(1 - (t / _ZERO_CROSSINGS) ** 2, 0, None))) / float(np.float32(np.i0(beta)))
    t = t * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    return sinc * (window * scale)
