"""Global cepstral mean and variance normalization (CMVN) and its statistics.

A stats file is the JSON of ``compute_cmvn_stats``: ``count`` (frames) and, per
feature bin, ``sum``, ``sum_sq``, ``mean`` and ``std``. ``GlobalCMVN`` reads the
mean and std.

Shape legend: B batch, T samples, F frames, D feature bins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from streamtrain.features.padding import length_mask

#: Variances are floored here before the square root (as WeNet does), so a constant bin stays finite.
VARIANCE_FLOOR = 1e-20


class GlobalCMVN(nn.Module):
    """(features - mean) / std per feature bin of B x F x D features; padded frames stay zero."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(
                f"mean and std must be vectors of one size, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("CMVN mean must be finite and std finite and positive")
        self.register_buffer("mean", mean.to(torch.float32), persistent=False)
        self.register_buffer("std", std.to(torch.float32), persistent=False)

    @classmethod
    def from_stats(cls, stats: Mapping) -> GlobalCMVN:
        """From a mapping with "mean" and "std" lists (other keys are ignored)."""
        missing = [key for key in ("mean", "std") if key not in stats]
        if missing:
            raise ValueError(f"CMVN statistics lack {missing}")
        mean, std = (torch.tensor(stats[key], dtype=torch.float64) for key in ("mean", "std"))
        return cls(mean, std)

    @classmethod
    def from_file(cls, path: str | Path) -> GlobalCMVN:
        """From a JSON stats file written from ``compute_cmvn_stats``."""
        try:
            stats = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read CMVN statistics from {path}: {error}") from error
        if not isinstance(stats, dict):
            raise ValueError(f"{path} does not hold a JSON object of CMVN statistics")
        return cls.from_stats(stats)

    def stats(self) -> dict:
        """{"mean": [D floats], "std": [D floats]}: ``from_stats`` of it is the same module."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """features: B x F x D; frame_lengths: B. Returns B x F x D."""
        if features.dim() != 3 or features.shape[2] != self.mean.shape[0]:
            raise ValueError(f"expected B x F x {self.mean.shape[0]} features, got {tuple(features.shape)}")
        normalized = (features - self.mean) / self.std
        return normalized.masked_fill(~length_mask(frame_lengths, features.shape[1]).unsqueeze(2), 0.0)


def compute_cmvn_stats(
    batches: Iterable[tuple[Tensor, Tensor] | Tensor | np.ndarray],
    featurizer: nn.Module,
) -> dict:
    """Per-bin statistics of a featurizer's output over the real frames of some audio.

    batches: padded batches ``(audio: B x T, lengths: B)`` or single waveforms (T,),
    tensors or numpy arrays. They run through ``featurizer`` on the device its
    buffers are on; sums accumulate in float64. The featurizer must not apply
    CMVN itself. Returns JSON-able ``{"count": frames, "sum": [D], "sum_sq": [D],
    "mean": [D], "std": [D]}``; write it with ``json.dump`` and pass the file as
    ``KaldiFbank(cmvn=...)``.
    """
    if featurizer.config().get("cmvn") is not None:
        raise ValueError("the featurizer already applies CMVN; compute statistics with cmvn=None")
    device = next(featurizer.buffers()).device
    count, total, total_sq = 0, None, None
    with torch.inference_mode():
        for item in batches:
            audio, lengths = _as_batch(item)
            features, frame_lengths = featurizer(audio.to(device), lengths.to(device))
            if featurizer.time_dim == 2:
                features = features.transpose(1, 2)  # B x F x D
            real = features[length_mask(frame_lengths, features.shape[1])].to(torch.float64)  # frames x D
            sums, sums_sq = real.sum(0).cpu(), real.square().sum(0).cpu()
            total = sums if total is None else total + sums
            total_sq = sums_sq if total_sq is None else total_sq + sums_sq
            count += real.shape[0]
    if count == 0:
        raise ValueError("no frames: the audio is empty or shorter than one frame")
    mean = total / count
    variance = (total_sq / count - mean.square()).clamp(min=VARIANCE_FLOOR)
    return {
        "count": count,
        "sum": total.tolist(),
        "sum_sq": total_sq.tolist(),
        "mean": mean.tolist(),
        "std": variance.sqrt().tolist(),
    }


def _as_batch(item: tuple[Tensor, Tensor] | Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        audio, lengths = (torch.as_tensor(part) for part in item)
        return audio, lengths
    if isinstance(item, (Tensor, np.ndarray)) and item.ndim == 1:
        audio = torch.as_tensor(item)
        return audio.unsqueeze(0), torch.tensor([audio.shape[0]])
    raise TypeError(
        "compute_cmvn_stats takes (audio B x T, lengths B) batches or single waveforms of shape (T,), "
        f"got {type(item).__name__}"
    )
