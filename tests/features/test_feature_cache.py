"""The feature cache: a fingerprinted sidecar column, joined by the loader, refused when stale."""

import pytest
import torch

from streamtrain.loader import StreamLoader
from streamtrain.features import build_featurizer
from streamtrain.features.feature_cache import FeatureCacheError, check_feature_column, write_feature_column
from streamtrain.format.sidecar import FEATURES_COLUMN
from tests.support.cli import run_cli
from tests.support.runs import digit_dataset, micro_recipe

PARAMS = {"n_mels": 40, "chunk_seconds": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return digit_dataset(tmp_path_factory.mktemp("cache") / "train", 20, seed=7, shard_size=60_000)


@pytest.fixture(scope="module")
def column(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "features"
    write_feature_column(str(dataset), out, build_featurizer("whisper_log_mel", **PARAMS), "whisper_log_mel",
                         batch_size=4, progress=False)
    return out


def test_cached_features_equal_on_the_fly_features_within_float16(dataset, column):
    featurizer = build_featurizer("whisper_log_mel", **PARAMS)
    loader = StreamLoader(dataset, batch_size=5, num_workers=1, epochs=1, columns=[str(column)])
    seen = 0
    for batch in loader:
        expected, frames = featurizer(batch.audio, batch.audio_lens)
        for row, cached in enumerate(batch.columns[FEATURES_COLUMN]):
            assert cached["feat.zst"].dtype == torch.float16
            torch.testing.assert_close(cached["feat.zst"].float(), expected[row], atol=2e-3, rtol=1e-3)
            assert cached["json"]["frames"] == int(frames[row])
            seen += 1
    assert seen == 20


def test_a_column_from_another_featurizer_is_refused(dataset, column):
    loader = StreamLoader(dataset, batch_size=5, num_workers=0, columns=[str(column)])
    check_feature_column(loader.columns[0], build_featurizer("whisper_log_mel", **PARAMS))
    with pytest.raises(FeatureCacheError, match="stale feature cache"):
        check_feature_column(loader.columns[0], build_featurizer("whisper_log_mel", n_mels=80, chunk_seconds=4))


def test_a_column_of_another_dataset_is_refused(column, tmp_path):
    other = digit_dataset(tmp_path / "other", 6, seed=8)
    with pytest.raises(ValueError, match="do not align"):
        StreamLoader(other, batch_size=2, columns=[str(column)])


@pytest.mark.slow
def test_training_uses_the_cache_and_refuses_a_stale_one(dataset, column, tmp_path):
    recipe = micro_recipe(tmp_path / "run", dataset, None, train={"max_steps": 3})
    run_cli("train", str(recipe), f"features.cache={column}")
    stale = run_cli("train", str(recipe), f"features.cache={column}", "features.params.n_mels=80", "--no-resume",
                    check=False)
    assert stale.code == 2 and "stale feature cache" in stale.err


def test_featurize_and_stats_commands(dataset, tmp_path):
    import json

    out = tmp_path / "fbank-column"
    result = run_cli("featurize", str(dataset), "--out", str(out), "--featurizer", "kaldi_fbank", "--param",
                     "num_mel_bins=40", "--no-progress")
    assert "20 samples" in result.out and "fingerprint" in result.out
    again = run_cli("featurize", str(dataset), "--out", str(out), check=False)
    assert again.code == 2 and "not empty" in again.err
    stats_file = tmp_path / "cmvn.json"
    run_cli("stats", str(dataset), "--out", str(stats_file), "--param", "num_mel_bins=40", "--num-workers", "0")
    stats = json.loads(stats_file.read_text())
    assert len(stats["mean"]) == 40 and stats["count"] > 1000
    cmvn = build_featurizer("kaldi_fbank", num_mel_bins=40, cmvn=str(stats_file))
    assert cmvn.config()["cmvn"] is not None
