"""pack() and merge(): every source form, codecs, bad input, interruption, parallelism, parts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset

from streamtrain.audio import decode, quantize16, resample
from streamtrain.format.index import load_index
from streamtrain.pack.inspect import verify
import streamtrain.pack.packer as packer
from streamtrain.pack import PackError, SourceError, merge, pack
from tests.support.corpus import AudioSpec, CORPUS_WRITERS, Corpus, utterances, write_corpus, write_jsonl

UTTS = utterances(12, seed=5)
SMALL_SHARDS = 120_000  # a few utterances per shard, so every test crosses shard boundaries
INDEX_FILES = ("index.json", "index.durations.f32", "index.keys.txt")


def read_tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes}, in index order, read with nothing but tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in load_index(out).shards:
        with tarfile.open(out / shard.name) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def read_webdataset(out: Path) -> list[dict]:
    urls = [str(out / shard.name) for shard in load_index(out).shards]
    return list(webdataset.WebDataset(urls, shardshuffle=False))


def expected_pcm(corpus: Corpus, key: str, rate: int) -> np.ndarray:
    """The corpus's own audio for ``key``, cut, mixed and resampled as packing must: int16."""
    path = corpus.audio[key]
    start = stop = None
    if key in corpus.segments:
        file_rate = decode(path, 0, 1)[1]
        start, stop = (round(t * file_rate) for t in corpus.segments[key])
    waveform, file_rate = decode(path, start or 0, stop)
    return quantize16(resample(waveform, file_rate, rate))


def decoded_pcm(data: bytes) -> np.ndarray:
    return quantize16(decode(data)[0])


@pytest.mark.parametrize("form", sorted(CORPUS_WRITERS))
def test_every_form_packs_and_reads_back(tmp_path: Path, form: str):
    corpus = write_corpus(form, tmp_path / "src", UTTS)
    summary = pack(corpus.source, tmp_path / "out", shard_size=SMALL_SHARDS, progress=False)
    out = tmp_path / "out"
    assert (summary.samples, summary.rejected) == (len(UTTS), 0)
    assert summary.shards > 1

    samples = read_tar_samples(out)
    assert {key: json.loads(s["json"])["text"] for key, s in samples.items()} == corpus.texts
    raw = read_webdataset(out)
    assert [s["__key__"] for s in raw] == list(samples)
    for sample in raw:
        meta = json.loads(sample["json"])
        assert meta["text"] == corpus.texts[sample["__key__"]]
        assert meta["sample_rate"] == 16000
        assert set(sample) >= {"flac", "json"}
        assert np.array_equal(decoded_pcm(sample["flac"]), expected_pcm(corpus, sample["__key__"], 16000))
        assert meta["seconds"] == pytest.approx(len(decode(sample["flac"])[0]) / 16000, abs=1e-6)
    assert verify(out) == []


def test_kaldi_pipes_pack_the_same_samples_as_the_files(tmp_path: Path, monkeypatch):
    corpus = write_corpus("kaldi", tmp_path / "kaldi", UTTS[:6])
    pack(corpus.source, tmp_path / "files", progress=False)
    scp = corpus.source / "wav.scp"
    scp.write_text("".join(f"{rec} sox {path} -t flac - |\n" for rec, path in
                           (line.split() for line in scp.read_text().splitlines())))
    monkeypatch.chdir(corpus.source)  # the commands' relative paths are taken from the current folder
    pack(corpus.source, tmp_path / "piped", kaldi_pipes=True, workers=2, progress=False)
    files, piped = read_tar_samples(tmp_path / "files"), read_tar_samples(tmp_path / "piped")
    assert list(files) == list(piped)
    for key, sample in piped.items():
        assert sample["flac"] == files[key]["flac"]
        meta = json.loads(sample["json"])
        assert meta["source"] == f"sox wav/{meta['recording']}.wav -t flac - |"
        assert (meta["start"], meta["end"]) == corpus.segments[key]


