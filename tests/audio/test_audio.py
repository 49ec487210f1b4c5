"""streamtrain.audio: resampling against torchaudio's Resample; opus through libopus."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from torchaudio.transforms import Resample

import streamtrain.audio.encoding
from streamtrain.audio import (
    DEFAULT_OPUS_COMPLEXITY,
    OPUS_RATES,
    AudioError,
    decode,
    decode_segment,
    encode,
    opus_complexity,
    probe,
    resample,
)
from streamtrain.audio.opus import ogg_crc
from streamtrain.audio.resampling import _PRODUCT_SIZE, _polyphase
from tests.support.corpus import speech, utterances

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


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("file_format, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "PCM_24"),
                                                  ("WAV", "FLOAT")])
def test_decode_equals_libsndfiles_float_conversion(file_format: str, subtype: str, channels: int):
    """16-bit audio is read as integers and scaled by 2**-15: the same floats, to the bit."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.random.default_rng(channels).uniform(-1, 1, (5000, channels)), 16000,
                    format=file_format, subtype=subtype)
    data = buffer.getvalue()
    floats = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    assert np.array_equal(decode(data)[0], floats)
    assert np.array_equal(decode(data, 100, 400)[0], floats[100:400])
    assert np.array_equal(decode(data, 4900, 6000)[0], floats[4900:])
    waveform, info = decode_segment(data, 100 / 16000, 400 / 16000)
    assert np.array_equal(waveform, floats[100:400]) and (info.frames, info.channels) == (5000, channels)
    assert np.array_equal(decode_segment(data, None, None)[0], floats)
    with pytest.raises(AudioError, match=r"segment starts at 1.0 s, after the end of the recording \(0.312 s\)"):
        decode_segment(data, 1.0, None)


def speech_at(rate: int, seed: int = 2) -> np.ndarray:
    return speech(utterances(1, seed=seed)[0], rate)


@pytest.mark.parametrize("rate", OPUS_RATES)
def test_opus_decodes_to_the_exact_length(rate: int):
    waveform = speech_at(rate)
    data, ext = encode(waveform, rate, "opus")
    decoded, decoded_rate = decode(data)
    assert (ext, decoded_rate, len(decoded), probe(data).frames) == ("opus", rate, len(waveform), len(waveform))
    assert np.corrcoef(waveform, decoded)[0, 1] > 0.9  # lossy, but the same speech


def test_opus_bytes_depend_on_the_audio_and_the_complexity_only():
    waveform = speech_at(16000)
    fast, slow = (encode(waveform, 16000, "opus", complexity=c)[0] for c in (0, 10))
    assert encode(waveform, 16000, "opus", complexity=0)[0] == fast  # no random Ogg serial number
    assert fast != slow
    assert encode(waveform, 16000, "opus")[0] == encode(waveform, 16000, "opus", complexity=DEFAULT_OPUS_COMPLEXITY)[0]


def test_ogg_crc_is_the_one_libsndfile_writes():
    buffer = io.BytesIO()
    soundfile.write(buffer, speech_at(16000), 16000, format="OGG", subtype="OPUS")
    data = buffer.getvalue()
    size = 27 + data[26] + sum(data[27 : 27 + data[26]])  # header, lacing values, body
    page = data[:size]
    assert ogg_crc(page[:22] + bytes(4) + page[26:]) == int.from_bytes(page[22:26], "little")


@pytest.mark.parametrize("complexity", [-1, 11, 2.5, True, "4"])
def test_bad_opus_complexity_is_refused(complexity):
    with pytest.raises(AudioError, match="opus complexity must be an integer 0 to 10"):
        encode(speech_at(16000), 16000, "opus", complexity=complexity)


def test_complexity_applies_to_opus_only():
    with pytest.raises(AudioError, match="a complexity applies to opus only, not flac"):
        encode(speech_at(16000), 16000, "flac", complexity=4)


def test_without_libopus_soundfile_encodes_opus(monkeypatch):
    monkeypatch.setattr(streamtrain.audio.encoding, "libopus", lambda: None)
    waveform = speech_at(16000)
    assert opus_complexity(None) is None
    data, _ = encode(waveform, 16000, "opus", bitrate=24000)
    assert soundfile.info(io.BytesIO(data)).subtype == "OPUS"
    assert abs(len(decode(data)[0]) - len(waveform)) <= 1
    with pytest.raises(AudioError, match="an opus complexity needs the system's libopus"):
        encode(waveform, 16000, "opus", complexity=4)
