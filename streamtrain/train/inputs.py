"""Where a batch's features come from: computed on the device now, or read from a feature column.

Both give, for a slice of the batch (a micro-batch), ``(features B x M x F
float32, frame lengths B)`` on the device; SpecAugment is applied by the loop
after either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from streamtrain.features.feature_cache import cached_features

Slicer = Callable[[slice], tuple[torch.Tensor, torch.Tensor]]


class LiveFeatures:
    """The featurizer runs on the batch's audio, on the device, micro-batch by micro-batch."""

    def __init__(self, featurizer: nn.Module):
        self.featurizer = featurizer

    def prepare(self, batch, device: torch.device) -> Slicer:
        audio = batch.audio.to(device, non_blocking=True)
        lengths = batch.audio_lens.to(device)
        return lambda piece: self.featurizer(audio[piece], lengths[piece])


class CachedFeatures:
    """Features written once by ``streamtrain featurize``, joined to the batch as a column."""

    def prepare(self, batch, device: torch.device) -> Slicer:
        features, frames = cached_features(batch, device)
        return lambda piece: (features[piece], frames[piece])
