"""Encoding audio: flac and wav through soundfile; opus through the system's libopus where there is one
(``streamtrain.audio.opus``), so its complexity can be chosen, else through soundfile."""

from __future__ import annotations

import io

import numpy as np
import soundfile

from streamtrain.audio.decoding import AudioError
from streamtrain.audio.opus import OpusError, encode_opus, libopus

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