def test_a_failing_kaldi_pipe_names_the_command_and_its_stderr(tmp_path: Path):
    corpus = write_corpus("kaldi", tmp_path / "kaldi", UTTS[:6])
    scp = corpus.source / "wav.scp"
    lines = scp.read_text().splitlines()
    lines[1] = "rec0001 echo no such recording >&2; exit 3 |"
    scp.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"wav\.scp line 2: echo no such recording >&2; exit 3 \|: "
                                          r"the command failed with exit status 3: no such recording"):
        pack(corpus.source, tmp_path / "out", kaldi_pipes=True, progress=False)
    summary = pack(corpus.source, tmp_path / "out", kaldi_pipes=True, skip_bad=True, overwrite=True, progress=False)
    assert (summary.samples, summary.rejected) == (3, 3)  # the 3 utterances of rec0001
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rejected] == ["utt00003", "utt00004", "utt00005"]


def test_fields_and_segments_are_stored(tmp_path: Path):
    kaldi = write_corpus("kaldi", tmp_path / "kaldi", UTTS[:3])
    pack(kaldi.source, tmp_path / "k", progress=False)
    meta = json.loads(read_tar_samples(tmp_path / "k")["utt00001"]["json"])
    assert (meta["start"], meta["end"]) == kaldi.segments["utt00001"]
    assert (meta["recording"], meta["source"]) == ("rec0000", "wav/rec0000.wav")
    assert meta["speaker"] == UTTS[1].voice.name.replace("+", "_")

    jsonl = write_jsonl(tmp_path / "jsonl", UTTS[:1])
    pack(jsonl.source, tmp_path / "j", progress=False)
    meta = json.loads(read_tar_samples(tmp_path / "j")["utt00000"]["json"])
    assert meta == {
        "id": "utt00000",
        "speaker": UTTS[0].voice.name.replace("+", "_"),
        "speed": UTTS[0].voice.speed,
        "source": "audio/utt00000.wav",
        "text": UTTS[0].text,
        "seconds": meta["seconds"],
        "sample_rate": 16000,
    }


@pytest.mark.parametrize(
    "spec",
    [AudioSpec(channels=2), AudioSpec(sample_rate=44100), AudioSpec(format="flac", sample_rate=16000)],
    ids=["stereo", "44k", "flac16k"],
)
@pytest.mark.parametrize("codec", ["flac", "pcm16"])
def test_lossless_codecs_are_sample_exact(tmp_path: Path, spec: AudioSpec, codec: str):
    corpus = write_jsonl(tmp_path / "src", UTTS[:4], spec)
    pack(corpus.source, tmp_path / "out", codec=codec, progress=False)
    ext = {"flac": "flac", "pcm16": "wav"}[codec]
    for key, members in read_tar_samples(tmp_path / "out").items():
        assert np.array_equal(decoded_pcm(members[ext]), expected_pcm(corpus, key, 16000))


def test_opus_decodes_to_about_the_right_length(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:4], AudioSpec(format="mp3"))
    pack(corpus.source, tmp_path / "out", codec="opus", progress=False)
    for key, members in read_tar_samples(tmp_path / "out").items():
        waveform, rate = decode(members["opus"])
        assert rate == 16000
        assert len(waveform) == pytest.approx(len(expected_pcm(corpus, key, 16000)), abs=0.02 * 16000)
        assert json.loads(members["json"])["seconds"] == pytest.approx(len(waveform) / 16000, abs=0.02)
    assert verify(tmp_path / "out") == []


def test_opus_bitrate_sets_the_encoder_target(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS)

    def kbit_per_second(bitrate):
        out = tmp_path / f"opus-{bitrate}"
        pack(corpus.source, out, codec="opus", bitrate=bitrate, progress=False)
        samples = read_tar_samples(out).values()
        seconds = sum(json.loads(s["json"])["seconds"] for s in samples)
        return sum(len(s["opus"]) for s in samples) * 8 / seconds / 1000

    low, high = kbit_per_second(16000), kbit_per_second(64000)
    assert 45 <= high <= 70  # variable bitrate: libopus's speech coder (SILK) takes less than 64k
    assert 14 <= low <= 20 and high > 2.5 * low


def test_opus_complexity_reaches_the_encoder(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:3])
    packs = {}
    for complexity in (0, 10):
        pack(corpus.source, tmp_path / f"c{complexity}", codec="opus", opus_complexity=complexity, progress=False)
        packs[complexity] = read_tar_samples(tmp_path / f"c{complexity}")
    for key, members in packs[0].items():
        assert members["opus"] != packs[10][key]["opus"]
        assert len(decode(members["opus"])[0]) == len(expected_pcm(corpus, key, 16000))


