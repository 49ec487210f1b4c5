"""``streamtrain label --fill-windows``: windows of consecutive samples, timestamped segments parsed and given back to
their samples (pure functions), and a labelling run on real espeak-ng audio (mechanics: a random teacher writes
garbage text)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from streamtrain.cli import main
from streamtrain.distill.window_labels import Segment, TimestampRules, joined_generation, sample_segments, \
    timestamped_segments, window_rows
from streamtrain.format.shard_reader import ShardFile
from streamtrain.loader import StreamLoader
from streamtrain.train.model import TextCodec
from streamtrain.train.whisper_tokenizer import timestamp_times
from tests.support.runs import DIGITS_TIMESTAMPS_TOKENIZER, digit_dataset, random_whisper
from tests.support.servers import free_port

TOKENIZER = AutoTokenizer.from_pretrained(DIGITS_TIMESTAMPS_TOKENIZER)
TIMES = timestamp_times(TOKENIZER)


def ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def segments_of(text: str) -> list[tuple]:
    token_ids = ids(text)
    return [(s.start, s.end, TOKENIZER.decode(s.token_ids).strip(), len(s.logprobs))
            for s in timestamped_segments(token_ids, [-0.5] * len(token_ids), TIMES)]


def test_windows_join_consecutive_samples_greedily_and_a_long_one_sits_alone():
    assert window_rows([2, 2, 1, 3, 5, 1], 4).tolist() == [0, 0, 1, 1, 2, 3]
    assert window_rows([], 4).tolist() == []


def test_segments_follow_whisper_timestamp_pairs():
    assert segments_of("<|0.00|> one two<|1.84|><|1.84|> three<|3.10|>") == [
        (0.0, 1.84, "one two", 3), (1.84, 3.10, "three", 2)]  # text tokens and the closing timestamp
    # a lone timestamp between texts ends one segment and starts the next
    assert segments_of("<|0.00|> one<|1.00|> two<|2.00|>") == [(0.0, 1.0, "one", 2), (1.0, 2.0, "two", 2)]


@pytest.mark.parametrize("text,expected", [
    ("<|0.00|> one<|1.00|><|1.00|> two", [(0.0, 1.0, "one", 2), (1.0, None, "two", 1)]),  # no end timestamp
    ("one<|1.00|><|1.20|> two<|2.00|>", [(0.0, 1.0, "one", 2), (1.2, 2.0, "two", 2)]),  # text before any timestamp
    ("one two", []),  # no timestamp at all: nothing ties the text to a time
    ("<|0.00|><|1.00|><|2.00|>", []),  # timestamps with no text between them
    ("", []),
    ("<|2.00|> one<|1.00|>", [(2.0, None, "one", 2)]),  # a closing time before the start is no end
])
def test_segment_edge_cases(text, expected):
    assert segments_of(text) == expected


def test_each_segment_goes_to_the_sample_it_overlaps_most():
    offsets, seconds = [0.0, 1.84, 3.0], [1.84, 1.16, 0.9]  # three samples end to end, 3.9 s

    def given(*segments):
        found = sample_segments(segments, offsets, seconds)
        return [[segments.index(segment) for segment in mine] for mine in found]

    first, second, last = Segment(0.0, 1.84, [], []), Segment(1.5, 2.9, [], []), Segment(3.5, None, [], [])
    # exactly the first; straddling the first two, mostly the second; no end: to the end of the audio
    assert given(first, second, last) == [[0], [1], [2]]
    assert given(Segment(0.2, 2.0, [], [])) == [[0], [], []]  # straddles, mostly the first
    assert given(Segment(1.0, 2.68, [], [])) == [[], [0], []]  # 0.84 s in each: the one starting nearest
    assert given(Segment(4.0, 4.2, [], [])) == [[], [], [0]]  # past the audio (the padding): the nearest
    assert given() == [[], [], []]


def test_a_segment_holding_several_samples_speech_gives_them_nothing():
    """The teacher wrote no timestamp between two samples: its text cannot be split by time, so each sample it
    covers more than half of, and the one it overlaps most, gets no segment (to be labelled alone)."""
    offsets, seconds = [0.0, 1.84, 3.0], [1.84, 1.16, 0.9]
    both, then, last = Segment(0.0, 3.0, [], []), Segment(2.9, 3.0, [], []), Segment(3.0, 3.9, [], [])
    assert sample_segments([both, then, last], offsets, seconds) == [[], [], [last]]
    # no end timestamp: it runs to the end of the audio, over the last sample too
    assert sample_segments([Segment(1.84, None, [], [])], offsets, seconds) == [[], [], []]


def test_a_sample_label_joins_its_segments():
    codec = TextCodec(TOKENIZER, ["<|startoftranscript|>", "<|notimestamps|>"], "<|endoftext|>", 24)
    joined = joined_generation([Segment(0.0, 1.0, ids("one two"), [-1.0, -1.0, -0.5]),
                                Segment(1.0, None, ids("three"), [-1.5])], codec)
    assert (joined.text, joined.token_ids, joined.avg_logprob) == ("one two three", ids("one two three"), -1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("window-labels")
    data = digit_dataset(root / "train", 12, seed=5)  # 4 shards of 3 samples
    # seed 0: a random teacher whose timestamped segments fit the samples of one of its windows
    return root, data, random_whisper(root / "teacher", decoder_layers=2, seed=0, timestamps=True)


def label(data, teacher, out, *extra) -> int:
    return main(["label", str(data), "--teacher", str(teacher), "--out", str(out), "--batch-size", "4",
                 "--num-workers", "0", "--no-progress", *extra])


def lines(out) -> dict[str, dict]:
    return {key: json.loads(members["json"]) for shard in sorted(out.glob("shard-*.tar"))
            for key, members in ShardFile.in_memory(shard.read_bytes(), str(shard))}


def expected_alone(data) -> int:
    """Samples alone in their window: the labeller's batches (stored order, one shard each) cut into 4 s windows."""
    loader = StreamLoader(data, batch_size=4, epochs=1, num_workers=0, shards=range(4))
    return sum(int((np.bincount(rows)[rows] == 1).sum())
               for rows in (window_rows(batch.seconds.tolist(), 4.0) for batch in loader))


