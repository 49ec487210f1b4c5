"""Real speech with known transcripts, synthesized by espeak-ng.

Used by the tests, the benchmarks and the script that builds the bundled
dataset. espeak-ng writes 16-bit mono WAV at 22.05 kHz; synthesis is
deterministic for the same text and voice settings.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile

ESPEAK_RATE = 22050
VOICES = ("en-us", "en-gb", "en-us+f2", "en-gb+m3", "en-us+m3", "en-gb+f2")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"
    speed: int = 160  # words per minute
    pitch: int = 50  # 0-99


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize_wav(text: str, voice: Voice = Voice()) -> bytes:
    """WAV bytes (16-bit mono, 22.05 kHz) of ``text`` spoken by ``voice``."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    result = subprocess.run(
        ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout", text],
        check=True,
        capture_output=True,
    )
    # espeak-ng streams to stdout with placeholder sizes in the RIFF header;
    # re-encode so every reader sees a well-formed file.
    data, rate = soundfile.read(io.BytesIO(_fix_riff_sizes(result.stdout)), dtype="int16")
    out = io.BytesIO()
    soundfile.write(out, data, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def synthesize(text: str, voice: Voice = Voice()) -> tuple[np.ndarray, int]:
    """float32 waveform (T,) and its sample rate."""
    data, rate = soundfile.read(io.BytesIO(synthesize_wav(text, voice)), dtype="float32")
    return data, rate


def speech_of_duration(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Concatenated espeak-ng sentences cut to exactly ``seconds`` at ``sample_rate``."""
    from streamtrain.audio import resample

    rng = random.Random(seed)
    need = int(round(seconds * sample_rate))
    pieces, have = [], 0
    while have < need:
        words = " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(4, 9)))
        wave, rate = synthesize(words, random_voice(rng))
        wave = resample(wave, rate, sample_rate)
        pieces.append(wave)
        have += len(wave)
    return np.concatenate(pieces)[:need].astype(np.float32)


def random_voice(rng: random.Random) -> Voice:
    return Voice(rng.choice(VOICES), rng.randint(130, 190), rng.randint(35, 70))


def digit_text(rng: random.Random, min_words: int = 3, max_words: int = 7) -> str:
    return " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(min_words, max_words)))


def _fix_riff_sizes(wav: bytes) -> bytes:
    """Patch the RIFF and data chunk sizes of a streamed WAV to the real length."""
    buf = bytearray(wav)
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not produce a WAV stream")
    buf[4:8] = (len(buf) - 8).to_bytes(4, "little")
    pos = 12
    while pos + 8 <= len(buf):
        chunk, size = bytes(buf[pos : pos + 4]), int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            buf[pos + 4 : pos + 8] = (len(buf) - pos - 8).to_bytes(4, "little")
            break
        pos += 8 + size
    return bytes(buf)
