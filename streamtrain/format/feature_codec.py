"""Feature tensors as bytes for a feature cache: float16, zstandard-compressed.

Layout: the magic ``b"STFEAT1\\n"``, a little-endian uint32 header length, a
UTF-8 JSON header ``{"dtype": "float16", "shape": [...]}``, then one zstandard
frame of the little-endian float16 values in C order. Nothing is unpickled.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch
import zstandard
from torch import Tensor

MAGIC = b"STFEAT1\n"
_DTYPE = "float16"
_HEADER_LENGTH = struct.Struct("<I")
_MAX_HEADER = 4096


def encode_features(features: Tensor, level: int = 3) -> bytes:
    """Any-shape floating point tensor -> bytes (values rounded to float16).

    Raises ValueError for values that float16 cannot hold (beyond +-65504, NaN).
    """
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    half = features.detach().to("cpu", torch.float16).contiguous()
    if not torch.isfinite(half).all():
        raise ValueError("features hold values float16 cannot represent (non-finite or beyond +-65504)")
    header = json.dumps({"dtype": _DTYPE, "shape": list(half.shape)}).encode()
    payload = zstandard.ZstdCompressor(level=level).compress(half.numpy().astype("<f2", copy=False).tobytes())
    return MAGIC + _HEADER_LENGTH.pack(len(header)) + header + payload


def decode_features(data: bytes) -> Tensor:
    """bytes from ``encode_features`` -> float16 CPU tensor of the encoded shape."""
    data = bytes(data)
    start = len(MAGIC) + _HEADER_LENGTH.size
    if len(data) < start or data[: len(MAGIC)] != MAGIC:
        raise ValueError("not encoded features: bad magic")
    (header_length,) = _HEADER_LENGTH.unpack_from(data, len(MAGIC))
    if header_length > _MAX_HEADER or start + header_length > len(data):
        raise ValueError("not encoded features: bad header length")
    try:
        header = json.loads(data[start : start + header_length])
        dtype, shape = header["dtype"], [int(size) for size in header["shape"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not encoded features: bad header ({error})") from error
    if dtype != _DTYPE or any(size < 0 for size in shape):
        raise ValueError(f"unsupported encoded features: dtype {dtype!r}, shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * 2
    payload = data[start + header_length :]
    try:
        if zstandard.frame_content_size(payload) != expected:
            raise ValueError(f"the payload does not hold {expected} bytes for shape {shape}")
        raw = zstandard.ZstdDecompressor().decompress(payload)
    except (zstandard.ZstdError, ValueError) as error:
        raise ValueError(f"corrupt encoded features: {error}") from error
    if len(raw) != expected:
        raise ValueError(f"corrupt encoded features: {len(raw)} bytes for shape {shape}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float16).reshape(shape))