@pytest.mark.slow
def test_labelling_on_windows_labels_every_key_once_resumes_and_refuses_other_settings(setup, tmp_path, capsys):
    _, data, teacher = setup
    out = tmp_path / "labels"
    assert label(data, teacher, out, "--fill-windows", "--max-wer", "10") == 0
    labelled = lines(out)
    base = list(lines(data))
    assert list(labelled) == base  # every key once, in stored order
    for line in labelled.values():
        assert {"text", "token_ids", "avg_logprob", "wer", "keep", "labelled"} <= set(line)
    how = json.loads((out / "index.json").read_text())["column"]["labelled"]
    assert sum(how.values()) == 12 and how.get("alone", 0) == expected_alone(data) < 12
    assert how["window"] > 0 and how["fallback"] > 0  # this teacher's segments fit some windows' samples, not all
    assert "labelled from windows" in capsys.readouterr().out
    keys = [key for batch in StreamLoader(data, batch_size=5, epochs=1, num_workers=0, columns=[str(out)])
            for key in batch.keys]  # the column joins the dataset
    assert sorted(keys) == sorted(base)

    # interrupted before its last shard and the index: the resumed run rewrites that shard alike
    last = sorted(out.glob("shard-*.tar"))[-1]
    written = last.read_bytes()
    last.unlink()
    (out / "index.json").unlink()
    assert label(data, teacher, out, "--fill-windows", "--max-wer", "10") == 0
    assert "3 already complete" in capsys.readouterr().out and last.read_bytes() == written
    assert json.loads((out / "index.json").read_text())["column"]["labelled"] == how

    (out / "index.json").unlink()  # a resume without windows is refused
    assert label(data, teacher, out, "--max-wer", "10") == 2
    assert "an earlier run differs in its settings" in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_label_on_windows_and_write_the_single_process_column(setup, tmp_path):
    """Under torchrun each rank labels its own shards on windows; rank 0 counts how every sample was
    labelled from all ranks' shards: the column, byte for byte, and the counts of one process."""
    _, data, teacher = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread each: the same float sums

    def args(out):
        return ["-m", "streamtrain", "label", str(data), "--teacher", str(teacher), "--out", str(out),
                "--batch-size", "4", "--no-progress", "--fill-windows", "--max-wer", "10"]

    alone = subprocess.run([sys.executable, *args(tmp_path / "one")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(free_port()), *args(tmp_path / "two")], env=env,
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 processes; this one's share" in launched.stdout
    one, two = (json.loads((tmp_path / name / "index.json").read_text()) for name in ("one", "two"))
    assert two["shards"] == one["shards"] and two["columns"] == one["columns"]
    assert two["column"]["labelled"] == one["column"]["labelled"] and one["column"]["labelled"]["window"] > 0
    assert lines(tmp_path / "two") == lines(tmp_path / "one")


@pytest.mark.slow
def test_samples_that_get_no_segment_are_labelled_alone_as_per_sample_labelling_does(setup, tmp_path, capsys):
    """A teacher that never writes a timestamp (all suppressed in its generation config): every sample of a
    window of several falls back to being labelled alone, none is dropped, and each label is the per-sample one."""
    root, data, teacher = setup
    silent = tmp_path / "no-timestamps-teacher"
    shutil.copytree(teacher, silent)
    config = GenerationConfig.from_pretrained(silent)
    config.suppress_tokens = sorted(TIMES)
    config.save_pretrained(silent)
    assert label(data, silent, tmp_path / "windows", "--fill-windows") == 0
    how = json.loads((tmp_path / "windows" / "index.json").read_text())["column"]["labelled"]
    assert how == {"alone": expected_alone(data), "fallback": 12 - expected_alone(data)}
    assert label(data, silent, tmp_path / "per-sample") == 0
    windowed, alone = lines(tmp_path / "windows"), lines(tmp_path / "per-sample")
    assert [line["text"] for line in windowed.values()] == [line["text"] for line in alone.values()]


def test_windows_need_a_teacher_with_timestamp_tokens(tmp_path, capsys):
    data = digit_dataset(tmp_path / "data", 3, seed=1)
    teacher = random_whisper(tmp_path / "teacher", decoder_layers=1)  # the plain digits tokenizer
    assert label(data, teacher, tmp_path / "labels", "--fill-windows") == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "--fill-windows: the teacher's tokenizer has no timestamp tokens" in error


@pytest.mark.slow
def test_a_run_written_before_the_setting_existed_continues_without_windows(setup, tmp_path, capsys):
    _, data, teacher = setup
    out = tmp_path / "labels"
    assert label(data, teacher, out) == 0
    run = json.loads((out / "label-run.json").read_text())
    del run["settings"]["fill_windows"]  # as an earlier streamtrain wrote it
    (out / "label-run.json").write_text(json.dumps(run))
    (out / "index.json").unlink()
    sorted(out.glob("shard-*.tar"))[-1].unlink()
    assert label(data, teacher, out) == 0 and "3 already complete" in capsys.readouterr().out
    assert label(data, teacher, out, "--fill-windows") == 2
    assert "an earlier run differs in its settings" in capsys.readouterr().err


def test_whisper_timestamp_rules_mask_each_step():
    """Vocabulary: 0 the end token, 1-2 text, 3-6 the times 0.0, 0.5, 1.0, 2.0 s; text much likelier than any time
    (so only the ordering rules act), then times likelier together than the likeliest text (so a time it is)."""
    rules = TimestampRules({3: 0.0, 4: 0.5, 5: 1.0, 6: 2.0}, eos_id=0, vocabulary=7)

    def allowed(*chosen, text=10.0, end=0.0):
        logits = torch.tensor([[end, text, text, 0.0, 0.0, 0.0, 0.0]])
        rules(logits, [torch.tensor([token]) for token in chosen])
        return torch.isfinite(logits[0]).nonzero()[:, 0].tolist()

    assert allowed() == [3, 4, 5]  # a timestamp first, at most 1 s
    assert allowed(3) == [0, 1, 2]  # after the first timestamp (or a pair): text (or the end)
    assert allowed(3, 1) == [0, 1, 2, 4, 5, 6]  # after text: no time before the last
    assert allowed(3, 1, 5, end=10.0) == [0, 5, 6]  # after a lone timestamp: repeat it, go on, or end; no text
    assert allowed(3, 1, 5, 5) == [0, 1, 2]  # after a pair: text
    assert allowed(3, 1, text=0.5) == [4, 5, 6]  # the times together outweigh the likeliest other token
    assert allowed(3, 1, 5) == [5, 6]  # ... the end token included
