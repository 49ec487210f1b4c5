"""The distillation objective: alpha * CE(pseudo-labels) + beta * T^2 * KL(teacher || student).

The teacher is frozen, in eval mode, without gradients, and must be the model
whose fingerprint the pseudo-label column carries: a KL term against another
teacher than the labeller silently degrades the student.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from streamtrain.dataset.dataset import Dataset
from streamtrain.distill.label import LABELS_COLUMN
from streamtrain.distill.teacher import load_teacher
from streamtrain.train.config import DistillConfig, RecipeError

log = logging.getLogger("streamtrain.train")


def kl_divergence(student_logits, teacher_logits, mask, temperature: float) -> torch.Tensor:
    """Summed KL(teacher || student) over the masked positions, times temperature^2.

    logits: B x L x V; mask: B x L bool (the positions that have a target).
    """
    student = (student_logits[mask].float() / temperature).log_softmax(-1)
    teacher = (teacher_logits[mask].float() / temperature).log_softmax(-1)
    return (teacher.exp() * (teacher - student)).sum() * temperature**2


@dataclass
class Distillation:
    teacher: torch.nn.Module
    alpha: float
    beta: float
    temperature: float

    def loss(self, cross_entropy, student_logits, features, decoder_inputs, mask) -> torch.Tensor:
        """alpha * the student's summed cross-entropy + beta * the summed KL term, on the same tokens."""
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_features=features.to(self.teacher.dtype), decoder_input_ids=decoder_inputs
            ).logits
        return self.alpha * cross_entropy + self.beta * kl_divergence(
            student_logits, teacher_logits, mask, self.temperature
        )


def load_distillation(config: DistillConfig, columns: list[Dataset], student, device) -> Distillation | None:
    """The frozen teacher for the KL term, checked against the teacher that wrote the labels."""
    if config.teacher is None:
        return None
    teacher, fingerprint = load_teacher(config.teacher, config.teacher_precision, device)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise RecipeError(f"distill.teacher: vocabulary of {teacher.config.vocab_size} tokens, "
                          f"the student has {student.config.vocab_size}")
    labels = next((c for c in columns if (c.index.column or {}).get("name") == LABELS_COLUMN), None)
    if labels is not None:
        labeller = labels.index.column.get("teacher_fingerprint")
        if labeller != fingerprint:
            message = (f"distill.teacher: {config.teacher} (fingerprint {fingerprint[:12]}) is not the teacher that "
                       f"wrote the pseudo-labels in {config.labels} (fingerprint {str(labeller)[:12]}): a KL term "
                       "against another teacher degrades the student")
            if not config.allow_teacher_mismatch:
                raise RecipeError(message + "; set distill.allow_teacher_mismatch=true to do it anyway")
            log.warning("!!! %s -- continuing because distill.allow_teacher_mismatch is set !!!", message)
    return Distillation(teacher, config.alpha, config.beta, config.temperature)


def pseudo_labels(batch) -> tuple[list[str], torch.Tensor]:
    """(the teacher's transcripts, whether each passed `label --max-wer`) of a batch."""
    column = batch["columns"][LABELS_COLUMN]
    return [sample["json"]["text"] for sample in column], torch.tensor([sample["json"]["keep"] for sample in column])
