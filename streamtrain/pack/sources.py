"""Read a SOURCE (manifest, folder, LibriSpeech or Kaldi dir, WebDataset shards) into items to pack.

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
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union
from urllib.parse import urlsplit


from streamtrain.audio import AUDIO_EXTENSIONS
from streamtrain.format.shard import sanitize_key
from streamtrain.storage.location import LocationError, check_location
from streamtrain.storage.remote import ReadError, child_url, is_local, local_path, read_all, redact, scrub


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
    member: str | None = None  # a WebDataset sample: the audio is this member of the tar file ``audio``

    @property
    def location(self) -> str:
        """Where the audio comes from, as a person would write it, and as it may be printed."""
        if self.member is not None:
            return f"{redact(self.audio)}:{self.member}"
        return f"{scrub(self.audio)} |" if self.piped else redact(self.audio)


@dataclass(frozen=True)
class Reject:
    origin: str
    key: str | None  # None where the key could not be read
    reason: str

    def message(self) -> str:
        return f"{self.origin}: {self.reason}"


Entry = Union[SourceItem, Reject]

FORMS = ("jsonl", "csv", "folder", "librispeech", "kaldi", "webdataset")
_JSONL_SUFFIXES = (".jsonl", ".json-lines", ".jsonlines")


def detect_form(source: str | os.PathLike) -> str:
    """The form of ``source``: from a file's extension or a folder's contents."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_file():
        return _manifest_form(path.name, str(path))
    if (path / "wav.scp").is_file():
        return "kaldi"
    if next(path.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    if next(path.glob("*.tar"), None) is not None:
        return "webdataset"
    return "folder"


def _manifest_form(name: str, origin: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise SourceError(
        f"{origin}: cannot tell the manifest format from the extension {suffix!r} "
        f"(use .jsonl or .csv, or name the form: one of {', '.join(FORMS)})"
    )


def read_source(source: str | os.PathLike, form: str | None = None, *, kaldi_pipes: bool = False,
                storage_options: dict | None = None) -> list[Entry]:
    """Items and per-item problems of ``source``, in source order.

    A key seen twice makes the second occurrence a Reject naming both origins.
    ``kaldi_pipes`` accepts Kaldi ``wav.scp`` entries of the form ``cmd |``
    (refused otherwise: a data file's commands run only when asked for).
    A JSONL or CSV manifest may be at a URL (read with retries, with fsspec's
    ``storage_options``); its relative audio paths are then taken relative to
    the manifest's URL.
    """
    source = check_location(source)
    if not is_local(source):
        entries_of_form = _read_remote_manifest(source, form, storage_options)
    else:
        form = form or detect_form(source)
        if form not in FORMS:
            raise SourceError(f"unknown source form {form!r}; expected one of {', '.join(FORMS)}")
        path = Path(local_path(source))
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory")
        entries_of_form = _read_kaldi(path, kaldi_pipes) if form == "kaldi" else _READERS[form](path)
    entries: list[Entry] = []
    first_origin: dict[str, str] = {}
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


def _read_remote_manifest(url: str, form: str | None, storage_options: dict | None) -> Iterator[Entry]:
    """A JSONL or CSV manifest at a URL; its audio is read when packed."""
    name = redact(url)
    form = form or _manifest_form(urlsplit(url).path, name)
    if form not in ("jsonl", "csv"):
        raise SourceError(f"{name}: only a JSONL or CSV manifest can be read from a URL, not a {form} source")
    try:
        data = read_all(url, storage_options)
    except ReadError as error:
        raise SourceError(str(error)) from None
    base = url.rsplit("/", 1)[0]
    return _jsonl_records(data, name, base) if form == "jsonl" else _csv_records(data, name, base)


def _item(
    key: str, audio: Path | str, text: Any, origin: str, fields: dict[str, Any], source_root: Path | None,
    **segment: float
) -> Entry:
    """An item after the checks every form shares, or the Reject that explains it.

    Audio at a URL (a str) is not looked for here: a failure to read it is a Reject when it is packed.
    """
    if not _has_text(text):
        return Reject(origin, key, "missing or empty transcript")
    if isinstance(audio, str):
        return SourceItem(key, audio, " ".join(text.split()), origin, {**fields, "source": redact(audio)}, **segment)
    if not audio.is_file():
        return Reject(origin, key, f"audio file not found: {audio}")
    fields = {**fields, "source": _relative(audio, source_root)}
    return SourceItem(key, str(audio.resolve()), " ".join(text.split()), origin, fields, **segment)


def _piped_item(key: str, command: str, text: Any, origin: str, scp_origin: str, fields: dict[str, Any],
                **segment: float) -> Entry:
    """A Kaldi ``cmd |`` item; its command runs when the item is encoded, so a failure of it is the
    ``wav.scp`` line's (``scp_origin``), a missing transcript the ``text`` line's (``origin``)."""
    if not _has_text(text):
        return Reject(origin, key, "missing or empty transcript")
    fields = {**fields, "source": f"{command} |"}
    return SourceItem(key, command, " ".join(text.split()), scp_origin, fields, piped=True, **segment)


def _has_text(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _relative(path: Path, root: Path | None) -> str:
    """Provenance stored in the shard: the path under the source root where possible.

    Relative paths keep shards independent of where the corpus happened to be.
    """
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() if root is not None else str(path.resolve())
    except ValueError:
        return str(path.resolve())


def _record_item(record: dict[str, Any], origin: str, base: Path | str) -> Entry:
    """One JSONL object or CSV row: ``audio`` and ``text``, optional ``id``/``key``.

    ``base`` is the manifest's folder, or its URL's parent for a manifest at a URL.
    """
    audio_field = record.get("audio")
    if not isinstance(audio_field, str) or not audio_field.strip():
        return Reject(origin, None, "missing or empty 'audio' field")
    try:
        audio = _audio_location(audio_field, base)
    except LocationError as error:
        return Reject(origin, None, str(error))
    raw_key = record.get("id", record.get("key"))
    stem = Path(urlsplit(audio).path if isinstance(audio, str) else audio).stem
    key = sanitize_key(str(raw_key)) if raw_key not in (None, "") else sanitize_key(stem)
    fields = {name: value for name, value in record.items() if name not in ("audio", "text")}
    return _item(key, audio, record.get("text"), origin, fields, base if isinstance(base, Path) else None)


def _audio_location(field: str, base: Path | str) -> Path | str:
    """A manifest's audio field as a local path, or as a URL (a str) where it is one or is relative to one."""
    location = check_location(field)
    if not is_local(location):
        return location
    path = Path(local_path(location))
    if path.is_absolute():
        return path
    return base / path if isinstance(base, Path) else child_url(base, path.as_posix())


def _text_lines(data: bytes) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None if not UTF-8, what is wrong) of each line; a UTF-8 BOM is allowed."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8"), ""
        except UnicodeDecodeError as error:
            yield number, None, f"not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r})"


def _read_jsonl(path: Path) -> Iterator[Entry]:
    return _jsonl_records(path.read_bytes(), str(path), path.parent)


def _jsonl_records(data: bytes, name: str, base: Path | str) -> Iterator[Entry]:
    for number, line, problem in _text_lines(data):
        origin = f"{name} line {number}"
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
        yield _record_item(record, origin, base)


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by "surrogateescape"


def _read_csv(path: Path) -> Iterator[Entry]:
    return _csv_records(path.read_bytes(), str(path), path.parent)


def _csv_records(data: bytes, name: str, base: Path | str) -> Iterator[Entry]:
    text = io.StringIO(data.decode("utf-8-sig", errors="surrogateescape"), newline="")
    reader = csv.DictReader(text)
    missing = {"audio", "text"} - set(reader.fieldnames or ())
    if missing:
        raise SourceError(f"{name} line 1: CSV header lacks column(s) {', '.join(sorted(missing))}")
    for row in reader:
        origin = f"{name} line {reader.line_num}"
        bad = next((column for column, value in row.items() if isinstance(value, str) and _UNDECODED.search(value)),
                   None)
        if bad is not None:
            yield Reject(origin, None, f"column {bad!r} is not UTF-8 text")
            continue
        yield _record_item(row, origin, base)


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
        for number, line, problem in _text_lines(transcripts.read_bytes()):
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
    for number, line, _ in _text_lines(path.read_bytes()):
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
                yield _piped_item(key, command, text, origin, scp_origin, fields, **bounds)
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


def _read_webdataset(root: Path) -> Iterator[Entry]:
    """WebDataset shards (``root/*.tar``, in name order), for a corpus that leaves WebDataset: samples
    as webdataset's own tar iterator groups the members (key = the name up to the first dot of its
    last part), each with an audio member and its transcript in a ``txt`` member or in the ``text``
    of a ``json`` member (whose other fields are kept). Only the names and transcripts are kept
    here; each audio member is read again, by its offset, when it is packed.

    webdataset is imported here, not with the module: it imports torch (seconds), which the packer's
    workers never need."""
    from webdataset import tariterators

    shards = sorted(root.glob("*.tar"))
    if not shards:
        raise SourceError(f"{root}: no WebDataset shards (*.tar) in this folder")
    for shard in shards:
        with open(shard, "rb") as stream:
            files = ({**member, "__url__": str(shard)} for member in tariterators.tar_file_iterator(stream))
            try:
                for sample in tariterators.group_by_keys(files, lcase=False):
                    yield _webdataset_item(sample, shard, root)
            except (ValueError, tarfile.TarError) as error:  # a duplicate member, a truncated tar
                raise SourceError(f"{shard}: not a readable WebDataset shard: {error}") from None


def _webdataset_item(sample: dict[str, Any], shard: Path, root: Path) -> Entry:
    name = sample["__key__"]
    origin, key = f"{shard}:{name}", sanitize_key(name)
    audio = next((ext for ext in sample if ext.lower() in AUDIO_EXTENSIONS), None)
    if audio is None:
        return Reject(origin, key, f"no audio member ({', '.join(AUDIO_EXTENSIONS)})")
    fields: dict[str, Any] = {}
    text = None
    if "json" in sample:
        try:
            fields = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return Reject(origin, key, f"{name}.json: invalid JSON: {error}")
        if not isinstance(fields, dict):
            return Reject(origin, key, f"{name}.json: expected a JSON object")
        text = fields.pop("text", None)
    if "txt" in sample:
        try:
            text = sample["txt"].decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return Reject(origin, key, f"{name}.txt: not UTF-8 text (byte {error.start})")
    if not _has_text(text):
        return Reject(origin, key, "missing or empty transcript (a txt member, or text in the json member)")
    member = f"{name}.{audio}"
    fields["source"] = f"{_relative(shard, root)}:{member}"
    return SourceItem(key, str(shard.resolve()), " ".join(text.split()), origin, fields, member=member)


#: The forms read from their path alone; "kaldi" also takes the pipes option (``_read_kaldi``).
_READERS: dict[str, Callable[[Path], Iterator[Entry]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "folder": _read_folder,
    "librispeech": _read_librispeech,
    "webdataset": _read_webdataset,
}
