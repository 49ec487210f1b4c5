"""The sidecar-column format: member decoding, aligned shard writing, and opening a column against its base."""

from __future__ import annotations

import json

import pytest
import torch

from streamtrain.format.columns import publish_index
from streamtrain.format.dataset import open_dataset
from streamtrain.format.feature_codec import encode_features
from streamtrain.format.index import DatasetIndex, ShardList
from streamtrain.format.shard_reader import ShardFile
from streamtrain.format.sidecar import (FEATURES_EXT, ColumnError, base_identity, decode_members, open_sidecar,
                                        write_aligned_shard)
from streamtrain.format.tar_layout import ShardError
from streamtrain.storage.output import Output
from tests.support.datasets import write_dataset


def test_members_decode_by_extension_and_a_bad_one_names_its_key():
    features = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    decoded = decode_members("k1", {"json": b'{"frames": 2}', FEATURES_EXT: encode_features(features),
                                    "txt": b"raw"}, "col/shard.tar")
    assert decoded["json"] == {"frames": 2} and decoded["txt"] == b"raw"
    assert decoded[FEATURES_EXT].dtype == torch.float16 and torch.equal(decoded[FEATURES_EXT].float(), features)
    with pytest.raises(ColumnError, match=r"col/shard\.tar: sample 'k2': column member \.feat\.zst: .*magic"):
        decode_members("k2", {FEATURES_EXT: b"junk"}, "col/shard.tar")


def write_sidecar(base, out_dir, count_of=lambda n: n):
    """A column of ``base``: one json member per sample, ``count_of(n)`` samples per shard of n."""
    infos, keys = [], []
    with Output(out_dir) as out:
        out.create()
        offsets = base.index.shards.offsets
        for shard, info in enumerate(base.index.shards):
            shard_keys = base.keys.range(int(offsets[shard]), int(offsets[shard + 1]))
            members = ((key, {"json": json.dumps({"n": i}).encode()}) for i, key in enumerate(shard_keys))
            written, shard_keys = write_aligned_shard(info, out, list(members)[: count_of(len(shard_keys))])
            infos.append(written)
            keys += shard_keys
        index = DatasetIndex(codec="column", sample_rate=None, shards=ShardList.of(infos),
                             column={"name": "test", "kind": "test", **base_identity(base)})
        publish_index(out, index, base.durations, keys)


def test_an_aligned_shard_holds_the_members_in_the_base_order_and_the_column_opens(tmp_path):
    write_dataset(tmp_path / "base", [3, 2])
    base = open_dataset(str(tmp_path / "base"))
    write_sidecar(base, tmp_path / "column")
    column = open_sidecar(str(tmp_path / "column"), base)
    assert column.index.shards.names == base.index.shards.names
    first = ShardFile.in_memory((tmp_path / "column" / base.index.shards.names[0]).read_bytes(), "column")
    assert [(key, json.loads(members["json"])["n"]) for key, members in first] == [
        ("utt-000-0000", 0), ("utt-000-0001", 1), ("utt-000-0002", 2)]


def test_a_short_column_shard_is_an_error_and_leaves_no_file(tmp_path):
    write_dataset(tmp_path / "base", [3])
    base = open_dataset(str(tmp_path / "base"))
    with pytest.raises(ShardError, match=r"shard-000000\.tar: 2 samples written, the base shard has 3"):
        write_sidecar(base, tmp_path / "column", count_of=lambda n: n - 1)
    assert not list((tmp_path / "column").glob("*.tar*"))


def test_a_column_of_another_dataset_is_refused(tmp_path):
    write_dataset(tmp_path / "base", [3, 2])
    write_dataset(tmp_path / "other", [3, 3])
    write_sidecar(open_dataset(str(tmp_path / "other")), tmp_path / "column")
    with pytest.raises(ValueError, match="do not align"):
        open_sidecar(str(tmp_path / "column"), open_dataset(str(tmp_path / "base")))
    with pytest.raises(ValueError, match="not a sidecar column"):
        open_sidecar(str(tmp_path / "other"), open_dataset(str(tmp_path / "base")))
