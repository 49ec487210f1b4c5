"""Audio decoding, encoding and resampling.

soundfile (libsndfile) decodes, and encodes flac and wav; opus is encoded by
libopus itself where the system has it (``streamtrain.opus``), so its complexity
can be chosen. Resampling is numpy (torchaudio's Kaiser sinc kernel, applied as
matrix products), so neither the packer's workers nor the loader's need torch for
audio. Waveforms are float32 numpy arrays of shape (T,) in [-1, 1) once mixed to mono.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile
from numpy.lib.stride_tricks import as_strided

from streamtrain.opus import OpusError, encode_opus, libopus

#: Extensions the loader and packer decode as audio. Nothing else in a shard is
#: ever decoded as audio, and nothing is ever unpickled.
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "opus", "mp3")

#: Codec name -> (member extension, soundfile format, soundfile subtype).
CODECS = {
    "flac": ("flac", "FLAC", "PCM_16"),
    "pcm16": ("wav", "WAV", "PCM_16"),
    "opus": ("opus", "OGG", "OPUS"),
}

#: Rates libsndfile's Opus encoder accepts.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: The bitrates libsndfile's opus encoder takes (bit/s, per channel), lowest and highest.
OPUS_BITRATES = (6000, 256000)
#: libopus's complexity for opus when none is given. Measured on espeak-ng speech at the
#: default bitrate (benchmarks/pack_bench.py): 4 encodes 1.7x faster than 10 and keeps most
#: of its fidelity; 0-3 are faster still but as far from the source as 10 at 16 kbit/s.
DEFAULT_OPUS_COMPLEXITY = 4

_SOUNDFILE_FORMAT_TO_EXT = {"FLAC": "flac", "WAV": "wav", "MP3": "mp3"}


class AudioError(ValueError):
    """Audio that cannot be decoded, encoded or resampled."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int
    ext: str  # the extension a stored copy of these bytes gets ("flac", "wav", ...)


def probe(source: str | bytes) -> AudioInfo:
    """Read the header of a path or of encoded bytes."""
    try:
        return _audio_info(soundfile.info(_as_file(source)))
    except Exception as error:  # soundfile raises several types, RuntimeError included
        raise AudioError(f"cannot read audio header: {error}") from error


def decode(source: str | bytes, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Decode frames [start, stop) of a path or encoded bytes to mono float32.

    Returns (waveform of shape (T,), sample rate). Multi-channel audio is
    averaged to mono. 16-bit sources decode to exactly ``int / 32768``: they are
    read as integers and scaled here, which takes half the time of libsndfile's
    own conversion to float.
    """
    with _open(source, "cannot decode audio") as f:
        return _read(f, start, stop), int(f.samplerate)


def decode_segment(source: str | bytes, start: float | None, end: float | None) -> tuple[np.ndarray, AudioInfo]:
    """Decode seconds [start, end) of a path or encoded bytes (None: from the
    beginning, to the end) as ``decode`` does, and read the header: one open
    where ``probe`` and ``decode`` take two."""
    with _open(source, "cannot read audio header") as f:
        info = _audio_info(f)
        first = round(start * info.sample_rate) if start is not None else 0
        stop = round(end * info.sample_rate) if end is not None else None
        if first and first >= info.frames:
            raise AudioError(f"segment starts at {start} s, after the end of the recording "
                             f"({info.frames / info.sample_rate:.3f} s)")
        return _read(f, first, stop), info


def _open(source: str | bytes, failure: str) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(_as_file(source))
    except Exception as error:
        raise AudioError(f"{failure}: {error}") from error


def _audio_info(info) -> AudioInfo:
    """An AudioInfo of soundfile's info or of an open SoundFile (they share these fields)."""
    if info.format == "OGG":
        ext = "opus" if info.subtype == "OPUS" else "ogg"
    else:
        ext = _SOUNDFILE_FORMAT_TO_EXT.get(info.format, info.format.lower())
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels), ext)


