"""Small real-speech corpora in every SOURCE form ``streamtrain pack`` reads.

Spoken digit strings synthesized by espeak-ng with several voices, speeds and
pitches; the same seed gives the same corpus. Each writer returns a ``Corpus``
that says which keys and transcripts packing it must produce, so tests,
benchmarks and users can check a pack against it::

    corpus = write_corpus("jsonl", tmp / "src", utterances(20, seed=1))
    pack(corpus.source, tmp / "out")
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile

from streamtrain.audio import resample
from tests.support.speech import ESPEAK_RATE, Voice, digit_text, random_voice, synthesize

#: Audio file format -> (soundfile format, subtype).
AUDIO_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}


@dataclass(frozen=True)
class Utterance:
    name: str  # becomes the key in forms that take keys from names
    text: str
    voice: Voice


@dataclass(frozen=True)
class AudioSpec:
    """How a corpus stores its audio files."""

    format: str = "wav"
    sample_rate: int = ESPEAK_RATE
    channels: int = 1  # 2 writes a stereo file whose right channel is the left at half gain


@dataclass
class Corpus:
    source: Path  # what to pass to pack()
    form: str
    texts: dict[str, str]  # key a pack must produce -> transcript
    audio: dict[str, Path]  # key -> the audio file that holds it
    segments: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (start, end) s, Kaldi only


def utterances(count: int, seed: int = 0, prefix: str = "utt", texts: list[str] | None = None) -> list[Utterance]:
    """``count`` utterances with random digit texts (or the given ``texts``) and voices."""
    rng = random.Random(seed)
    chosen = texts if texts is not None else [digit_text(rng) for _ in range(count)]
    if len(chosen) != count:
        raise ValueError(f"got {len(chosen)} texts for {count} utterances")
    return [Utterance(f"{prefix}{i:05d}", text, random_voice(rng)) for i, text in enumerate(chosen)]


def speech(utterance: Utterance, sample_rate: int = ESPEAK_RATE) -> np.ndarray:
    """The utterance's mono float32 waveform (T,) at ``sample_rate``."""
    return _speech(utterance.text, utterance.voice, sample_rate).copy()


@lru_cache(maxsize=4096)
def _speech(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    waveform, rate = synthesize(text, voice)
    return resample(waveform.astype(np.float32), rate, sample_rate)


def audio_bytes(waveform: np.ndarray, spec: AudioSpec) -> bytes:
    """Encode a mono waveform as ``spec`` says (stereo files get a derived right channel)."""
    if spec.format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {spec.format!r}; expected one of {sorted(AUDIO_FORMATS)}")
    file_format, subtype = AUDIO_FORMATS[spec.format]
    data = waveform if spec.channels == 1 else np.stack([waveform, 0.5 * waveform], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, data, spec.sample_rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def write_audio(path: Path, utterance: Utterance, spec: AudioSpec) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(audio_bytes(speech(utterance, spec.sample_rate), spec))
    return path


def write_jsonl(root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec()) -> Corpus:
    """``root/manifest.jsonl`` with relative ``audio`` paths, an ``id`` and voice fields."""
    lines, audio = [], {}
    for utt in utts:
        path = write_audio(root / "audio" / f"{utt.name}.{spec.format}", utt, spec)
        audio[utt.name] = path
        record = {"id": utt.name, "audio": f"audio/{path.name}", "text": utt.text, **_voice_fields(utt)}
        lines.append(json.dumps(record) + "\n")
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(lines))
    return Corpus(manifest, "jsonl", {u.name: u.text for u in utts}, audio)


def write_csv(root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec()) -> Corpus:
    """``root/manifest.csv`` (audio,text,speaker,speed); keys come from the file names."""
    manifest = root / "manifest.csv"
    audio = {}
    root.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "text", "speaker", "speed"])
        writer.writeheader()
        for utt in utts:
            path = write_audio(root / "clips" / f"{utt.name}.{spec.format}", utt, spec)
            audio[utt.name] = path
            writer.writerow({"audio": f"clips/{path.name}", "text": utt.text, **_voice_fields(utt)})
    return Corpus(manifest, "csv", {u.name: u.text for u in utts}, audio)


def write_folder(root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec()) -> Corpus:
    """Audio files with same-named ``.txt`` transcripts, spread over two subfolders."""
    texts, audio = {}, {}
    for i, utt in enumerate(utts):
        subfolder = f"group{i % 2}"
        path = write_audio(root / subfolder / f"{utt.name}.{spec.format}", utt, spec)
        path.with_suffix(".txt").write_text(utt.text + "\n")
        key = f"{subfolder}_{utt.name}"
        texts[key], audio[key] = utt.text, path
    return Corpus(root, "folder", texts, audio)


