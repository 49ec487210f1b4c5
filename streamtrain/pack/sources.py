"""Read a SOURCE (manifest, folder, LibriSpeech or Kaldi dir) into items to pack.

Every item and every problem carries an ``origin`` ("manifest.jsonl line 12",
"data/train/wav.scp line 3", a file path) so that any error, at read time or
later when its audio is decoded, names the place a person must fix.

Problems that belong to one item (missing audio file, empty transcript,
duplicate key, a malformed line) are returned as ``Reject`` entries in source
order, so the packer can raise on the first or skip them all, and a ``--part``
slice owns exactly the rejects that fall in it. Problems with the source as a
whole (no such file, a CSV without the needed columns) raise ``SourceError``.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from streamtrain.audio import AUDIO_EXTENSIONS
from streamtrain.dataset.shard import sanitize_key


class SourceError(ValueError):
    """Bad input: a source that cannot be read, or a bad item in it."""


@dataclass
class SourceItem:
    key: str
    audio: str  # absolute path of the audio file; with ``piped``, the shell command that writes it
    text: str
    origin: str
    fields: dict[str, Any] = field(default_factory=dict)
    start: float | None = None  # segment bounds in seconds, None for the whole file
    end: float | None = None
    piped: bool = False  # a Kaldi ``cmd |`` entry: the audio is the command's stdout

    @property
    def location(self) -> str:
        """Where the audio comes from, as a person would write it."""
        return f"{self.audio} |" if self.piped else self.audio


@dataclass(frozen=True)
class Reject:
    origin: str
    key: str | None  # None where the key could not be read
    reason: str

    def message(self) -> str:
        return f"{self.origin}: {self.reason}"


Entry = Union[SourceItem, Reject]

FORMS = ("jsonl", "csv", "folder", "librispeech", "kaldi")
_JSONL_SUFFIXES = (".jsonl", ".json-lines", ".jsonlines")


def detect_form(source: str | os.PathLike) -> str:
    """The form of ``source``: from a file's extension or a folder's contents."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in _JSONL_SUFFIXES:
            return "jsonl"
        if suffix == ".csv":
            return "csv"
        raise SourceError(
            f"{path}: cannot tell the manifest format from the extension {suffix!r} "
            f"(use .jsonl or .csv, or name the form: one of {', '.join(FORMS)})"
        )
    if (path / "wav.scp").is_file():
        return "kaldi"
    if next(path.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    return "folder"


def read_source(source: str | os.PathLike, form: str | None = None, *, kaldi_pipes: bool = False) -> list[Entry]:
    """Items and per-item problems of ``source``, in source order.

    A key seen twice makes the second occurrence a Reject naming both origins.
    ``kaldi_pipes`` accepts Kaldi ``wav.scp`` entries of the form ``cmd |``
    (refused otherwise: a data file's commands run only when asked for).
    """
    form = form or detect_form(source)
    if form not in FORMS:
        raise SourceError(f"unknown source form {form!r}; expected one of {', '.join(FORMS)}")
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    entries: list[Entry] = []
    first_origin: dict[str, str] = {}
    entries_of_form = _read_kaldi(path, kaldi_pipes) if form == "kaldi" else _READERS[form](path)
    for entry in entries_of_form:
        if isinstance(entry, SourceItem):
            if entry.key in first_origin:
                entry = Reject(
                    entry.origin, entry.key, f"duplicate key {entry.key!r} (first at {first_origin[entry.key]})"
                )
            else:
                first_origin[entry.key] = entry.origin
        entries.append(entry)
    return entries


def _item(
    key: str, audio: Path, text: Any, origin: str, fields: dict[str, Any], source_root: Path, **segment: float
) -> Entry:
    """An item after the checks every form shares, or the Reject that explains it."""
    if not _has_text(text):
        return Reject(origin, key, "missing or empty transcript")
    if not audio.is_file():
        return Reject(origin, key, f"audio file not found: {audio}")
    fields = {**fields, "source": _relative(audio, source_root)}
    return SourceItem(key, str(audio.resolve()), " ".join(text.split()), origin, fields, **segment)


def _piped_item(key: str, command: str, text: Any, origin: str, fields: dict[str, Any], **segment: float) -> Entry:
    """A Kaldi ``cmd |`` item; its command runs when the item is encoded."""
    if not _has_text(text):
        return Reject(origin, key, "missing or empty transcript")
    fields = {**fields, "source": f"{command} |"}
    return SourceItem(key, command, " ".join(text.split()), origin, fields, piped=True, **segment)


def _has_text(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _relative(path: Path, root: Path) -> str:
    """Provenance stored in the shard: the path under the source root where possible.

    Relative paths keep shards independent of where the corpus happened to be.
    """
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _record_item(record: dict[str, Any], origin: str, base: Path) -> Entry:
    """One JSONL object or CSV row: ``audio`` and ``text``, optional ``id``/``key``."""
    audio_field = record.get("audio")
    if not isinstance(audio_field, str) or not audio_field.strip():
        return Reject(origin, None, "missing or empty 'audio' field")
    audio = Path(audio_field)
    if not audio.is_absolute():
        audio = base / audio
    raw_key = record.get("id", record.get("key"))
    key = sanitize_key(str(raw_key)) if raw_key not in (None, "") else sanitize_key(audio.stem)
    fields = {name: value for name, value in record.items() if name not in ("audio", "text")}
    return _item(key, audio, record.get("text"), origin, fields, base)


def _text_lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None if not UTF-8, what is wrong) of each line; a UTF-8 BOM is allowed."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8"), ""
        except UnicodeDecodeError as error:
            yield number, None, f"not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r})"


