"""An auxiliary CTC loss on the encoder's output (hybrid CTC/attention training).

A model trained from scratch first learns to write plausible transcripts without
reading the audio: until the decoder's cross-attention finds where each token is
spoken, the loss sits on a plateau, for a number of steps that depends on the seed
and the data order. CTC scores every encoder frame against the transcript from the
first step, so the encoder learns an alignment early and the attention follows it
(Kim, Hori and Watanabe, 2017; ESPnet's ``ctc_weight``). The loss trained is
``(1 - w) * objective + w * CTC`` with ``w = model.ctc_weight``.

The head is one linear layer on the encoder's last hidden state, over the
tokenizer's vocabulary plus a blank (the last index). It is a submodule of the
model (``ctc_head``), so it trains, synchronises over ranks and is checkpointed
with it; the exported model leaves it out and stays a plain Whisper model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from streamtrain.train.model import IGNORE_INDEX
from streamtrain.train.whisper_tokenizer import timestamp_ids

HEAD = "ctc_head"


class AuxiliaryCtc:
    """Mixes a CTC loss on the encoder's output into a micro-batch's summed loss."""

    def __init__(self, head: nn.Linear, weight: float, not_spoken: list[int]):
        self.head, self.weight = head, weight
        self.blank = head.out_features - 1
        # a buffer of the head (not saved): it moves to the device with the model, once, not every micro-batch
        head.register_buffer("not_spoken", torch.tensor(sorted(set(not_spoken)), dtype=torch.long), persistent=False)

    def mix(self, loss: torch.Tensor, encoded: torch.Tensor, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * loss + w * CTC``, both summed over the micro-batch.

        encoded: B x T x D; frames: B feature frames before padding; labels: B x L as the
        objective's (IGNORE_INDEX where nothing is predicted). A row with no label at all (a
        distillation label filtered out) is left out; a row whose only label is the end token
        (silence) is trained towards blanks.
        """
        return (1 - self.weight) * loss + self.weight * self.loss(encoded, frames, labels)

    def loss(self, encoded: torch.Tensor, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = labels.ne(IGNORE_INDEX).any(dim=1)
        encoded, frames, labels = encoded[rows], frames[rows], labels[rows]
        spoken = labels.ne(IGNORE_INDEX) & ~torch.isin(labels, self.head.not_spoken)
        # Whisper's second convolution halves the frames (stride 2, padding 1)
        lengths = torch.clamp((frames.to(labels.device) + 1) // 2, max=encoded.shape[1])
        log_probs = F.log_softmax(self.head(encoded.float()), dim=-1).transpose(0, 1)  # T x B x V+1
        return F.ctc_loss(log_probs, labels[spoken], lengths, spoken.sum(dim=1), blank=self.blank,
                          reduction="sum", zero_infinity=True)


def attach_ctc_head(model: nn.Module, weight: float, tokenizer: PreTrainedTokenizerBase) -> AuxiliaryCtc | None:
    """Give ``model`` (a Whisper model) a CTC head when ``weight`` > 0; the loss that trains it."""
    if not weight:
        return None
    head = nn.Linear(model.config.d_model, len(tokenizer) + 1)
    setattr(model, HEAD, head)
    not_spoken = [*tokenizer.all_special_ids, *timestamp_ids(tokenizer)]
    return AuxiliaryCtc(head, weight, not_spoken)


def without_ctc_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's state dict as the exported model holds it: the CTC head left out."""
    return {name: tensor for name, tensor in state.items() if not name.startswith(f"{HEAD}.")}
