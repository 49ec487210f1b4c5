"""Index format 2: per-sample columns in binary files, format 1 still read, ``index upgrade``, bad columns."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtrain.loader import StreamLoader
from streamtrain.format.dataset import open_dataset
from streamtrain.format.index import DatasetIndexError, load_index
from streamtrain.format.upgrade import upgrade_index
from tests.support.cli import run_cli
from tests.support.datasets import write_dataset

SIZES = [6, 5, 7, 4]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("index") / "ds"
    write_dataset(root, SIZES, seed=4)
    return root


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


def as_format_1(root: Path) -> None:
    """Rewrite a format 2 dataset's index as format 1 (durations inline), as older versions wrote it."""
    index = json.loads((root / "index.json").read_text())
    durations = np.fromfile(root / "index.durations.f32", dtype="<f4").astype(np.float64)
    shards, offsets = index["shards"], np.cumsum([0, *index["shards"]["samples"]])
    index["shards"] = [
        {"name": shards["name"][i], "samples": shards["samples"][i], "seconds": shards["seconds"][i],
         "bytes": shards["bytes"][i], "sha256": shards["sha256"][i], "max_seconds": shards["max_seconds"][i],
         "durations": [round(d, 3) for d in durations[offsets[i] : offsets[i + 1]].tolist()]}
        for i in range(len(shards["name"]))
    ]
    index["format_version"] = 1
    del index["columns"]
    (root / "index.json").write_text(json.dumps(index))
    for name in ("index.durations.f32", "index.keys.txt"):
        (root / name).unlink()


def test_index_json_holds_shards_and_lists_the_column_files(dataset):
    data = json.loads((dataset / "index.json").read_text())
    assert data["format_version"] == 2
    assert set(data["shards"]) == {"name", "samples", "seconds", "bytes", "sha256", "max_seconds"}
    assert data["shards"]["samples"] == SIZES
    assert set(data["columns"]) == {"durations", "keys"}
    assert "durations" not in json.dumps(data["shards"])
    opened = open_dataset(str(dataset))
    assert isinstance(opened.durations, np.memmap) and len(opened.durations) == sum(SIZES)
    assert opened.keys.range(0, 3) == ["utt-000-0000", "utt-000-0001", "utt-000-0002"]
    assert opened.describe(2, 3) == f"{dataset}/shard-000002.tar#3 (utt-002-0003)"


@pytest.mark.parametrize("damage", ["missing", "truncated", "replaced"])
def test_a_damaged_column_file_is_an_error_naming_it(copy, damage):
    path = copy / "index.durations.f32"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-4])
    else:
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
    message = {"missing": "cannot read column file", "truncated": "truncated", "replaced": "sha256"}[damage]
    with pytest.raises(DatasetIndexError, match=rf"index\.durations\.f32.*{message}"):
        len(StreamLoader(copy, batch_size=2, num_workers=0))


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_durations_are_rejected_when_opened(copy, value):
    durations = np.fromfile(copy / "index.durations.f32", dtype="<f4")
    durations[3] = value
    from streamtrain.format.columns import save_index

    index = load_index(copy)
    with pytest.raises(DatasetIndexError, match="negative, NaN or infinite"):
        save_index(copy, index, durations, open_dataset(str(copy)).keys.range(0, sum(SIZES)))
    # written by something else: refused when opened
    durations.tofile(copy / "index.durations.f32")
    import hashlib

    data = json.loads((copy / "index.json").read_text())
    data["columns"]["durations"]["sha256"] = hashlib.sha256((copy / "index.durations.f32").read_bytes()).hexdigest()
    (copy / "index.json").write_text(json.dumps(data))
    with pytest.raises(DatasetIndexError, match=r"index\.durations\.f32: 1 sample duration.*sample 3"):
        open_dataset(str(copy)).durations


def test_format_1_opens_with_a_warning_and_plans_the_same_batches(copy, dataset, caplog):
    as_format_1(copy)
    with caplog.at_level(logging.WARNING):
        old = StreamLoader(copy, batch_seconds=3.0, num_workers=0, epochs=1, seed=2)
    assert "streamtrain index upgrade" in caplog.text
    new = StreamLoader(dataset, batch_seconds=3.0, num_workers=0, epochs=1, seed=2)
    assert [b.keys for b in old] == [b.keys for b in new]


def test_upgrade_converts_in_place_and_keeps_the_fingerprint_and_loader_states(copy, dataset):
    as_format_1(copy)
    before = load_index(copy)
    loader = StreamLoader(copy, batch_size=3, num_workers=0, epochs=1, seed=1)
    seen = [k for _, b in zip(range(3), loader) for k in b.keys]
    state = loader.state_dict()
    assert "upgraded to format 2" in run_cli("index", "upgrade", str(copy)).out
    after = load_index(copy)
    assert after.format_version == 2 and after.fingerprint == before.fingerprint
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in dataset.iterdir())
    resumed = StreamLoader(copy, batch_size=3, num_workers=0, epochs=1, seed=1)
    resumed.load_state_dict(state)
    rest = [k for b in resumed for k in b.keys]
    assert sorted(seen + rest) == sorted(f"utt-{s:03d}-{i:04d}" for s, n in enumerate(SIZES) for i in range(n))
    assert upgrade_index(copy)[1] is False  # already format 2: nothing to do


@pytest.mark.parametrize("limit", [40, 1200])
def test_an_upgrade_that_fails_midway_leaves_a_dataset_that_opens(copy, limit):
    """A real fault: the upgrade runs with a file-size limit (RLIMIT_FSIZE), so writing the
    keys column (40 bytes) or the new index.json (1200) fails; the old index must still open."""
    as_format_1(copy)
    script = (f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}));"
              f"from streamtrain.format.upgrade import upgrade_index; upgrade_index({str(copy)!r})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert load_index(copy).format_version == 1
    assert len(StreamLoader(copy, batch_size=2, num_workers=0)) == 11
    assert not [p.name for p in copy.iterdir() if ".tmp-" in p.name]
    upgrade_index(copy)
    assert load_index(copy).format_version == 2


def test_upgrade_does_not_warn_to_run_itself(copy, caplog, capsys):
    from streamtrain.cli import main

    as_format_1(copy)
    with caplog.at_level(logging.WARNING):
        assert main(["index", "upgrade", str(copy)]) == 0
    assert "index upgrade" not in caplog.text + capsys.readouterr().err


def test_upgrade_of_a_url_is_refused_in_one_line(capsys):
    from streamtrain.cli import main
    from tests.support.errors import the_error_line

    assert main(["index", "upgrade", "s3://bucket/ds"]) == 2
    error = the_error_line(capsys.readouterr().err)
    assert "s3://bucket/ds" in error and "local" in error
