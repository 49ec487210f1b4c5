"""SpecAugment frequency and time masks, reproducible from a seed and a step.

Every random number is drawn from an explicit CPU ``torch.Generator``, so the
masks depend on the generator's state only, never on the device the features
live on; ``generator_for_step(seed, step)`` gives the generator of a training
step, so a resumed run draws the same masks without saving any RNG state.

Shape legend: B batch, F frames, D feature bins. The features are B x D x F
(``time_dim=2``, WhisperLogMel) or B x F x D (``time_dim=1``, KaldiFbank).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from streamtrain.features.padding import length_mask


def generator_for_step(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, step, rank) alone, well mixed by SHA-256: a resumed run
    draws the same masks, and each rank its own."""
    digest = hashlib.sha256(f"specaugment:{int(seed)}:{int(step)}:{int(rank)}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class SpecAugment(nn.Module):
    """Masks ``freq_masks`` bands of up to ``freq_width`` bins and ``time_masks`` spans
    of up to ``min(time_width, time_width_ratio * frames)`` frames in each sample.

    Widths are uniform in [0, max] and starts uniform over the positions where the
    mask fits, per sample and mask (as in Park et al., 2019). Masks cover only a
    sample's real frames; the padding is left as it is.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: int = 100,
        time_width_ratio: float = 1.0,
        mask_value: float = 0.0,
        time_dim: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("freq_masks", freq_masks),
            ("freq_width", freq_width),
            ("time_masks", time_masks),
            ("time_width", time_width),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0.0 <= time_width_ratio <= 1.0:
            raise ValueError(f"time_width_ratio must lie in [0, 1], got {time_width_ratio}")
        if time_dim not in (1, 2):
            raise ValueError(f"time_dim must be 1 (B x F x D) or 2 (B x D x F), got {time_dim}")
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width
        self.time_width_ratio = time_width_ratio
        self.mask_value = mask_value
        self.time_dim = time_dim

    def forward(self, features: Tensor, frame_lengths: Tensor, generator: torch.Generator) -> Tensor:
        """Masked copy of ``features`` (B x D x F or B x F x D, see time_dim).

        frame_lengths: B real frames per sample. generator: a CPU generator, e.g.
        ``generator_for_step(seed, step)``; each sample takes the next
        ``2 * (freq_masks + time_masks)`` numbers from it, in batch order.
        """
        if features.dim() != 3:
            raise ValueError(f"features must have 3 dimensions, got shape {tuple(features.shape)}")
        if generator.device.type != "cpu":
            raise ValueError(
                "draw SpecAugment masks from a CPU generator, so they do not depend on the device"
            )
        n_frames = features.shape[self.time_dim]
        n_bins = features.shape[3 - self.time_dim]
        lengths = frame_lengths.to("cpu", torch.long)
        if lengths.shape != (features.shape[0],) or int(lengths.min()) < 0 or int(lengths.max()) > n_frames:
            raise ValueError(f"frame_lengths must hold {features.shape[0]} values in [0, {n_frames}]")

        # One draw, row by row: a sample's masks depend only on its place in the stream,
        # so splitting a batch into micro-batches (in order, one generator) draws the same masks.
        draws = torch.rand(
            lengths.shape[0], self.freq_masks + self.time_masks, 2, generator=generator, dtype=torch.float64
        )
        bins = torch.full_like(lengths, n_bins)
        freq = _spans(draws[:, : self.freq_masks], bins, bins.clamp(max=self.freq_width))
        widest = (lengths.to(torch.float64) * self.time_width_ratio).floor().long().clamp(max=self.time_width)
        time = _spans(draws[:, self.freq_masks :], lengths, widest)

        device = features.device
        freq_mask = _covered(freq.to(device), n_bins)  # B x D
        time_mask = _covered(time.to(device), n_frames)  # B x F
        real = length_mask(frame_lengths.to(device, torch.long), n_frames)  # B x F
        mask = (freq_mask.unsqueeze(2) & real.unsqueeze(1)) | time_mask.unsqueeze(1)  # B x D x F
        if self.time_dim == 1:
            mask = mask.transpose(1, 2)
        return features.masked_fill(mask, self.mask_value)


def _spans(draws: Tensor, size: Tensor, widest: Tensor) -> Tensor:
    """B x count x 2 (start, end) spans from B x count x 2 uniform draws in [0, 1):
    width uniform in [0, widest], start uniform in [0, size - width]; size, widest: B."""
    width = (draws[..., 0] * (widest.unsqueeze(1) + 1)).floor().long()
    start = (draws[..., 1] * (size.unsqueeze(1) - width + 1)).floor().long()
    return torch.stack([start, start + width], dim=2)


def _covered(spans: Tensor, size: int) -> Tensor:
    """B x size bool: True inside any of each row's (start, end) spans (B x count x 2)."""
    position = torch.arange(size, device=spans.device).view(1, 1, size)
    inside = (position >= spans[..., :1]) & (position < spans[..., 1:])
    return inside.any(dim=1)
