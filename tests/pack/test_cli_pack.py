"""``streamtrain pack`` and ``streamtrain inspect`` from the command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrain.cli import main
from streamtrain.format.index import load_index
from streamtrain.cli.pack import parse_bitrate, parse_part, parse_sample_rate, parse_size
from tests.support.corpus import utterances, write_corpus, write_jsonl

UTTS = utterances(8, seed=21)


@pytest.mark.parametrize(
    "text, size",
    [("1000", 1000), ("256MB", 256 * 10**6), ("1.5GB", 1_500_000_000), ("64 KiB", 65536), ("2gib", 2 * 2**30),
     ("10kb", 10_000), ("3MiB", 3 * 2**20), ("7B", 7)],
)
def test_parse_size(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-5MB", "0", "1e9"])
def test_parse_size_rejects(text: str):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_parse_sample_rate_and_part():
    assert (parse_sample_rate("16000"), parse_sample_rate("keep")) == (16000, None)
    assert parse_part("3/8") == (3, 8)
    for bad in ["8/8", "1", "-1/4", "a/b"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_part(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sample_rate("fast")
    assert (parse_bitrate("24k"), parse_bitrate("24000"), parse_bitrate("12.5K")) == (24000, 24000, 12500)
    for bad in ["24 kbps", "fast", "-8k", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bitrate(bad)


def test_pack_then_inspect(tmp_path: Path, capsys):
    corpus = write_jsonl(tmp_path / "src", UTTS)
    out = tmp_path / "out"
    code = main(["pack", str(corpus.source), str(out), "--codec", "pcm16", "--shard-size", "100KB", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("packed 8 samples") and str(out / "index.json") in printed
    index = load_index(out)
    assert index.codec == "pcm16" and len(index.shards) > 1

    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["samples"], summary["codec"], summary["sample_rate"]) == (8, "pcm16", 16000)

    assert main(["inspect", str(out), "--verify"]) == 0
    assert f"verified {len(index.shards)} shards: OK" in capsys.readouterr().out

    shard = out / index.shards[0].name
    shard.write_bytes(shard.read_bytes()[:-1024] + b"\1" * 1024)
    assert main(["inspect", str(out), "--verify", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == [f"{shard.name}: sha256 does not match the index (corrupt or replaced)"]


def test_parts_and_merge(tmp_path: Path, capsys):
    corpus = write_corpus("folder", tmp_path / "src", UTTS)
    out = tmp_path / "out"
    for i in range(2):
        assert main(["pack", str(corpus.source), str(out), "--part", f"{i}/2", "--sample-rate", "keep",
                     "--no-progress"]) == 0
    assert main(["pack", "--merge", str(out)]) == 0
    assert "merged" in capsys.readouterr().out
    index = load_index(out)
    assert (index.samples, index.sample_rate) == (8, None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["pack", "{tmp}/missing.jsonl", "{tmp}/out"], "{tmp}/missing.jsonl: no such file or directory"),
        (["pack", "{tmp}/src/manifest.jsonl", "{tmp}/src"], "output folder {tmp}/src is not empty"),
        (["pack", "{tmp}/src/manifest.jsonl", "{tmp}/out", "--codec", "opus", "--sample-rate", "44100"],
         "opus needs a sample rate"),
        (["pack", "{tmp}/src/manifest.jsonl"], "pack needs SOURCE and OUT_DIR"),
        (["pack", "--merge", "{tmp}/src"], "no part indexes"),
        (["inspect", "{tmp}/src"], "no index.json"),
        (["pack", "{tmp}/bad.jsonl", "{tmp}/out"], "{tmp}/bad.jsonl line 1: audio file not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, capsys, args: list[str], message: str):
    write_jsonl(tmp_path / "src", UTTS[:1])
    (tmp_path / "bad.jsonl").write_text('{"audio": "nope.wav", "text": "one"}\n')
    code = main([arg.format(tmp=tmp_path) for arg in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("streamtrain: error: ") and message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_option_values_are_usage_errors(tmp_path: Path, capsys):
    for args in (["--part", "2/2"], ["--shard-size", "lots"], ["--sample-rate", "fast"], ["--codec", "mp3"],
                 ["--bitrate", "high"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["pack", "src.jsonl", str(tmp_path / "out"), *args])
        assert exit_info.value.code == 2
        assert "streamtrain pack: error:" in capsys.readouterr().err


def test_python_m_streamtrain_with_two_workers(tmp_path: Path):
    corpus = write_corpus("kaldi", tmp_path / "src", UTTS)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "streamtrain", "pack", str(corpus.source), str(out), "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "samples/s" in result.stdout and "hours=" in result.stdout  # progress: plain lines, not a terminal
    assert "\r" not in result.stdout + result.stderr
    assert load_index(out).samples == len(UTTS)


def test_kaldi_pipes_flag(tmp_path: Path, capsys):
    corpus = write_corpus("kaldi", tmp_path / "src", utterances(3, seed=1))
    scp = corpus.source / "wav.scp"
    scp.write_text("".join(f"{rec} cat {corpus.source / path} |\n"
                           for rec, path in (line.split() for line in scp.read_text().splitlines())))
    assert main(["pack", str(corpus.source), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "is a command; run it with --kaldi-pipes" in capsys.readouterr().err
    assert main(["pack", str(corpus.source), str(tmp_path / "out"), "--no-progress", "--kaldi-pipes"]) == 0
    assert load_index(tmp_path / "out").samples == 3


def test_bitrate_reaches_the_packer(tmp_path: Path, capsys):
    corpus = write_jsonl(tmp_path / "src", UTTS[:2])
    assert main(["pack", str(corpus.source), str(tmp_path / "flac"), "--bitrate", "24k", "--no-progress"]) == 2
    assert "a bitrate applies to --codec opus only, not flac" in capsys.readouterr().err
    assert main(["pack", str(corpus.source), str(tmp_path / "opus"), "--codec", "opus", "--bitrate", "24k",
                 "--no-progress"]) == 0
    assert load_index(tmp_path / "opus").codec == "opus"
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "opus")]) == 0
    assert "(encoder target 24 kbit/s)" in capsys.readouterr().out


def test_a_full_disk_is_a_one_line_error_that_leaves_nothing_behind(tmp_path: Path):
    """A real fault: pack runs with a 150 kB file-size limit (RLIMIT_FSIZE): the first shard cannot be written."""
    corpus = write_jsonl(tmp_path / "src", utterances(12, seed=5))
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (150000, 150000))\n"
              "from streamtrain.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "pack", str(corpus.source), str(tmp_path / "out"),
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"streamtrain: error: cannot write {tmp_path / 'out' / 'shard-000000.tar.tmp'}: " \
                                    "File too large"
    assert list((tmp_path / "out").iterdir()) == []


def test_opus_complexity_reaches_the_packer(tmp_path: Path, capsys):
    corpus = write_jsonl(tmp_path / "src", UTTS[:2])
    assert main(["pack", str(corpus.source), str(tmp_path / "bad"), "--codec", "opus", "--opus-complexity", "11",
                 "--no-progress"]) == 2
    assert "opus complexity must be an integer 0 to 10, not 11" in capsys.readouterr().err
    for complexity in ("0", "10"):
        assert main(["pack", str(corpus.source), str(tmp_path / complexity), "--codec", "opus",
                     "--opus-complexity", complexity, "--no-progress"]) == 0
    shards = [(tmp_path / c / "shard-000000.tar").read_bytes() for c in ("0", "10")]
    assert shards[0] != shards[1]
