"""What the loop trains toward: the target texts of a batch, and the loss of a micro-batch.

The loop calls an ``Objective`` and knows nothing of what is behind it: plain
cross-entropy on the transcripts (here), or distillation on a teacher's
pseudo-labels with a KL term (``streamtrain.distill.objective``), which plugs in
from the layer above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from streamtrain.format.dataset import Dataset
from streamtrain.train.config import DistillConfig
from streamtrain.train.model import IGNORE_INDEX


@dataclass(frozen=True)
class StepFeatures:
    """A micro-batch's features (B x M x F): as the featurizer made them, and as the model saw them
    (after SpecAugment; the same tensor when it is off); and the model's encoder output for ``seen``
    (B x T x D)."""

    clean: torch.Tensor
    seen: torch.Tensor
    encoded: torch.Tensor


class Objective(Protocol):
    def texts(self, batch) -> tuple[list[str], torch.Tensor | None]:
        """The batch's target texts, and which samples count (bool, B; None: all)."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, features: StepFeatures,
             decoder_inputs: torch.Tensor) -> torch.Tensor:
        """Summed loss of a micro-batch (the loop divides by the batch's target tokens).

        logits: B x L x V; labels: B x L (IGNORE_INDEX where nothing is predicted); decoder_inputs: B x L.
        """


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")


class CrossEntropy:
    """Cross-entropy on the transcripts stored with the audio."""

    def texts(self, batch) -> tuple[list[str], torch.Tensor | None]:
        return batch.text, None

    def loss(self, logits, labels, features, decoder_inputs) -> torch.Tensor:
        return cross_entropy_sum(logits, labels)


@dataclass(frozen=True)
class ObjectiveContext:
    """What a run being set up offers the factory that chooses its objective."""

    distill: DistillConfig  # the recipe's distill section
    columns: list[Dataset]  # the training loader's sidecar columns (pseudo-labels among them)
    student: nn.Module  # the model being trained, unwrapped
    featurizer: nn.Module  # the recipe's featurizer, on the device
    prompt: list[str]  # the recipe's decoder prompt
    device: torch.device


#: Chooses a run's objective (``streamtrain.distill.objective.objective_for`` in ``streamtrain train``).
ObjectiveFactory = Callable[[ObjectiveContext], Objective]


def cross_entropy_objective(context: ObjectiveContext) -> Objective:
    """The default: cross-entropy on the transcripts, whatever the recipe's distill section says."""
    return CrossEntropy()
