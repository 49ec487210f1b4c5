"""A pseudo-label column's keep file: keep=false samples are left out of the plan, never read, and counted;
resumes stay exact, also when the labels change."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from streamtrain.cli import main
from streamtrain.format.columns import publish_index
from streamtrain.format.dataset import open_dataset
from streamtrain.format.index import DatasetIndex, ShardList
from streamtrain.format.sidecar import LABELS_COLUMN, base_identity, write_aligned_shard
from streamtrain.loader import StreamLoader
from streamtrain.loader.plan import BatchSettings, ShardTable, plan_epoch
from streamtrain.storage.output import Output
from tests.support.datasets import write_dataset

SIZES = [5, 4, 6, 3, 4]


def write_labels(base_dir, out_dir, keep: list[bool], keep_file: bool = True) -> None:
    """A label column of ``base_dir`` as ``streamtrain label`` lays it out, with these verdicts."""
    base = open_dataset(str(base_dir))
    keys = base.keys.range(0, base.index.samples)
    verdicts = iter(keep)
    infos = []
    with Output(out_dir) as out:
        out.create()
        offsets = base.index.shards.offsets
        for shard, info in enumerate(base.index.shards):
            members = [(key, {"json": json.dumps({"text": key, "keep": next(verdicts)}).encode()})
                       for key in keys[offsets[shard] : offsets[shard + 1]]]
            infos.append(write_aligned_shard(info, out, members)[0])
        index = DatasetIndex(codec="column", sample_rate=None, shards=ShardList.of(infos),
                             column={"name": LABELS_COLUMN, "kind": "pseudo_labels", **base_identity(base),
                                     "kept": sum(keep)})
        publish_index(out, index, base.durations, keys, keep=np.array(keep) if keep_file else None)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(dataset, labels keeping 2 of every 3, labels keeping another set, keys, the two verdict lists)."""
    root = tmp_path_factory.mktemp("keep")
    write_dataset(root / "data", SIZES, seed=3)
    total = sum(SIZES)
    first = [n % 3 != 1 for n in range(total)]
    second = [n % 4 != 0 for n in range(total)]
    write_labels(root / "data", root / "labels", first)
    write_labels(root / "data", root / "relabelled", second)
    keys = open_dataset(str(root / "data")).keys.range(0, total)
    return root / "data", root / "labels", root / "relabelled", keys, first, second


def kept_keys(keys, keep):
    return {key for key, kept in zip(keys, keep) if kept}


def test_the_plan_counts_samples_left_out_by_label_once_and_not_again_by_duration():
    table = ShardTable(np.array([4, 4]), np.array([1, 9, 1, 1, 9, 1, 1, 1], dtype=np.float32))
    left_out = np.array([1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    delivered = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    plan = plan_epoch(table, BatchSettings(batch_size=2, max_seconds=5), delivered, 0, 0, left_out=left_out)
    planned = set(plan.batches.gids().tolist())
    assert planned == {2, 3, 5} and plan.filtered_by_label == 2 and plan.filtered == 1  # 1: too long and keep=false


@pytest.mark.parametrize("num_workers", [0, 2])
def test_keep_false_samples_are_never_read_and_are_counted_in_the_plan(labelled, num_workers):
    data, labels, _, keys, keep, _ = labelled
    loader = StreamLoader(data, batch_size=3, epochs=1, num_workers=num_workers, columns=[str(labels)])
    batches = list(loader)
    delivered = [key for batch in batches for key in batch.keys]
    assert sorted(delivered) == sorted(kept_keys(keys, keep))  # each kept key once, no keep=false key read
    assert all(label["json"]["keep"] for batch in batches for label in batch.columns[LABELS_COLUMN])
    (plan,) = [e for e in loader.pop_events() if e["event"] == "epoch"]
    assert plan["filtered_by_label"] == keep.count(False) > 0 and plan["filtered"] == 0
    assert plan["left_out_by"] == [{"url": str(labels), "fingerprint": open_dataset(str(labels)).index.fingerprint}]
    assert loader.state_dict()["counters"]["delivered"] == len(delivered)


def test_a_dataset_read_twice_an_epoch_leaves_its_keep_false_samples_out_of_both_passes(labelled):
    data, labels, _, keys, keep, _ = labelled
    loader = StreamLoader({str(data): 2.0}, batch_size=4, epochs=1, num_workers=0, columns=[str(labels)])
    delivered = [key for batch in loader for key in batch.keys]
    assert sorted(delivered) == sorted(2 * list(kept_keys(keys, keep)))
    (plan,) = [e for e in loader.pop_events() if e["event"] == "epoch"]
    assert plan["filtered_by_label"] == 2 * keep.count(False)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_resume_with_other_settings_is_exact_and_other_labels_replan_the_rest(labelled, stop_after):
    data, labels, relabelled, keys, keep, other_keep = labelled
    loader = StreamLoader(data, batch_size=3, epochs=1, num_workers=1, columns=[str(labels)])
    first = []
    for batch in loader:
        first += batch.keys
        if len(first) >= 3 * stop_after:
            break
    state = json.loads(json.dumps(loader.state_dict()))

    same = StreamLoader(data, batch_size=2, epochs=1, num_workers=0, columns=[str(labels)])
    same.load_state_dict(state)
    rest = [key for batch in same for key in batch.keys]
    assert sorted(first + rest) == sorted(kept_keys(keys, keep))

    other = StreamLoader(data, batch_size=3, epochs=1, num_workers=1, columns=[str(relabelled)])  # same settings
    other.load_state_dict(state)
    rest = [key for batch in other for key in batch.keys]
    assert not set(rest) & set(first) and len(rest) == len(set(rest))
    assert set(rest) == kept_keys(keys, other_keep) - set(first)  # what the new labels keep, once


def test_a_label_column_without_a_keep_file_warns_once_and_reads_every_sample(labelled, tmp_path, caplog):
    data, _, _, keys, keep, _ = labelled
    write_labels(data, tmp_path / "old", keep, keep_file=False)
    with caplog.at_level(logging.WARNING, logger="streamtrain.format"):
        loader = StreamLoader(data, batch_size=4, epochs=1, num_workers=0, columns=[str(tmp_path / "old")])
    (warning,) = [r.getMessage() for r in caplog.records if "keep file" in r.getMessage()]
    assert f"{keep.count(False)} of its {len(keys)} labels are keep=false" in warning
    assert "run `streamtrain label` again" in warning
    assert sorted(key for batch in loader for key in batch.keys) == sorted(keys)
    (plan,) = [e for e in loader.pop_events() if e["event"] == "epoch"]
    assert plan["filtered_by_label"] == 0 and plan["left_out_by"] == []


def test_inspect_verify_names_a_damaged_keep_file(labelled, tmp_path, capsys):
    _, labels, _, _, _, _ = labelled
    damaged = tmp_path / "labels"
    shutil.copytree(labels, damaged)
    keep = damaged / "index.keep.u1"
    keep.write_bytes(bytes([1 - keep.read_bytes()[0]]) + keep.read_bytes()[1:])  # one verdict flipped
    assert main(["inspect", str(labels), "--verify"]) == 0
    assert main(["inspect", str(damaged), "--verify"]) != 0
    assert f"{keep}: column file's sha256 does not match the index" in capsys.readouterr().out
