"""Feature cache codec: float16 + zstandard with a JSON header, no pickle."""

import json

import pytest
import torch

from streamtrain.format.feature_codec import MAGIC, decode_features, encode_features


@pytest.mark.parametrize("shape", [(80, 3000), (2, 3, 5), (0, 80), ()])
def test_round_trip_within_float16_precision(shape):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 4
    data = encode_features(features)
    decoded = decode_features(data)
    assert decoded.dtype == torch.float16 and decoded.shape == features.shape
    assert torch.equal(decoded, features.half())
    # float16 rounds to 11 significant bits: relative error <= 2**-11 (normal range)
    assert ((decoded.float() - features).abs() <= features.abs() * 2**-11 + 2**-24).all()


def test_header_is_plain_json():
    data = encode_features(torch.zeros(3, 4))
    assert data.startswith(MAGIC)
    length = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "little")
    header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length])
    assert header == {"dtype": "float16", "shape": [3, 4]}


def test_compresses_log_mel_like_data():
    features = torch.full((80, 3000), -0.5)
    features[:, :500] = torch.randn(80, 500)
    assert len(encode_features(features)) < features.numel() * 2 / 3


def test_rejects_what_float16_cannot_hold():
    with pytest.raises(ValueError):
        encode_features(torch.tensor([70000.0]))
    with pytest.raises(ValueError):
        encode_features(torch.tensor([float("nan")]))
    with pytest.raises(TypeError):
        encode_features(torch.tensor([1, 2]))


def test_rejects_corrupt_bytes():
    data = encode_features(torch.randn(4, 5))
    with pytest.raises(ValueError, match="magic"):
        decode_features(b"PK" + data)
    with pytest.raises(ValueError):
        decode_features(data[:-3])
    with pytest.raises(ValueError):
        decode_features(data.replace(b"[4, 5]", b"[4, 6]"))
    with pytest.raises(ValueError):
        decode_features(data.replace(b"float16", b"float64"))
    with pytest.raises(ValueError):
        decode_features(data[: len(MAGIC) + 2])