@pytest.mark.parametrize(
    "options,message",
    [({"codec": "flac", "bitrate": 24000}, "opus only"), ({"codec": "opus", "bitrate": 5000}, "6000 to 256000"),
     ({"codec": "pcm16", "opus_complexity": 4}, "a complexity applies to --codec opus only, not pcm16"),
     ({"codec": "opus", "opus_complexity": 11}, "integer 0 to 10")],
)
def test_bad_bitrate_is_refused(tmp_path: Path, options, message):
    corpus = write_jsonl(tmp_path / "src", UTTS[:1])
    with pytest.raises(PackError, match=message):
        pack(corpus.source, tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_copy_keeps_source_bytes_where_it_can(tmp_path: Path):
    at_16k = write_jsonl(tmp_path / "flac16", UTTS[:3], AudioSpec(format="flac", sample_rate=16000))
    summary = pack(at_16k.source, tmp_path / "a", codec="copy", progress=False)
    assert summary.reencoded == 0
    for key, members in read_tar_samples(tmp_path / "a").items():
        assert members["flac"] == at_16k.audio[key].read_bytes()

    opus_48k = write_jsonl(tmp_path / "opus48", UTTS[:3], AudioSpec(format="opus", sample_rate=48000))
    summary = pack(opus_48k.source, tmp_path / "b", codec="copy", sample_rate=None, progress=False)
    assert summary.reencoded == 0
    assert load_index(tmp_path / "b").sample_rate is None
    for key, members in read_tar_samples(tmp_path / "b").items():
        assert members["opus"] == opus_48k.audio[key].read_bytes()
        assert json.loads(members["json"])["sample_rate"] == 48000

    summary = pack(opus_48k.source, tmp_path / "c", codec="copy", progress=False)  # 48 kHz -> 16 kHz
    assert summary.reencoded == 3
    assert all(set(m) == {"flac", "json"} for m in read_tar_samples(tmp_path / "c").values())

    kaldi = write_corpus("kaldi", tmp_path / "kaldi", UTTS[:3], AudioSpec(sample_rate=16000))
    assert pack(kaldi.source, tmp_path / "d", codec="copy", progress=False).reencoded == 3  # segments
    assert verify(tmp_path / "d") == []


def test_keep_sample_rate(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:2], AudioSpec(sample_rate=22050))
    pack(corpus.source, tmp_path / "out", sample_rate=None, progress=False)
    for key, members in read_tar_samples(tmp_path / "out").items():
        assert json.loads(members["json"])["sample_rate"] == 22050
        assert np.array_equal(decoded_pcm(members["flac"]), expected_pcm(corpus, key, 22050))