def write_librispeech(root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec(format="flac")) -> Corpus:
    """``speaker/chapter/speaker-chapter-NNNN.flac`` with ``speaker-chapter.trans.txt``."""
    texts, audio = {}, {}
    transcripts: dict[Path, list[str]] = {}
    for i, utt in enumerate(utts):
        speaker, chapter = 100 + i % 3, 2000 + i % 2
        key = f"{speaker}-{chapter}-{i:04d}"
        folder = root / str(speaker) / str(chapter)
        path = write_audio(folder / f"{key}.{spec.format}", utt, spec)
        transcripts.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{key} {utt.text.upper()}\n")
        texts[key], audio[key] = utt.text.upper(), path
    for path, lines in transcripts.items():
        path.write_text("".join(lines))
    return Corpus(root, "librispeech", texts, audio)


def write_kaldi(
    root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec(), *, per_recording: int = 3, gap: float = 0.25
) -> Corpus:
    """A Kaldi data dir: recordings of ``per_recording`` utterances with silences between,
    ``wav.scp``, ``segments``, ``text`` and ``utt2spk``. Segment bounds fall on sample frames.
    """
    root.mkdir(parents=True, exist_ok=True)
    texts, audio, segments = {}, {}, {}
    wav_scp, segment_lines, text_lines, utt2spk = [], [], [], []
    silence = np.zeros(int(gap * spec.sample_rate), dtype=np.float32)
    for first in range(0, len(utts), per_recording):
        recording = f"rec{first // per_recording:04d}"
        pieces, offset = [silence], len(silence)
        for utt in utts[first : first + per_recording]:
            wave = speech(utt, spec.sample_rate)
            start, end = offset / spec.sample_rate, (offset + len(wave)) / spec.sample_rate
            segment_lines.append(f"{utt.name} {recording} {start:.6f} {end:.6f}\n")
            text_lines.append(f"{utt.name} {utt.text}\n")
            utt2spk.append(f"{utt.name} {_speaker(utt)}\n")
            texts[utt.name], segments[utt.name] = utt.text, (round(start, 6), round(end, 6))
            pieces += [wave, silence]
            offset += len(wave) + len(silence)
        path = root / "wav" / f"{recording}.{spec.format}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(audio_bytes(np.concatenate(pieces), spec))
        wav_scp.append(f"{recording} wav/{path.name}\n")
        audio.update({utt.name: path for utt in utts[first : first + per_recording]})
    for name, lines in [("wav.scp", wav_scp), ("segments", segment_lines), ("text", text_lines), ("utt2spk", utt2spk)]:
        (root / name).write_text("".join(lines))
    return Corpus(root, "kaldi", texts, audio, segments)


def write_webdataset(root: Path, utts: list[Utterance], spec: AudioSpec = AudioSpec(), *, per_shard: int = 5
                     ) -> Corpus:
    """WebDataset shards written by webdataset's own ``TarWriter``: keys with a folder part
    (``speaker/name``), transcripts in a ``txt`` member for even utterances and in a ``json`` member
    (with voice fields) for odd ones. The audio files are kept beside, in ``root/audio``."""
    import webdataset

    texts, audio = {}, {}
    root.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(utts), per_shard):
        with webdataset.TarWriter(str(root / f"part-{first // per_shard:03d}.tar")) as sink:
            for i, utt in enumerate(utts[first : first + per_shard], start=first):
                path = write_audio(root / "audio" / f"{utt.name}.{spec.format}", utt, spec)
                sample = {"__key__": f"{_speaker(utt)}/{utt.name}", spec.format: path.read_bytes()}
                if i % 2:
                    sample["json"] = {"text": utt.text, **_voice_fields(utt)}
                else:
                    sample["txt"] = utt.text
                sink.write(sample)
                key = f"{_speaker(utt)}_{utt.name}"
                texts[key], audio[key] = utt.text, path
    return Corpus(root, "webdataset", texts, audio)


def _voice_fields(utt: Utterance) -> dict[str, object]:
    return {"speaker": _speaker(utt), "speed": utt.voice.speed}


def _speaker(utt: Utterance) -> str:
    return utt.voice.name.replace("+", "_")


CORPUS_WRITERS: dict[str, Callable[..., Corpus]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
    "folder": write_folder,
    "librispeech": write_librispeech,
    "kaldi": write_kaldi,
    "webdataset": write_webdataset,
}


def write_corpus(form: str, root: str | Path, utts: list[Utterance], spec: AudioSpec | None = None) -> Corpus:
    """Write ``utts`` into ``root`` in SOURCE form ``form`` (see CORPUS_WRITERS)."""
    if form not in CORPUS_WRITERS:
        raise ValueError(f"unknown corpus form {form!r}; expected one of {sorted(CORPUS_WRITERS)}")
    writer = CORPUS_WRITERS[form]
    return writer(Path(root), utts) if spec is None else writer(Path(root), utts, spec)
