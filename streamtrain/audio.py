"""Audio decoding, encoding and resampling.

soundfile (libsndfile) decodes and encodes; torchaudio resamples. Waveforms are
float32 numpy arrays of shape (T,) in [-1, 1) once mixed to mono.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile

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
        info = soundfile.info(_as_file(source))
    except Exception as error:  # soundfile raises several types, RuntimeError included
        raise AudioError(f"cannot read audio header: {error}") from error
    if info.format == "OGG":
        ext = "opus" if info.subtype == "OPUS" else "ogg"
    else:
        ext = _SOUNDFILE_FORMAT_TO_EXT.get(info.format, info.format.lower())
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels), ext)


def decode(source: str | bytes, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Decode frames [start, stop) of a path or encoded bytes to mono float32.

    Returns (waveform of shape (T,), sample rate). Multi-channel audio is
    averaged to mono. 16-bit sources decode to exactly ``int / 32768``.
    """
    try:
        data, rate = soundfile.read(
            _as_file(source), start=start, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as error:
        raise AudioError(f"cannot decode audio: {error}") from error
    if data.shape[1] == 1:
        mono = data[:, 0]
    else:
        mono = data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (Kaiser window, 64 zero crossings)."""
    if orig_rate == new_rate:
        return waveform
    import torch

    kernel = _resampler(orig_rate, new_rate)
    with torch.no_grad():
        out = kernel(torch.from_numpy(np.ascontiguousarray(waveform))[None])[0]
    return out.numpy().astype(np.float32, copy=False)


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int):
    from torchaudio.transforms import Resample

    return Resample(
        orig_rate,
        new_rate,
        resampling_method="sinc_interp_kaiser",
        lowpass_filter_width=64,
        rolloff=0.9475937167399596,
        beta=14.769656459379492,
    )


def quantize16(waveform: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1) -> int16, rounded and clipped (exact for 16-bit input)."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def encode(waveform: np.ndarray, sample_rate: int, codec: str, bitrate: int | None = None) -> tuple[bytes, str]:
    """Encode a mono float32 waveform; returns (bytes, member extension).

    ``bitrate`` (bit/s) sets the opus encoder's target; other codecs take none.
    """
    if codec not in CODECS:
        raise AudioError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    ext, file_format, subtype = CODECS[codec]
    if codec == "opus" and sample_rate not in OPUS_RATES:
        raise AudioError(f"opus cannot store {sample_rate} Hz audio; use one of {OPUS_RATES}")
    level = None
    if bitrate is not None:
        if codec != "opus":
            raise AudioError(f"a bitrate applies to opus only, not {codec}")
        level = opus_compression_level(bitrate)
    buffer = io.BytesIO()
    data = quantize16(waveform) if subtype == "PCM_16" else waveform
    try:
        soundfile.write(buffer, data, sample_rate, format=file_format, subtype=subtype, compression_level=level)
    except Exception as error:
        raise AudioError(f"cannot encode {codec} audio: {error}") from error
    return buffer.getvalue(), ext


def opus_compression_level(bitrate: int) -> float:
    """libsndfile's compression level for an opus target of ``bitrate`` bit/s: its
    opus encoder maps the level linearly onto ``OPUS_BITRATES`` (0 = highest)."""
    low, high = OPUS_BITRATES
    if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not low <= bitrate <= high:
        raise AudioError(f"opus bitrate must be {low} to {high} bit/s, not {bitrate!r}")
    return (high - bitrate) / (high - low)


def _as_file(source: str | bytes):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