def _read(f: soundfile.SoundFile, start: int, stop: int | None) -> np.ndarray:
    pcm16 = f.subtype == "PCM_16"
    try:
        if start:
            f.seek(start)
        data = f.read(-1 if stop is None else max(0, stop - start), dtype="int16" if pcm16 else "float32",
                      always_2d=True)
    except Exception as error:
        raise AudioError(f"cannot decode audio: {error}") from error
    if data.shape[1] == 1:
        mono = np.ascontiguousarray(data[:, 0], dtype=np.float32)
    else:
        mono = data.mean(axis=1, dtype=np.float32)
    if pcm16:
        mono *= np.float32(1 / 32768)  # exact: a power of two
    return mono


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


def quantize16(waveform: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1) -> int16, rounded and clipped (exact for 16-bit input)."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def encode(
    waveform: np.ndarray, sample_rate: int, codec: str, bitrate: int | None = None, complexity: int | None = None
) -> tuple[bytes, str]:
    """Encode a mono float32 waveform; returns (bytes, member extension).

    ``bitrate`` (bit/s) sets the opus encoder's target and ``complexity`` (0-10)
    libopus's complexity (see ``opus_complexity``); other codecs take neither.
    """
    if codec not in CODECS:
        raise AudioError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    ext = CODECS[codec][0]
    if codec != "opus":
        for name, value in (("bitrate", bitrate), ("complexity", complexity)):
            if value is not None:
                raise AudioError(f"a {name} applies to opus only, not {codec}")
        return _soundfile_bytes(quantize16(waveform), sample_rate, codec), ext
    if sample_rate not in OPUS_RATES:
        raise AudioError(f"opus cannot store {sample_rate} Hz audio; use one of {OPUS_RATES}")
    level = None if bitrate is None else opus_compression_level(bitrate)
    chosen = opus_complexity(complexity)
    if chosen is None:
        return _soundfile_bytes(waveform, sample_rate, codec, level), ext
    try:
        return encode_opus(waveform, sample_rate, chosen, bitrate), ext
    except OpusError as error:
        raise AudioError(f"cannot encode opus audio: {error}") from error


def _soundfile_bytes(data: np.ndarray, sample_rate: int, codec: str, level: float | None = None) -> bytes:
    _, file_format, subtype = CODECS[codec]
    buffer = io.BytesIO()
    try:
        soundfile.write(buffer, data, sample_rate, format=file_format, subtype=subtype, compression_level=level)
    except Exception as error:
        raise AudioError(f"cannot encode {codec} audio: {error}") from error
    return buffer.getvalue()


def opus_complexity(complexity: int | None) -> int | None:
    """The libopus complexity opus is encoded with: ``complexity``, or
    ``DEFAULT_OPUS_COMPLEXITY`` for None. Without a system libopus it is None:
    soundfile's own encoder runs then, fixed at complexity 10, and asking for
    a complexity is an error."""
    if complexity is not None and (
        isinstance(complexity, bool) or not isinstance(complexity, int) or not 0 <= complexity <= 10
    ):
        raise AudioError(f"opus complexity must be an integer 0 to 10, not {complexity!r}")
    if libopus() is None:
        if complexity is not None:
            raise AudioError("an opus complexity needs the system's libopus (libopus0 on Debian and Ubuntu, "
                             "opus on Homebrew); without it soundfile encodes at complexity 10")
        return None
    return DEFAULT_OPUS_COMPLEXITY if complexity is None else complexity


def opus_compression_level(bitrate: int) -> float:
    """libsndfile's compression level for an opus target of ``bitrate`` bit/s: its
    opus encoder maps the level linearly onto ``OPUS_BITRATES`` (0 = highest)."""
    low, high = OPUS_BITRATES
    if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not low <= bitrate <= high:
        raise AudioError(f"opus bitrate must be {low} to {high} bit/s, not {bitrate!r}")
    return (high - bitrate) / (high - low)


def _as_file(source: str | bytes):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