def _read_jsonl(path: Path) -> Iterator[Entry]:
    for number, line, problem in _text_lines(path):
        origin = f"{path} line {number}"
        if line is None:
            yield Reject(origin, None, problem)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield Reject(origin, None, f"invalid JSON: {error}")
            continue
        if not isinstance(record, dict):
            yield Reject(origin, None, "expected a JSON object")
            continue
        yield _record_item(record, origin, path.parent)


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by "surrogateescape"


def _read_csv(path: Path) -> Iterator[Entry]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"audio", "text"} - set(reader.fieldnames or ())
        if missing:
            raise SourceError(f"{path} line 1: CSV header lacks column(s) {', '.join(sorted(missing))}")
        for row in reader:
            origin = f"{path} line {reader.line_num}"
            bad = next((name for name, value in row.items() if isinstance(value, str) and _UNDECODED.search(value)),
                       None)
            if bad is not None:
                yield Reject(origin, None, f"column {bad!r} is not UTF-8 text")
                continue
            yield _record_item(row, origin, path.parent)


def _audio_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and p.is_file()
    )


def _read_folder(root: Path) -> Iterator[Entry]:
    """Audio files anywhere under ``root``, each with a same-named ``.txt``."""
    files = _audio_files(root)
    if not files:
        raise SourceError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    for audio in files:
        relative = audio.relative_to(root).with_suffix("")
        key = sanitize_key(relative.as_posix().replace("/", "_"))
        transcript = audio.with_suffix(".txt")
        if not transcript.is_file():
            yield Reject(str(audio), key, f"no transcript: {transcript} does not exist")
            continue
        try:
            text = transcript.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8")
        except UnicodeDecodeError as error:
            yield Reject(str(transcript), key, f"not UTF-8 text (byte {error.start})")
            continue
        if not text.strip():
            yield Reject(str(transcript), key, "empty transcript")
            continue
        yield _item(key, audio, text, str(audio), {}, root)


def _read_librispeech(root: Path) -> Iterator[Entry]:
    """``speaker/chapter/*.flac`` with ``speaker-chapter.trans.txt`` ("UTT-ID TEXT" lines)."""
    for transcripts in sorted(root.rglob("*.trans.txt")):
        chapter_dir = transcripts.parent
        fields = {"speaker": chapter_dir.parent.name, "chapter": chapter_dir.name}
        for number, line, problem in _text_lines(transcripts):
            origin = f"{transcripts} line {number}"
            if line is None:
                yield Reject(origin, None, problem)
                continue
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            key = sanitize_key(utterance)
            audio = _find_audio(chapter_dir, utterance)
            if audio is None:
                yield Reject(origin, key, f"no audio file {chapter_dir / utterance}.flac")
                continue
            yield _item(key, audio, text, origin, dict(fields), root)


