"""streamtrain.audio: resampling against torchaudio's Resample."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchaudio.transforms import Resample

from streamtrain.audio import _PRODUCT_SIZE, _polyphase, resample
from streamtrain.testing.corpus import speech, utterances

#: Rate pairs: down, up, integer and awkward ratios, and a gcd of 5 (a 3200-phase kernel).
RATES = [(22050, 16000), (44100, 16000), (48000, 16000), (96000, 16000), (8000, 16000), (16000, 8000),
         (11025, 16000), (16000, 48000), (44100, 48000), (12345, 16000)]


def torchaudio_resample(waveform: np.ndarray, orig: int, new: int) -> np.ndarray:
    """What streamtrain resampled with before: torchaudio's transform, kaiser_best settings."""
    transform = Resample(orig, new, resampling_method="sinc_interp_kaiser", lowpass_filter_width=64,
                         rolloff=0.9475937167399596, beta=14.769656459379492)
    with torch.no_grad():
        return transform(torch.from_numpy(waveform)[None])[0].numpy()


@pytest.mark.parametrize("orig, new", RATES)
def test_resample_matches_torchaudio(orig: int, new: int):
    rng = np.random.default_rng(orig + new)
    clips = [speech(utterances(1, seed=orig)[0]), rng.uniform(-0.5, 0.5, 4001).astype(np.float32),
             rng.uniform(-0.5, 0.5, 7).astype(np.float32), np.ones(1, dtype=np.float32)]
    for clip in clips:
        expected = torchaudio_resample(clip, orig, new)
        got = resample(clip, orig, new)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("orig, new", RATES)
def test_matrix_products_stay_on_the_calling_thread(orig: int, new: int):
    """OpenBLAS starts threads for products above 2**18 multiply-adds; a pack or
    loader worker beside others must not."""
    plan = _polyphase(orig, new)
    for group in plan.groups:
        assert plan.rows * (group.stop - group.start) * (group.last - group.first) <= _PRODUCT_SIZE
    assert plan.block_in >= max(group.stop - group.start for group in plan.groups)  # rows read in place


def test_resample_keeps_equal_rates_and_takes_empty_input():
    waveform = np.arange(5, dtype=np.float32)
    assert resample(waveform, 16000, 16000) is waveform
    assert resample(np.zeros(0, dtype=np.float32), 22050, 16000).shape == (0,)


def test_resampling_does_not_import_torch():
    code = ("import sys, numpy as np; from streamtrain.audio import resample; "
            "resample(np.ones(1000, dtype=np.float32), 44100, 16000); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