def _bad_manifest(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A manifest with one bad item of each kind at known lines; (path, line -> reason regex)."""
    corpus = write_jsonl(tmp_path / "src", UTTS[:6])
    (tmp_path / "src" / "audio" / "garbage.wav").write_bytes(b"RIFF not really a wav file" * 10)
    lines = [json.loads(line) for line in corpus.source.read_text().splitlines()]
    lines.insert(2, {"id": "gone", "audio": "audio/nothing.wav", "text": "one"})
    lines.insert(4, {"id": "garbage", "audio": "audio/garbage.wav", "text": "two"})
    lines.insert(6, {"id": "silent", "audio": "audio/utt00000.wav", "text": ""})
    lines.append(dict(lines[0]))
    manifest = tmp_path / "src" / "bad.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reasons = {
        "line 3": "audio file not found",
        "line 5": ".*garbage.wav: cannot read audio header",
        "line 7": "missing or empty transcript",
        "line 10": "duplicate key 'utt00000' \\(first at .*line 1\\)",
    }
    return manifest, reasons


def _one_line_manifest(tmp_path: Path, name: str, lines: list[dict]) -> Path:
    path = tmp_path / "src" / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_each_bad_input_is_an_error_naming_its_line(tmp_path: Path):
    manifest, reasons = _bad_manifest(tmp_path)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for number, reason in reasons.items():
        n = int(number.split()[1])
        path = _one_line_manifest(tmp_path, f"case{n}", [lines[0], lines[n - 1]])
        with pytest.raises(SourceError, match=f"{path} line 2: {reason}"):
            pack(path, tmp_path / f"out{n}", progress=False)
        assert not (tmp_path / f"out{n}" / "index.json").exists()


def test_first_problem_is_raised_and_the_rest_counted(tmp_path: Path):
    manifest, _ = _bad_manifest(tmp_path)
    with pytest.raises(SourceError, match=r"line 3: audio file not found.*\(2 more bad items"):
        pack(manifest, tmp_path / "out", progress=False)


def test_skip_bad_writes_rejects(tmp_path: Path):
    manifest, reasons = _bad_manifest(tmp_path)
    summary = pack(manifest, tmp_path / "out", skip_bad=True, progress=False, shard_size=SMALL_SHARDS)
    assert (summary.samples, summary.rejected) == (6, 4)
    assert load_index(tmp_path / "out").rejected == 4
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rejected] == ["gone", "garbage", "silent", "utt00000"]
    for record, (number, reason) in zip(rejected, reasons.items()):
        assert record["origin"] == f"{manifest} {number}"
        assert re.search(reason, record["reason"])
    assert verify(tmp_path / "out") == []


def test_error_midway_leaves_no_index_and_no_partial_shard(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS)
    (tmp_path / "src" / "audio" / "utt00009.wav").write_bytes(b"\0" * 4000)  # undecodable, late in the list
    with pytest.raises(SourceError, match=r"manifest\.jsonl line 10: .*utt00009\.wav"):
        pack(corpus.source, tmp_path / "out", shard_size=SMALL_SHARDS, progress=False)
    names = os.listdir(tmp_path / "out")
    assert "index.json" not in names
    assert not [name for name in names if name.endswith(".tmp")]
    assert len([name for name in names if name.endswith(".tar")]) >= 1  # complete shards stay, unlisted


_SLOW_PACK = """
import sys, time
import streamtrain.pack.packer as packer
encode = packer._encode_item
def slow(*args):
    time.sleep(0.3)
    return encode(*args)
packer._encode_item = slow
packer.pack(sys.argv[1], sys.argv[2], shard_size=int(sys.argv[3]), progress=False)
"""


def test_sigkill_midway_leaves_no_index(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_PACK, str(corpus.source), str(out), str(SMALL_SHARDS)])
    try:
        deadline = time.monotonic() + 60
        while not (out / "shard-000001.tar.tmp").exists():
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("the pack did not reach its second shard")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "index.json").exists()
    assert (out / "shard-000000.tar").exists()
    summary = pack(corpus.source, out, shard_size=SMALL_SHARDS, overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == sorted([*INDEX_FILES, *(f"shard-{i:06d}.tar" for i in range(summary.shards))])


@pytest.mark.parametrize("codec", ["flac", "opus"])
def test_two_workers_write_byte_identical_shards(tmp_path: Path, codec: str):
    corpus = write_corpus("kaldi", tmp_path / "src", UTTS, AudioSpec(sample_rate=44100, channels=2))
    shard_size = SMALL_SHARDS // 8 if codec == "opus" else SMALL_SHARDS  # several shards either way
    pack(corpus.source, tmp_path / "serial", codec=codec, shard_size=shard_size, progress=False)
    pack(corpus.source, tmp_path / "parallel", codec=codec, shard_size=shard_size, workers=2, progress=False)
    names = sorted(os.listdir(tmp_path / "serial"))
    assert names == sorted(os.listdir(tmp_path / "parallel"))
    for name in names:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes(), name


def test_a_failing_worker_stops_the_pack(tmp_path: Path, monkeypatch):
    """A bug in a worker is raised in the main process; a worker that dies is an error, not a hang."""
    corpus = write_jsonl(tmp_path / "src", UTTS)
    encode = packer._encode_item

    def failing(item, encoding):
        if item.key == "utt00007":
            raise ZeroDivisionError("a bug")
        return encode(item, encoding)

    monkeypatch.setattr(packer, "_encode_item", failing)  # workers are forked: they see it too
    with pytest.raises(ZeroDivisionError, match="a bug"):
        pack(corpus.source, tmp_path / "bug", workers=2, progress=False)

    def dying(item, encoding):
        if item.key == "utt00007":
            os._exit(3)
        return encode(item, encoding)

    monkeypatch.setattr(packer, "_encode_item", dying)
    with pytest.raises(PackError, match=r"a pack worker process ended unexpectedly \(exit code 3\)"):
        pack(corpus.source, tmp_path / "died", workers=2, progress=False)
    assert not (tmp_path / "died" / "index.json").exists()


def test_packing_with_workers_does_not_import_torch(tmp_path: Path):
    """Resampling is numpy and workers are forked: torch's 1-2 s import is paid nowhere."""
    corpus = write_jsonl(tmp_path / "src", UTTS[:4])  # 22.05 kHz: every item is resampled
    code = ("import sys; from streamtrain.pack import pack; "
            "pack(sys.argv[1], sys.argv[2], codec='opus', workers=2, progress=False); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(corpus.source), str(tmp_path / "out")], check=True)


def test_parts_and_merge_equal_a_serial_pack(tmp_path: Path):
    manifest, _ = _bad_manifest(tmp_path)
    pack(manifest, tmp_path / "serial", skip_bad=True, progress=False)
    out = tmp_path / "parts"
    for i in (2, 0, 1):
        summary = pack(manifest, out, part=(i, 3), skip_bad=True, shard_size=SMALL_SHARDS, progress=False)
        assert summary.index == f"index.part-{i:04d}-of-0003.json"
    assert any(name.startswith("shard-p0001of0003-") for name in os.listdir(out))
    merged = merge(out)
    assert not [name for name in os.listdir(out) if ".part-" in name]
    assert read_tar_samples(out) == read_tar_samples(tmp_path / "serial")
    assert list(read_tar_samples(out)) == list(read_tar_samples(tmp_path / "serial"))
    assert merged.rejected == load_index(tmp_path / "serial").rejected == 4
    assert (out / "rejects.jsonl").read_text() == (tmp_path / "serial" / "rejects.jsonl").read_text()
    assert verify(out) == []


def test_merge_refuses_missing_parts_and_duplicate_keys(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:6])
    out = tmp_path / "out"
    pack(corpus.source, out, part=(0, 2), progress=False)
    with pytest.raises(PackError, match=r"1 of 2 parts are missing \(index\.part-0001-of-0002\.json\)"):
        merge(out)
    lines = corpus.source.read_text().splitlines()
    reversed_manifest = _one_line_manifest(tmp_path, "reversed", [json.loads(line) for line in reversed(lines)])
    pack(reversed_manifest, out, part=(1, 2), progress=False)  # its second half is the first half's keys
    with pytest.raises(PackError, match=r"key 'utt0000\d' is in both shard-p0000of0002-000000\.tar and shard-p0001of0002"):
        merge(out)
    assert not (out / "index.json").exists()
    with pytest.raises(PackError, match="no part indexes"):
        merge(tmp_path / "src")


def test_merge_refuses_parts_encoded_differently_and_keeps_the_bitrate(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:4])
    out = tmp_path / "out"
    pack(corpus.source, out, part=(0, 2), codec="opus", bitrate=24000, progress=False)
    pack(corpus.source, out, part=(1, 2), codec="opus", bitrate=32000, progress=False)
    with pytest.raises(PackError, match=r"index\.part-0001-of-0002\.json: codec opus at 32000 bit/s, 16000 Hz "
                                        r"differs from part 0's codec opus at 24000 bit/s, 16000 Hz"):
        merge(out)
    pack(corpus.source, out, part=(1, 2), codec="opus", bitrate=24000, progress=False, overwrite=True)
    assert merge(out).bitrate == 24000
    assert load_index(out).bitrate == 24000


