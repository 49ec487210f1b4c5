"""Featurizers by name, their configs and fingerprints."""

import inspect
import json

import pytest
import torch

from streamtrain.features import FEATURIZERS, build_featurizer, featurizer_fingerprint

#: A valid value other than the default for every constructor parameter.
OTHER_VALUES = {
    "whisper_log_mel": {
        "n_mels": 128,
        "sample_rate": 24000,
        "n_fft": 512,
        "hop_length": 320,
        "chunk_seconds": 20,
        "do_normalize": True,
    },
    "kaldi_fbank": {
        "num_mel_bins": 40,
        "sample_rate": 8000,
        "frame_length_ms": 20.0,
        "frame_shift_ms": 12.5,
        "dither": 0.1,
        "preemphasis": 0.9,
        "window_type": "hamming",
        "remove_dc_offset": False,
        "round_to_power_of_two": False,
        "low_freq": 40.0,
        "high_freq": -400.0,
        "energy_floor": 0.0,
        "raw_energy": False,
        "use_energy": True,
        "use_power": False,
        "snip_edges": False,
        "cmvn": {"mean": [0.5] * 80, "std": [2.0] * 80},
    },
}


@pytest.mark.parametrize("name", sorted(FEATURIZERS))
def test_config_lists_every_parameter_and_round_trips(name):
    featurizer = build_featurizer(name)
    config = featurizer.config()
    assert list(config) == list(inspect.signature(FEATURIZERS[name]).parameters)
    assert set(config) == set(OTHER_VALUES[name])
    rebuilt = build_featurizer(name, **json.loads(json.dumps(config)))
    assert rebuilt.config() == config
    assert featurizer_fingerprint(rebuilt) == featurizer_fingerprint(featurizer)
    audio = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([8000, 5000])
    assert torch.equal(featurizer(audio, lengths)[0], rebuilt(audio, lengths)[0])


@pytest.mark.parametrize("name", sorted(FEATURIZERS))
def test_fingerprint_changes_with_every_parameter(name):
    base = featurizer_fingerprint(build_featurizer(name))
    seen = {base}
    for key, value in OTHER_VALUES[name].items():
        changed = build_featurizer(name, **{key: value})
        assert changed.config()[key] == value
        fingerprint = featurizer_fingerprint(changed)
        assert fingerprint not in seen, key
        seen.add(fingerprint)
    assert len(base) == 64


def test_fingerprint_ignores_spelling_of_equal_values():
    assert featurizer_fingerprint(build_featurizer("kaldi_fbank", frame_length_ms=25)) == featurizer_fingerprint(
        build_featurizer("kaldi_fbank", frame_length_ms=25.0)
    )


def test_fingerprint_follows_cmvn_numbers_not_file(tmp_path):
    stats = {"mean": [0.5] * 80, "std": [2.0] * 80}
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    from_file = featurizer_fingerprint(build_featurizer("kaldi_fbank", cmvn=str(path)))
    assert from_file == featurizer_fingerprint(build_featurizer("kaldi_fbank", cmvn=stats))
    stats["std"][3] = 2.5
    assert from_file != featurizer_fingerprint(build_featurizer("kaldi_fbank", cmvn=stats))


def test_build_featurizer_errors():
    with pytest.raises(ValueError, match="unknown featurizer 'mfcc'"):
        build_featurizer("mfcc")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['n_mel'\]"):
        build_featurizer("whisper_log_mel", n_mel=80)
    with pytest.raises(ValueError, match="num_mel_bins"):
        build_featurizer("kaldi_fbank", num_mel_bins=2)
