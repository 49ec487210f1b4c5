"""Checks and masks shared by the featurizers.

Shape legend: B batch, T samples (the batch's padded width), F frames.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_audio_batch(audio: Tensor, lengths: Tensor) -> Tensor:
    """Validate a zero-padded audio batch; return its lengths as int64 on the audio's device.

    audio: B x T floating point. lengths: B integers, each in [0, T].
    """
    if audio.dim() != 2:
        raise ValueError(f"audio must be B x T, got shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise TypeError(f"audio must be a floating point tensor, got {audio.dtype}")
    if audio.shape[0] == 0:
        raise ValueError("empty batch")
    if lengths.dim() != 1 or lengths.shape[0] != audio.shape[0]:
        raise ValueError(
            f"lengths must hold one length per sample: shape ({audio.shape[0]},), got {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be integers, got {lengths.dtype}")
    low, high = int(lengths.min()), int(lengths.max())
    if low < 0 or high > audio.shape[1]:
        raise ValueError(f"lengths must lie in [0, {audio.shape[1]}] (the padded width), got [{low}, {high}]")
    return lengths.to(device=audio.device, dtype=torch.long)


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """B x size bool, True at positions before each sample's length."""
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(1)


def zero_padding(audio: Tensor, lengths: Tensor) -> Tensor:
    """audio (B x T) with every sample's padding set to zero, whatever it held."""
    return audio.masked_fill(~length_mask(lengths, audio.shape[1]), 0.0)