def _find_audio(folder: Path, stem: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        candidate = folder / f"{stem}.{ext}"
        if candidate.is_file():
            return candidate
    return None


def _kaldi_lines(path: Path) -> Iterator[tuple[str, str | None, str]]:
    """``id rest-of-line`` lines of a Kaldi file -> (id, rest, origin); rest is None for a line that is not UTF-8."""
    for number, line, _ in _text_lines(path):
        origin = f"{path} line {number}"
        if line is None:
            yield "", None, origin
        elif line.strip():
            name, _, rest = line.strip().partition(" ")
            yield name, rest.strip(), origin


def _kaldi_table(path: Path) -> dict[str, tuple[str, str]]:
    """A Kaldi lookup file -> {id: (rest, origin)}; a missing file gives {}."""
    table: dict[str, tuple[str, str]] = {}
    if not path.is_file():
        return table
    for name, rest, origin in _kaldi_lines(path):
        if rest is None:
            raise SourceError(f"{origin}: not UTF-8 text")
        if name in table:
            raise SourceError(f"{origin}: duplicate id {name!r} (first at {table[name][1]})")
        table[name] = (rest, origin)
    return table


def _read_kaldi(root: Path, pipes: bool) -> Iterator[Entry]:
    """``wav.scp`` + ``text``; ``segments`` and ``utt2spk`` when present.

    Relative paths in wav.scp are taken relative to the data dir. Piped entries
    (``cmd |``) are refused unless ``pipes``: then, as in Kaldi, the command runs
    in the shell from the current folder and its stdout is the recording (any
    format soundfile reads), once per utterance.
    """
    if not (root / "text").is_file():
        raise SourceError(f"{root}: Kaldi data dir without a 'text' file")
    recordings = _kaldi_table(root / "wav.scp")
    segments = _kaldi_table(root / "segments")
    speakers = _kaldi_table(root / "utt2spk")
    for utterance, text, origin in _kaldi_lines(root / "text"):
        if text is None:
            yield Reject(origin, None, "not UTF-8 text")
            continue
        key = sanitize_key(utterance)
        fields: dict[str, Any] = {}
        if utterance in speakers:
            fields["speaker"] = speakers[utterance][0]
        bounds: dict[str, float] = {}
        recording = utterance
        if segments:
            if utterance not in segments:
                yield Reject(origin, key, f"utterance {utterance!r} is not in {root / 'segments'}")
                continue
            segment, segment_origin = segments[utterance]
            parsed = _parse_segment(segment)
            if isinstance(parsed, str):
                yield Reject(segment_origin, key, parsed)
                continue
            recording, bounds["start"], end = parsed
            if end is not None:
                bounds["end"] = end
            fields["recording"] = recording
        if recording not in recordings:
            yield Reject(origin, key, f"recording {recording!r} is not in {root / 'wav.scp'}")
            continue
        location, scp_origin = recordings[recording]
        if location.endswith("|"):
            command = location[:-1].strip()
            if not pipes:
                yield Reject(scp_origin, key, f"piped wav.scp entry {location!r} is a command; run it with --kaldi-pipes")
            elif not command:
                yield Reject(scp_origin, key, "piped wav.scp entry without a command")
            else:
                yield _piped_item(key, command, text, origin, fields, **bounds)
            continue
        audio = Path(location)
        if not audio.is_absolute():
            audio = root / audio
        if not audio.is_file():
            yield Reject(scp_origin, key, f"audio file not found: {audio}")
            continue
        yield _item(key, audio, text, origin, fields, root, **bounds)


def _parse_segment(rest: str) -> tuple[str, float, float | None] | str:
    """``rec start end`` -> (rec, start, end), or the reason it is malformed.

    An end of -1 means "to the end of the recording", as in Kaldi.
    """
    parts = rest.split()
    if len(parts) != 3:
        return "expected 'utterance recording start end'"
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        return f"start/end are not numbers: {parts[1]!r} {parts[2]!r}"
    if end == -1:
        return (parts[0], start, None) if start >= 0 else f"bad segment start {start}"
    if not 0 <= start < end:
        return f"bad segment bounds {start} .. {end}"
    return parts[0], start, end


#: The forms read from their path alone; "kaldi" also takes the pipes option (``_read_kaldi``).
_READERS: dict[str, Callable[[Path], Iterator[Entry]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "folder": _read_folder,
    "librispeech": _read_librispeech,
}
