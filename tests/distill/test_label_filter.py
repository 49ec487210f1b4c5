"""``label --max-wer`` leaves filtered samples out of training at planning time: a distillation run never reads
them, counts them, resumes exactly and audits clean."""

import json
from pathlib import Path

import numpy as np
import pytest
import zstandard

from streamtrain.cli import main
from streamtrain.format.dataset import open_dataset
from streamtrain.format.shard_reader import ShardFile
from streamtrain.train.audit import AUDIT_DIR, decode_ids
from tests.support.runs import digit_dataset, micro_recipe, random_whisper


def trained_ids(run: Path) -> dict[int, list[int]]:
    """Sample ids of every optimizer step in the run's audit log, by epoch."""
    ids: dict[int, list[int]] = {}
    for path in sorted((run / AUDIT_DIR).glob("*.zst")):
        reader = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True)
        for line in reader.read().decode().splitlines():
            record = json.loads(line)
            if record["event"] == "step":
                ids.setdefault(record["epoch"], []).extend(decode_ids(record["ids"]).tolist())
    return ids


@pytest.mark.slow
def test_distillation_never_reads_filtered_samples_resumes_exactly_and_audits_clean(tmp_path, capsys):
    data = digit_dataset(tmp_path / "train", 24, seed=3, shard_size=60_000)
    teacher = random_whisper(tmp_path / "teacher", decoder_layers=2, seed=5)  # says "zero" ten times: WER 1.3 to 3.3
    labels = tmp_path / "labels"
    assert main(["label", str(data), "--teacher", str(teacher), "--out", str(labels), "--max-wer", "2.2",
                 "--batch-size", "4", "--no-progress"]) == 0
    column = open_dataset(str(labels))
    verdicts = {key: json.loads(members["json"])["keep"] for shard in sorted(labels.glob("shard-*.tar"))
                for key, members in ShardFile.in_memory(shard.read_bytes(), str(shard))}
    keep = np.asarray(column.keep)
    assert [verdicts[key] for key in column.keys.range(0, 24)] == keep.astype(bool).tolist()
    assert 0 < keep.sum() < 24 and column.index.column["kept"] == keep.sum()
    filtered = set(np.flatnonzero(keep == 0).tolist())  # one dataset, weight 1: sample id = dataset position

    student = tmp_path / "student"
    assert main(["make-student", "--teacher", str(teacher), "--decoder-layers", "1", "--out", str(student)]) == 0
    run = tmp_path / "run"
    recipe = micro_recipe(run, data, None, train={"max_steps": 2, "checkpoint_every": 1},
                          model={"pretrained": str(student), "tokenizer": str(student)},
                          data={"max_seconds": None, "batch_size": 4},
                          distill={"labels": str(labels), "teacher": str(teacher)})
    assert main(["train", str(recipe)]) == 0
    assert main(["train", str(recipe), "train.max_steps=8"]) == 0  # resumed from step 2, inside epoch 0
    capsys.readouterr()
    steps = trained_ids(run)
    assert len(steps) >= 2 and all(not filtered & set(ids) for ids in steps.values())
    assert all(len(ids) == len(set(ids)) for ids in steps.values())  # the resume repeated nothing
    assert main(["audit", str(run)]) == 0
    report = capsys.readouterr().out
    assert "audit: OK" in report and "epoch 0 (complete)" in report
    assert f"{len(filtered)} filtered by label (keep=false)" in report and "0 filtered by duration" in report

    index = json.loads((labels / "index.json").read_text())
    del index["columns"]["keep"]  # the column as an older streamtrain wrote it: the audit cannot explain the plan
    (labels / "index.json").write_text(json.dumps(index))
    assert main(["audit", str(run)]) == 1
    assert f"problem: the label columns the plan left samples out by ({labels}) have no keep file now" in \
        capsys.readouterr().out
