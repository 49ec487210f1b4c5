"""Reading every SOURCE form, and every per-item problem with the origin it names."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from streamtrain.pack.sources import Reject, SourceError, SourceItem, detect_form, read_source
from tests.support.corpus import AudioSpec, CORPUS_WRITERS, utterances, write_corpus, write_jsonl, write_kaldi

UTTS = utterances(6, seed=11)


def items(entries) -> list[SourceItem]:
    return [entry for entry in entries if isinstance(entry, SourceItem)]


def rejects(entries) -> list[Reject]:
    return [entry for entry in entries if isinstance(entry, Reject)]


@pytest.mark.parametrize("form", sorted(CORPUS_WRITERS))
def test_every_form_is_detected_and_read(tmp_path: Path, form: str):
    corpus = write_corpus(form, tmp_path / form, UTTS)
    assert detect_form(corpus.source) == form
    entries = read_source(corpus.source)
    assert rejects(entries) == []
    assert {item.key: item.text for item in items(entries)} == corpus.texts
    for item in items(entries):
        if item.member is None:
            assert Path(item.audio) == corpus.audio[item.key].resolve()
        else:  # a WebDataset sample: a member of one of its tar files, holding the same bytes
            with tarfile.open(item.audio) as tar:
                assert tar.extractfile(item.member).read() == corpus.audio[item.key].read_bytes()
        assert item.origin
        assert not Path(item.fields["source"]).is_absolute()  # provenance relative to the source root


def test_jsonl_keys_fields_and_paths(tmp_path: Path):
    corpus = write_jsonl(tmp_path, UTTS[:3])
    absolute = str(corpus.audio[UTTS[2].name].resolve())
    lines = [
        {"id": "first one", "audio": "audio/utt00000.wav", "text": "  one\ttwo  ", "lang": "en", "n": 3},
        {"audio": "audio/utt00001.wav", "text": "three"},
        {"key": "k3", "audio": absolute, "text": "four"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    first, second, third = read_source(tmp_path / "m.jsonl")
    assert (first.key, first.text, first.fields["lang"], first.fields["n"]) == ("first_one", "one two", "en", 3)
    assert first.origin == f"{tmp_path / 'm.jsonl'} line 1"
    assert second.key == "utt00001"  # from the audio file name
    assert (third.key, third.audio) == ("k3", absolute)


def test_csv_keeps_columns_and_needs_audio_and_text(tmp_path: Path):
    corpus = write_corpus("csv", tmp_path, UTTS[:2])
    first = read_source(corpus.source)[0]
    assert first.fields["speaker"] == UTTS[0].voice.name.replace("+", "_")
    assert first.origin == f"{corpus.source} line 2"
    (tmp_path / "bad.csv").write_text("path,text\nx.wav,one\n")
    with pytest.raises(SourceError, match=r"bad\.csv line 1: CSV header lacks column\(s\) audio"):
        read_source(tmp_path / "bad.csv")


def test_librispeech_keeps_speaker_and_chapter(tmp_path: Path):
    corpus = write_corpus("librispeech", tmp_path, UTTS[:4])
    item = items(read_source(corpus.source))[0]
    assert (item.key, item.fields["speaker"], item.fields["chapter"]) == ("100-2000-0000", "100", "2000")
    assert item.origin.endswith("100-2000.trans.txt line 1")


def test_kaldi_segments_and_speakers(tmp_path: Path):
    corpus = write_kaldi(tmp_path, UTTS, per_recording=3)
    entries = items(read_source(tmp_path))
    assert [(e.start, e.end) for e in entries] == [corpus.segments[e.key] for e in entries]
    assert entries[3].fields["recording"] == "rec0001"
    assert entries[0].fields["speaker"] == UTTS[0].voice.name.replace("+", "_")
    assert entries[0].origin == f"{tmp_path / 'text'} line 1"


def test_kaldi_without_segments_reads_whole_files(tmp_path: Path):
    corpus = write_kaldi(tmp_path, UTTS[:2], per_recording=1)
    (tmp_path / "segments").unlink()
    (tmp_path / "wav.scp").write_text(f"utt00000 {corpus.audio['utt00000']}\nutt00001 wav/rec0001.wav\n")
    entries = items(read_source(tmp_path))
    assert [(e.key, e.start, e.end) for e in entries] == [("utt00000", None, None), ("utt00001", None, None)]


def test_kaldi_segment_to_end_of_recording(tmp_path: Path):
    write_kaldi(tmp_path, UTTS[:1], per_recording=1)
    (tmp_path / "segments").write_text("utt00000 rec0000 0.5 -1\n")
    (item,) = read_source(tmp_path)
    assert (item.start, item.end) == (0.5, None)


def test_piped_wav_scp_is_refused_naming_the_line(tmp_path: Path):
    write_kaldi(tmp_path, UTTS[:2], per_recording=1)
    (tmp_path / "wav.scp").write_text("rec0000 wav/rec0000.wav\nrec0001 sox x.wav -t wav - |\n")
    (reject,) = rejects(read_source(tmp_path))
    assert reject.origin == f"{tmp_path / 'wav.scp'} line 2"
    assert "'sox x.wav -t wav - |' is a command; run it with --kaldi-pipes" in reject.reason


def test_piped_wav_scp_with_kaldi_pipes_gives_command_items(tmp_path: Path):
    corpus = write_kaldi(tmp_path, UTTS[:2], per_recording=1)
    (tmp_path / "wav.scp").write_text("rec0000 wav/rec0000.wav\nrec0001 sox x.wav -t wav - |\nrec0002 |\n")
    (tmp_path / "segments").write_text((tmp_path / "segments").read_text() + "utt00002 rec0002 0 -1\n")
    (tmp_path / "text").write_text((tmp_path / "text").read_text() + "utt00002 one two\n")
    first, second, empty = read_source(tmp_path, kaldi_pipes=True)
    assert not first.piped and first.location == str(corpus.audio["utt00000"].resolve())
    assert second.piped and second.audio == "sox x.wav -t wav -" and second.location == "sox x.wav -t wav - |"
    assert (second.start, second.end) == corpus.segments["utt00001"]
    assert second.fields["source"] == "sox x.wav -t wav - |"
    assert empty.origin == f"{tmp_path / 'wav.scp'} line 3" and "without a command" in empty.reason


def test_kaldi_duplicate_recording_is_an_error(tmp_path: Path):
    write_kaldi(tmp_path, UTTS[:1], per_recording=1)
    (tmp_path / "wav.scp").write_text("rec0000 wav/rec0000.wav\nrec0000 wav/rec0000.wav\n")
    with pytest.raises(SourceError, match=r"wav\.scp line 2: duplicate id 'rec0000' \(first at .*wav\.scp line 1\)"):
        read_source(tmp_path)


def _jsonl(tmp_path: Path, records: list[dict]) -> Path:
    write_jsonl(tmp_path, UTTS[:2])
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"audio": "audio/missing.wav", "text": "one"}, "audio file not found: .*missing.wav"),
        ({"audio": "audio/utt00000.wav", "text": "   "}, "missing or empty transcript"),
        ({"audio": "audio/utt00000.wav"}, "missing or empty transcript"),
        ({"text": "one"}, "missing or empty 'audio' field"),
    ],
)
def test_bad_manifest_lines_name_their_line(tmp_path: Path, record: dict, reason: str):
    path = _jsonl(tmp_path, [{"audio": "audio/utt00001.wav", "text": "fine"}, record])
    entries = read_source(path)
    assert isinstance(entries[0], SourceItem)
    assert isinstance(entries[1], Reject)
    assert entries[1].message().startswith(f"{path} line 2: ")
    assert re.search(reason, entries[1].reason)


def test_invalid_json_line(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "x"\n[1, 2]\n')
    first, second = read_source(path)
    assert first.message().startswith(f"{path} line 1: invalid JSON")
    assert second.message() == f"{path} line 2: expected a JSON object"


def test_duplicate_key_names_both_origins(tmp_path: Path):
    path = _jsonl(tmp_path, [{"id": "a", "audio": "audio/utt00000.wav", "text": "one"}] * 2)
    first, second = read_source(path)
    assert isinstance(first, SourceItem)
    assert second.message() == f"{path} line 2: duplicate key 'a' (first at {path} line 1)"


def test_folder_missing_and_empty_transcripts_name_the_file(tmp_path: Path):
    corpus = write_corpus("folder", tmp_path, UTTS[:3])
    no_text = corpus.audio["group0_utt00000"]
    no_text.with_suffix(".txt").unlink()
    empty = corpus.audio["group1_utt00001"].with_suffix(".txt")
    empty.write_text("\n")
    by_key = {entry.key: entry for entry in read_source(tmp_path)}
    assert by_key["group0_utt00000"].message() == f"{no_text}: no transcript: {no_text.with_suffix('.txt')} does not exist"
    assert by_key["group1_utt00001"].message() == f"{empty}: empty transcript"
    assert isinstance(by_key["group0_utt00002"], SourceItem)


def test_librispeech_missing_audio_names_the_line(tmp_path: Path):
    corpus = write_corpus("librispeech", tmp_path, UTTS[:1])
    corpus.audio["100-2000-0000"].unlink()
    (reject,) = read_source(tmp_path)
    assert reject.origin.endswith("100-2000.trans.txt line 1")


def test_source_level_errors(tmp_path: Path):
    with pytest.raises(SourceError, match="no such file or directory"):
        read_source(tmp_path / "nope.jsonl")
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(SourceError, match=r"cannot tell the manifest format"):
        read_source(tmp_path / "m.txt")
    assert read_source(tmp_path / "m.txt", form="jsonl") == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no audio files"):
        read_source(tmp_path / "empty")


def test_stereo_and_other_formats_are_listed(tmp_path: Path):
    corpus = write_corpus("folder", tmp_path, UTTS[:2], AudioSpec(format="mp3", channels=2))
    assert {item.key for item in items(read_source(tmp_path))} == set(corpus.texts)


LATIN1 = "caf\xe9 one two".encode("latin-1")  # a transcript saved in Latin-1, not UTF-8


def test_non_utf8_transcripts_are_bad_items_naming_their_line_in_every_form(tmp_path: Path):
    jsonl = write_jsonl(tmp_path / "jsonl", UTTS[:3])
    lines = jsonl.source.read_bytes().splitlines()
    lines[1] = lines[1].replace(UTTS[1].text.encode(), LATIN1)
    jsonl.source.write_bytes(b"\n".join(lines) + b"\n")
    assert [(r.origin, r.reason[:18]) for r in rejects(read_source(jsonl.source))] == [
        (f"{jsonl.source} line 2", "not UTF-8 text (by")]

    csv_corpus = write_corpus("csv", tmp_path / "csv", UTTS[:3])
    text = csv_corpus.source.read_bytes().replace(UTTS[2].text.encode(), LATIN1)
    csv_corpus.source.write_bytes(text)
    assert [(r.origin, r.reason) for r in rejects(read_source(csv_corpus.source))] == [
        (f"{csv_corpus.source} line 4", "column 'text' is not UTF-8 text")]

    folder = write_corpus("folder", tmp_path / "folder", UTTS[:2])
    transcript = sorted((tmp_path / "folder").rglob("*.txt"))[0]
    transcript.write_bytes(LATIN1)
    assert [r.origin for r in rejects(read_source(folder.source))] == [str(transcript)]

    libri = write_corpus("librispeech", tmp_path / "libri", UTTS[:2])
    trans = next((tmp_path / "libri").rglob("*.trans.txt"))
    trans.write_bytes(trans.read_bytes().splitlines()[0] + b" " + LATIN1 + b"\n")
    assert [r.origin for r in rejects(read_source(libri.source))] == [f"{trans} line 1"]

    kaldi = write_kaldi(tmp_path / "kaldi", UTTS[:3])
    text_file = tmp_path / "kaldi" / "text"
    lines = text_file.read_bytes().splitlines()
    lines[2] = lines[2] + b" " + LATIN1
    text_file.write_bytes(b"\n".join(lines) + b"\n")
    assert [r.origin for r in rejects(read_source(kaldi.source))] == [f"{text_file} line 3"]


def test_a_utf8_bom_is_accepted_in_csv_and_jsonl(tmp_path: Path):
    for form in ("csv", "jsonl"):
        corpus = write_corpus(form, tmp_path / form, UTTS[:2])
        corpus.source.write_bytes(b"\xef\xbb\xbf" + corpus.source.read_bytes())
        entries = read_source(corpus.source)
        assert rejects(entries) == [] and len(items(entries)) == 2
