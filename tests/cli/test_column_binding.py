"""Feature and label columns are tied to their dataset's content (its fingerprint), not to its path:
a dataset re-packed in place with other audio under the same keys is refused in one line."""

import pytest

from streamtrain.cli import main
from streamtrain.features import build_featurizer
from streamtrain.features.feature_cache import write_feature_column
from streamtrain.format.index import DatasetIndexError, load_index
from streamtrain.loader import StreamLoader
from tests.support.datasets import write_dataset
from tests.support.errors import the_error_line
from tests.support.runs import micro_recipe, random_whisper

SHARDS = [3, 3]


def repack_in_place(dataset):
    """Other audio under the same keys, shard names and counts: only the content changes."""
    before = load_index(dataset).fingerprint
    write_dataset(dataset, SHARDS, seed=99)
    assert load_index(dataset).fingerprint != before


def one_line(capsys) -> str:
    return the_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return random_whisper(tmp_path_factory.mktemp("teacher") / "model", decoder_layers=2)


def test_a_feature_cache_of_a_repacked_dataset_is_refused(tmp_path, capsys):
    dataset = tmp_path / "ds"
    write_dataset(dataset, SHARDS)
    cache = tmp_path / "features"
    write_feature_column(str(dataset), cache, build_featurizer("whisper_log_mel", n_mels=40, chunk_seconds=4),
                         "whisper_log_mel", batch_size=4, progress=False)
    StreamLoader(dataset, batch_size=2, num_workers=0, columns=[str(cache)])  # the same content: accepted
    repack_in_place(dataset)
    with pytest.raises(DatasetIndexError, match="another dataset"):
        StreamLoader(dataset, batch_size=2, num_workers=0, columns=[str(cache)])
    recipe = micro_recipe(tmp_path / "run", dataset, None, train={"max_steps": 1})
    assert main(["train", str(recipe), f"features.cache={cache}"]) == 2
    assert "fingerprint" in one_line(capsys)


def labelled_dataset(tmp_path, teacher) -> tuple:
    """(a small dataset, the label column the teacher wrote of it, the label command)."""
    dataset, labels = tmp_path / "ds", tmp_path / "labels"
    write_dataset(dataset, SHARDS)
    command = ["label", str(dataset), "--teacher", str(teacher), "--out", str(labels), "--no-progress"]
    assert main(command) == 0
    return dataset, labels, command


@pytest.mark.slow
def test_labels_of_a_repacked_dataset_are_refused(tmp_path, teacher, capsys):
    dataset, labels, _ = labelled_dataset(tmp_path, teacher)
    repack_in_place(dataset)
    capsys.readouterr()
    recipe = micro_recipe(tmp_path / "run", dataset, None, train={"max_steps": 1},
                          distill={"labels": str(labels), "teacher": str(teacher)})
    assert main(["train", str(recipe)]) == 2
    assert "another dataset" in one_line(capsys)


@pytest.mark.slow
def test_label_resumed_against_a_repacked_dataset_is_refused(tmp_path, teacher, capsys):
    dataset, labels, command = labelled_dataset(tmp_path, teacher)
    for finished in ("index.json", "index.keys.txt", "index.durations.f32", "shard-000001.tar"):
        (labels / finished).unlink()  # as if killed after its first shard
    capsys.readouterr()
    assert main(command + ["--max-wer", "0.5"]) == 2
    assert "an earlier run differs in its settings; use --overwrite" in one_line(capsys)
    repack_in_place(dataset)
    assert main(command) == 2
    error = one_line(capsys)
    assert "another dataset" in error and "--overwrite" in error
    assert main(command + ["--overwrite"]) == 0
    StreamLoader(dataset, batch_size=2, num_workers=0, columns=[str(labels)])