def test_part_files_are_refused_unless_overwrite(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:4])
    out = tmp_path / "out"
    pack(corpus.source, out, part=(0, 2), progress=False)
    with pytest.raises(PackError, match="not empty"):
        pack(corpus.source, out, part=(0, 2), progress=False)
    pack(corpus.source, out, part=(0, 2), progress=False, overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match=r"not empty \(notes\.txt\)"):
        pack(corpus.source, out, part=(1, 2), progress=False)
    pack(corpus.source, out, part=(1, 2), progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert merge(out).samples == 4


def test_non_empty_output_is_refused_and_overwrite_replaces_the_old_pack(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS)
    out = tmp_path / "out"
    first = pack(corpus.source, out, shard_size=SMALL_SHARDS, progress=False)
    with pytest.raises(PackError, match=f"output folder {out} is not empty"):
        pack(corpus.source, out, progress=False)
    second = pack(corpus.source, out, progress=False, overwrite=True)  # one big shard now
    assert first.shards > second.shards == 1
    assert sorted(os.listdir(out)) == sorted([*INDEX_FILES, "shard-000000.tar"])


def test_unwritable_output_names_the_path(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS[:1])
    (tmp_path / "file").write_text("")
    with pytest.raises(PackError, match=f"cannot use output folder {tmp_path / 'file' / 'out'}"):
        pack(corpus.source, tmp_path / "file" / "out", progress=False)


def test_shard_size_rollover(tmp_path: Path):
    corpus = write_jsonl(tmp_path / "src", UTTS)
    pack(corpus.source, tmp_path / "out", shard_size=SMALL_SHARDS, progress=False)
    index = load_index(tmp_path / "out")
    sizes = [(tmp_path / "out" / shard.name).stat().st_size for shard in index.shards]
    assert all(size <= SMALL_SHARDS for size in sizes)
    assert sizes == [shard.bytes for shard in index.shards]
    merged_pairs = [a + b for a, b in zip(sizes, sizes[1:])]
    assert all(pair > SMALL_SHARDS for pair in merged_pairs)  # no shard was closed early
    for shard in index.shards:
        seconds = [json.loads(s["json"])["seconds"] for s in _shard_samples(tmp_path / "out" / shard.name)]
        assert shard.max_seconds == pytest.approx(max(seconds), abs=1e-6)
        assert shard.seconds == pytest.approx(sum(seconds), abs=1e-5)

    pack(corpus.source, tmp_path / "tiny", shard_size=1000, progress=False)  # every sample is too big alone
    assert [shard.samples for shard in load_index(tmp_path / "tiny").shards] == [1] * len(UTTS)


def _shard_samples(path: Path) -> list[dict[str, bytes]]:
    with tarfile.open(path) as tar:
        members = [(m.name.split(".", 1), tar.extractfile(m).read()) for m in tar]
    samples: dict[str, dict[str, bytes]] = {}
    for (key, ext), data in members:
        samples.setdefault(key, {})[ext] = data
    return list(samples.values())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"codec": "mp3"}, "unknown codec 'mp3'"),
        ({"codec": "opus", "sample_rate": 22050}, "opus needs a sample rate"),
        ({"sample_rate": 0}, "sample rate must be a positive integer"),
        ({"shard_size": 0}, "shard size must be a positive"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"part": (3, 3)}, "part must be"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, message: str):
    corpus = write_jsonl(tmp_path / "src", UTTS[:1])
    with pytest.raises(PackError, match=message):
        pack(corpus.source, tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_a_webdataset_source_keeps_its_json_fields_and_names_bad_samples(tmp_path: Path):
    corpus = write_corpus("webdataset", tmp_path / "src", UTTS[:6])
    audio = next(iter(corpus.audio.values())).read_bytes()
    with webdataset.TarWriter(str(tmp_path / "src" / "part-009.tar")) as sink:
        sink.write({"__key__": "no_audio", "txt": "one two"})
        sink.write({"__key__": "no_text", "wav": audio, "json": {"speaker": "x"}})
    with pytest.raises(SourceError, match=r"part-009\.tar:no_audio: no audio member"):
        pack(corpus.source, tmp_path / "out", progress=False)
    summary = pack(corpus.source, tmp_path / "out", skip_bad=True, workers=2, progress=False)
    assert (summary.samples, summary.rejected) == (6, 2)
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reasons[1].startswith("missing or empty transcript")
    samples = read_tar_samples(tmp_path / "out")
    assert {key: json.loads(s["json"])["text"] for key, s in samples.items()} == corpus.texts
    odd = json.loads(samples[list(corpus.texts)[1]]["json"])  # its transcript came in a json member
    utt = UTTS[1]
    assert odd["speed"] == utt.voice.speed and odd["source"] == f"part-000.tar:{odd['speaker']}/{utt.name}.wav"
