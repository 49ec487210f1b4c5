"""KaldiFbank against torchaudio.compliance.kaldi.fbank, sample by sample."""

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from streamtrain.features import KaldiFbank
from streamtrain.loader.batch import pad_waveforms

#: Max abs difference allowed against torchaudio (log-mel, float32; measured <= 1e-6).
TOLERANCE = 1e-4

CONFIGS = [
    {},
    {"snip_edges": False},
    {"use_energy": True},
    {"use_energy": True, "raw_energy": False, "window_type": "hamming", "round_to_power_of_two": False},
    {"window_type": "blackman", "preemphasis": 0.0, "remove_dc_offset": False, "use_power": False},
    {"window_type": "hanning", "snip_edges": False, "low_freq": 0.0, "high_freq": -400.0, "num_mel_bins": 40},
    {"window_type": "rectangular", "frame_length_ms": 20.0, "frame_shift_ms": 12.5, "energy_floor": 0.0},
]


def _torchaudio_options(featurizer: KaldiFbank) -> dict:
    config = featurizer.config()
    return {
        "num_mel_bins": config["num_mel_bins"],
        "sample_frequency": float(config["sample_rate"]),
        "frame_length": config["frame_length_ms"],
        "frame_shift": config["frame_shift_ms"],
        "dither": config["dither"],
        "preemphasis_coefficient": config["preemphasis"],
        "window_type": config["window_type"],
        "remove_dc_offset": config["remove_dc_offset"],
        "round_to_power_of_two": config["round_to_power_of_two"],
        "low_freq": config["low_freq"],
        "high_freq": config["high_freq"],
        "energy_floor": config["energy_floor"],
        "raw_energy": config["raw_energy"],
        "use_energy": config["use_energy"],
        "use_power": config["use_power"],
        "snip_edges": config["snip_edges"],
    }


@pytest.fixture(scope="module")
def clips(speech):
    wave = speech[29.99]
    return [wave[:160000], wave[:16000 + 77], wave[:401], wave[:4000], wave[16000:52000]]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda params: ",".join(params) or "defaults")
def test_matches_torchaudio(clips, params):
    featurizer = KaldiFbank(**params)
    features, frame_lengths = featurizer(*pad_waveforms(clips, fill=0.7))
    assert features.shape == (len(clips), int(frame_lengths.max()), featurizer.dim)
    options = _torchaudio_options(featurizer)
    for row, clip in enumerate(clips):
        reference = kaldi.fbank(torch.from_numpy(clip)[None], **options)
        count = int(frame_lengths[row])
        assert count == reference.shape[0]
        assert (features[row, :count] - reference).abs().max().item() <= TOLERANCE
        assert (features[row, count:] == 0).all()


def test_shorter_than_a_frame_has_no_frames(clips):
    features, frame_lengths = KaldiFbank()(*pad_waveforms([clips[0][:399], clips[0][:300]]))
    assert features.shape == (2, 0, 80)
    assert frame_lengths.tolist() == [0, 0]


def test_autocast_bf16_keeps_float32(clips):
    featurizer = KaldiFbank()
    audio, lengths = pad_waveforms(clips)
    expected, _ = featurizer(audio, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, _ = featurizer(audio, lengths)
    assert features.dtype == torch.float32 and torch.equal(features, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("params", [{}, {"snip_edges": False}])
def test_cuda_matches_cpu(clips, params):
    audio, lengths = pad_waveforms(clips)
    featurizer = KaldiFbank(**params)
    expected, expected_lengths = featurizer(audio, lengths)
    features, frame_lengths = featurizer.to("cuda")(audio.cuda(), lengths.cuda())
    assert (features.cpu() - expected).abs().max().item() <= TOLERANCE
    assert torch.equal(frame_lengths.cpu(), expected_lengths)


def test_dither_changes_features(clips):
    audio, lengths = pad_waveforms(clips[:2])
    plain, frame_lengths = KaldiFbank()(audio, lengths)
    dithered, _ = KaldiFbank(dither=1.0 / 32768)(audio, lengths)
    assert not torch.equal(plain, dithered)
    assert (dithered[1, int(frame_lengths[1]) :] == 0).all()


@pytest.mark.parametrize(
    "params",
    [
        {"window_type": "kaiser"},
        {"num_mel_bins": 3},
        {"frame_length_ms": 0.05},
        {"low_freq": 9000.0},
        {"preemphasis": 1.5},
        {"dither": -1.0},
        {"energy_floor": -1.0},
        {"round_to_power_of_two": False, "frame_length_ms": 25.0625},
        {"cmvn": {"mean": [0.0] * 40, "std": [1.0] * 40}},
    ],
)
def test_rejects_bad_config(params):
    with pytest.raises(ValueError):
        KaldiFbank(**params)
