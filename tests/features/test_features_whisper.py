"""WhisperLogMel against transformers' WhisperFeatureExtractor, and its padding shortcut."""

import numpy as np
import pytest
import torch

from streamtrain.features import WhisperLogMel
from streamtrain.loader.batch import pad_waveforms

#: Max abs difference allowed against transformers (float32; measured 1.2e-7).
TOLERANCE = 1e-4
#: Max abs difference allowed between two frame spans of the same audio: the mel
#: matmul may take another BLAS kernel for another frame count (MKL on an AMD EPYC
#: does under 12 frames: 1.2e-7, one float32 ulp at these magnitudes).
ROUNDING = 1e-6
#: A batch mixing every duration, twice over in another order, with garbage in the padding.
ORDER = (45.0, 1.0, 30.0, 29.99, 1.0, 45.0)


@pytest.fixture(scope="module")
def mixed(speech):
    clips = [speech[seconds] for seconds in ORDER]
    return clips, pad_waveforms(clips, fill=0.5)


@pytest.fixture(scope="module", params=[80, 128])
def compared(request, mixed):
    from transformers import WhisperFeatureExtractor

    clips, (audio, lengths) = mixed
    extractor = WhisperFeatureExtractor(feature_size=request.param)
    reference = extractor(clips, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    featurizer = WhisperLogMel(n_mels=request.param)
    features, frame_lengths = featurizer(audio, lengths)
    return extractor, featurizer, reference, features, frame_lengths


def test_matches_transformers(compared):
    _, featurizer, reference, features, frame_lengths = compared
    assert features.shape == (len(ORDER), featurizer.n_mels, 3000)
    assert features.dtype == torch.float32
    assert np.abs(features.numpy() - reference["input_features"]).max() <= TOLERANCE
    assert frame_lengths.tolist() == reference["attention_mask"].sum(1).tolist()


def test_matches_transformers_numpy_path(mixed, compared):
    extractor, _, _, features, _ = compared
    clips, _ = mixed
    padded = np.stack([np.pad(clip[:480000], (0, max(0, 480000 - len(clip)))) for clip in clips])
    reference = extractor._np_extract_fbank_features(padded, "cpu")
    assert np.abs(features.numpy() - reference).max() <= TOLERANCE


def test_sample_independent_of_batch(speech, compared):
    _, featurizer, _, features, _ = compared
    for row, seconds in enumerate(ORDER):
        wave = torch.from_numpy(speech[seconds])
        alone, _ = featurizer(wave[None], torch.tensor([len(wave)]))
        assert (alone[0] - features[row]).abs().max() <= ROUNDING, seconds
        wider = torch.cat([wave, torch.full((1000,), -0.3)])[None]
        padded_alone, _ = featurizer(wider, torch.tensor([len(wave)]))
        assert torch.equal(padded_alone[0], alone[0]), seconds  # same span: garbage past the length is ignored


@pytest.mark.parametrize(
    "lengths",
    [
        [16000],
        [16000, 160000, 320037],
        [7, 0, 1],
        # around the last frames that may still touch audio (chunk 480000, hop 160, n_fft 400)
        [479000, 479439],
        [479640, 479641],
        [479799, 479800, 479801],
        [479959, 479960],
    ],
)
def test_shortcut_equals_full_computation(speech, lengths):
    featurizer = WhisperLogMel()
    wave = speech[45.0]
    audio, lengths = pad_waveforms([wave[:n] for n in lengths], fill=0.25)
    fast, fast_lengths = featurizer(audio, lengths)
    full, full_lengths = featurizer(audio, lengths, skip_padding=False)
    assert (fast - full).abs().max() <= ROUNDING
    assert torch.equal(fast_lengths, full_lengths)


def test_shortcut_skips_padding_frames():
    featurizer = WhisperLogMel()
    assert featurizer._span(16000) == (102, 16360)  # 1 s: frames 0..101 touch audio
    assert featurizer._span(479640) == (2999, 479880)  # frame 2999 starts at 479640: all zeros
    assert featurizer._span(479641)[0] == 3000  # the last frame touches audio: no shortcut
    assert featurizer._span(0) == (2, 360)


def test_autocast_bf16_keeps_float32(mixed):
    """The featurizer turns autocast off inside: under bf16 autocast the features are identical.

    Documented bound: 0. (Audio held in bf16 is another matter: rounding the
    waveform itself to bf16 moves features by up to ~0.32 in quiet frames.)
    """
    _, (audio, lengths) = mixed
    featurizer = WhisperLogMel()
    expected, _ = featurizer(audio, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, _ = featurizer(audio, lengths)
    assert features.dtype == torch.float32
    assert (features - expected).abs().max().item() == 0.0


def test_do_normalize_matches_transformers(speech):
    from transformers import WhisperFeatureExtractor

    clips = [speech[1.0], speech[45.0]]
    reference = WhisperFeatureExtractor()(clips, sampling_rate=16000, do_normalize=True, return_tensors="np")
    features, _ = WhisperLogMel(do_normalize=True)(*pad_waveforms(clips))
    assert np.abs(features.numpy() - reference["input_features"]).max() <= TOLERANCE


def test_filters_and_window_are_buffers():
    featurizer = WhisperLogMel(n_mels=128)
    assert {name for name, _ in featurizer.named_buffers()} == {"mel_filters", "window"}
    assert featurizer.mel_filters.shape == (128, 201)
    assert featurizer.state_dict() == {}  # derived from the config, never checkpointed
    moved = featurizer.to(torch.float64)
    assert moved.mel_filters.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(mixed):
    _, (audio, lengths) = mixed
    featurizer = WhisperLogMel()
    expected, expected_lengths = featurizer(audio, lengths)
    features, frame_lengths = featurizer.to("cuda")(audio.cuda(), lengths.cuda())
    assert features.device.type == "cuda" and frame_lengths.device.type == "cuda"
    assert (features.cpu() - expected).abs().max().item() <= TOLERANCE
    assert torch.equal(frame_lengths.cpu(), expected_lengths)


@pytest.mark.parametrize(
    "audio, lengths, error",
    [
        (torch.zeros(16000), torch.tensor([16000]), ValueError),
        (torch.zeros(2, 100), torch.tensor([100]), ValueError),
        (torch.zeros(1, 100), torch.tensor([101]), ValueError),
        (torch.zeros(1, 100), torch.tensor([-1]), ValueError),
        (torch.zeros(1, 100), torch.tensor([100.0]), TypeError),
        (torch.zeros(1, 100, dtype=torch.int16), torch.tensor([100]), TypeError),
        (torch.zeros(0, 100), torch.zeros(0, dtype=torch.long), ValueError),
    ],
)
def test_rejects_bad_input(audio, lengths, error):
    with pytest.raises(error):
        WhisperLogMel()(audio, lengths)


@pytest.mark.parametrize("params", [{"n_mels": 0}, {"hop_length": 1.5}, {"n_fft": 960000}])
def test_rejects_bad_config(params):
    with pytest.raises(ValueError):
        WhisperLogMel(**params)
