"""CMVN statistics and GlobalCMVN."""

import json

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from streamtrain.features import GlobalCMVN, KaldiFbank, WhisperLogMel, compute_cmvn_stats
from streamtrain.loader.batch import pad_waveforms


@pytest.fixture(scope="module")
def clips(speech):
    wave = speech[45.0]
    return [wave[:48000], wave[48000:80000], wave[80000:80350], wave[100000:200000]]


@pytest.fixture(scope="module")
def stats(clips):
    featurizer = KaldiFbank()
    batches = [pad_waveforms(clips[:2]), pad_waveforms(clips[2:])]
    return compute_cmvn_stats(batches, featurizer)


def test_stats_match_torchaudio_frames(clips, stats):
    frames = torch.cat([kaldi.fbank(torch.from_numpy(clip)[None], num_mel_bins=80) for clip in clips[:2] + clips[3:]])
    frames = frames.double()
    assert stats["count"] == frames.shape[0]
    np.testing.assert_allclose(stats["sum"], frames.sum(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats["sum_sq"], frames.square().sum(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats["mean"], frames.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], frames.std(0, correction=0).numpy(), rtol=1e-4)
    assert json.loads(json.dumps(stats)) == stats


def test_waveforms_and_batches_give_the_same_stats(clips, stats):
    alone = compute_cmvn_stats(iter(clips), KaldiFbank())
    assert alone["count"] == stats["count"]
    np.testing.assert_allclose(alone["sum"], stats["sum"], rtol=1e-6)
    np.testing.assert_allclose(alone["std"], stats["std"], rtol=1e-6)


def test_stats_of_whisper_features_count_real_frames(clips):
    featurizer = WhisperLogMel()
    stats = compute_cmvn_stats([pad_waveforms(clips[:2])], featurizer)
    features, frame_lengths = featurizer(*pad_waveforms(clips[:2]))
    real = torch.cat([features[row, :, :count].T for row, count in enumerate(frame_lengths.tolist())]).double()
    assert stats["count"] == real.shape[0] == 300 + 200
    np.testing.assert_allclose(stats["mean"], real.mean(0).numpy(), rtol=1e-6, atol=1e-6)


def test_fbank_with_cmvn_file(tmp_path, clips, stats):
    path = tmp_path / "cmvn.json"
    path.write_text(json.dumps(stats))
    audio, lengths = pad_waveforms(clips)
    raw, frame_lengths = KaldiFbank()(audio, lengths)
    normalized, same_lengths = KaldiFbank(cmvn=path)(audio, lengths)
    mean, std = torch.tensor(stats["mean"]).float(), torch.tensor(stats["std"]).float()
    assert torch.equal(frame_lengths, same_lengths)
    for row, count in enumerate(frame_lengths.tolist()):
        torch.testing.assert_close(normalized[row, :count], (raw[row, :count] - mean) / std)
        assert (normalized[row, count:] == 0).all()
    # normalized with its own statistics: zero mean, unit std over the real frames
    real = torch.cat([normalized[row, :count] for row, count in enumerate(frame_lengths.tolist())])
    assert real.mean(0).abs().max() < 1e-3 and (real.std(0, correction=0) - 1).abs().max() < 1e-3


def test_global_cmvn_round_trips_its_stats(stats):
    module = GlobalCMVN.from_stats(stats)
    again = GlobalCMVN.from_stats(json.loads(json.dumps(module.stats())))
    assert torch.equal(module.mean, again.mean) and torch.equal(module.std, again.std)
    assert module.state_dict() == {}


def test_errors(tmp_path, clips):
    with pytest.raises(ValueError, match="already applies CMVN"):
        compute_cmvn_stats(clips, KaldiFbank(cmvn={"mean": [0.0] * 80, "std": [1.0] * 80}))
    with pytest.raises(ValueError, match="no frames"):
        compute_cmvn_stats([clips[2][:100]], KaldiFbank())
    with pytest.raises(TypeError):
        compute_cmvn_stats([42], KaldiFbank())
    with pytest.raises(ValueError, match="lack"):
        GlobalCMVN.from_stats({"mean": [0.0]})
    with pytest.raises(ValueError, match="positive"):
        GlobalCMVN.from_stats({"mean": [0.0], "std": [0.0]})
    with pytest.raises(ValueError, match="cannot read"):
        GlobalCMVN.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="B x F x 80"):
        GlobalCMVN.from_stats({"mean": [0.0] * 80, "std": [1.0] * 80})(torch.zeros(1, 5, 40), torch.tensor([5]))
