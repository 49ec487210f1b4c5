"""The distillation objective: alpha * CE(pseudo-labels) + beta * T^2 * KL(teacher || student).

The teacher is frozen, in eval mode, without gradients, and must be the model
whose fingerprint the pseudo-label column carries: a KL term against another
teacher than the labeller silently degrades the student. It sees the features
without SpecAugment (as when it labelled), unless
``distill.teacher_sees_augmented`` asks for the student's augmented ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from streamtrain.format.sidecar import LABELS_COLUMN
from streamtrain.distill.teacher import load_teacher
from streamtrain.train.config import RecipeError
from streamtrain.train.model import IGNORE_INDEX
from streamtrain.train.loss import CrossEntropy, Objective, ObjectiveContext, cross_entropy_sum

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
    """The trainer's objective when distilling: targets are the teacher's pseudo-labels (those that
    passed ``label --max-wer``), loss is alpha * CE + beta * T^2 * KL(teacher || student)."""

    teacher: torch.nn.Module | None  # None: pseudo-labels with cross-entropy only (beta = 0)
    alpha: float
    beta: float
    temperature: float
    teacher_sees_augmented: bool = False  # False: the teacher gets the features without SpecAugment
    #: the student's frozen encoder is the teacher's: the teacher decodes from the student's encoder output
    #: wherever it would have been fed the same features (Distil-Whisper's shared hidden states)
    shared_encoder: bool = False

    def texts(self, batch) -> tuple[list[str], torch.Tensor]:
        column = batch.columns[LABELS_COLUMN]
        return [s["json"]["text"] for s in column], torch.tensor([s["json"]["keep"] for s in column], dtype=torch.bool)

    def loss(self, logits, labels, features, decoder_inputs) -> torch.Tensor:
        cross_entropy = cross_entropy_sum(logits, labels)
        if self.teacher is None or not self.beta:
            return self.alpha * cross_entropy
        teacher_features = features.seen if self.teacher_sees_augmented else features.clean
        with torch.no_grad():
            if self.shared_encoder and teacher_features is features.seen:
                encoded = {"encoder_outputs": (features.encoded.detach().to(self.teacher.dtype),)}
            else:
                encoded = {"input_features": teacher_features.to(self.teacher.dtype)}
            teacher_logits = self.teacher(**encoded, decoder_input_ids=decoder_inputs).logits
        return self.alpha * cross_entropy + self.beta * kl_divergence(
            logits, teacher_logits, labels != IGNORE_INDEX, self.temperature
        )


def objective_for(context: ObjectiveContext) -> Objective:
    """The recipe's objective: plain cross-entropy, or distillation (checked against the labeller).

    The teacher's fingerprint is taken with the recipe's featurizer, the features it will be fed: a
    teacher that labelled other features (mel bins, window, normalisation) is another teacher. Its
    logits for the KL term follow the recipe's prompt, which must be the one it labelled after.
    """
    config, student, prompt = context.distill, context.student, context.prompt
    if config.labels is None:
        return CrossEntropy()
    labels = next((c for c in context.columns if (c.index.column or {}).get("name") == LABELS_COLUMN), None)
    if labels is not None and labels.index.column.get("kept") == 0:
        raise RecipeError(f"distill.labels: every label in {config.labels} is marked keep=false (none of "
                          f"{labels.index.samples} passed `label --max-wer`): nothing would train; relabel with a "
                          "higher --max-wer")
    if config.teacher is None:
        return Distillation(None, config.alpha, 0.0, config.temperature)
    teacher, fingerprint = load_teacher(config.teacher, config.teacher_precision, context.device, context.featurizer)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise RecipeError(f"distill.teacher: vocabulary of {teacher.config.vocab_size} tokens, "
                          f"the student has {student.config.vocab_size}")
    if labels is not None:
        labeller = labels.index.column.get("teacher_fingerprint")
        if labeller != fingerprint:
            message = (f"distill.teacher: {config.teacher} (fingerprint {fingerprint[:12]}) is not the teacher that "
                       f"wrote the pseudo-labels in {config.labels} (fingerprint {str(labeller)[:12]}; weights, "
                       "tokenizer and features count): a KL term against another teacher degrades the student")
            if not config.allow_teacher_mismatch:
                raise RecipeError(message + "; set distill.allow_teacher_mismatch=true to do it anyway")
            log.warning("!!! %s -- continuing because distill.allow_teacher_mismatch is set !!!", message)
        labelled_after = labels.index.column.get("prompt")
        if labelled_after is not None and labelled_after != prompt:
            raise RecipeError(f"model.prompt: {prompt} is not the prompt the teacher wrote the pseudo-labels in "
                              f"{config.labels} after ({labelled_after}); its KL term would follow another prompt")
    shared = same_frozen_encoder(student, teacher)
    if shared:
        log.info("the student's frozen encoder is the teacher's: it runs once per batch for both")
    return Distillation(teacher, config.alpha, config.beta, config.temperature, config.teacher_sees_augmented,
                        shared)


def same_frozen_encoder(student, teacher) -> bool:
    """Whether the student's encoder is frozen and holds the teacher's weights (as ``make-student`` copies
    them; in the teacher's precision: a bf16 teacher then decodes from the fp32 encoder's output)."""
    encoder = student.get_encoder()
    if any(parameter.requires_grad for parameter in encoder.parameters()):
        return False
    mine, theirs = encoder.state_dict(), teacher.get_encoder().state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[name].shape == theirs[name].shape and torch.equal(mine[name].to(theirs[name]), theirs[name])
        for name in mine)
