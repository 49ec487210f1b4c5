"""Decoding audio: a path or encoded bytes to a mono float32 waveform, through soundfile (libsndfile).

Waveforms are float32 numpy arrays of shape (T,) in [-1, 1) once mixed to mono.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

#: Extensions the loader and packer decode as audio. Nothing else in a shard is
#: ever decoded as audio, and nothing is ever unpickled.
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "opus", "mp3")

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


def _as_file(source: str | bytes):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
