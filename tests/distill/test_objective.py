"""The distillation objective against an independent reference: direction, temperature, T^2, beta, gradients.

Each check is made so that a reversed KL (student || teacher), a missing T^2, an
ignored temperature or a dropped beta term fails it: the references are written
from the formula (float64 softmaxes, no torch loss function), and
``test_each_wrong_objective_fails_the_check`` runs the check on each of those
mistakes, planted in the real objective, and requires it to fail.
"""

import pytest
import torch
import torch.nn.functional as F

import streamtrain.distill.objective as objective
from streamtrain.distill.objective import Distillation, kl_divergence
from streamtrain.train.loss import StepFeatures

T = 2.5
# B=2 x L=3 x V=4, asymmetric so that KL(t || s) != KL(s || t); the masked-out
# position holds extreme logits, so summing over it would change every number.
STUDENT = torch.tensor([
    [[0.5, 0.0, 0.2, 0.1], [0.1, 0.2, 3.0, -2.0], [9.0, -9.0, 9.0, -9.0]],
    [[-0.5, 1.5, -1.0, 2.0], [0.3, 0.0, 0.0, 0.2], [0.0, 4.0, -1.0, 1.0]],
])
TEACHER = torch.tensor([
    [[8.0, -1.0, -2.0, -1.0], [2.0, -2.0, 0.0, 1.0], [-9.0, 9.0, -9.0, 9.0]],
    [[1.0, 0.0, 0.5, -0.5], [-2.0, 9.0, -1.0, 0.0], [3.0, 0.0, 1.0, -2.0]],
])
MASK = torch.tensor([[True, True, False], [True, True, True]])


def softmax64(logits, temperature):
    """p_v = exp(z_v / T) / sum_u exp(z_u / T), in float64, from the definition."""
    scaled = logits.double() / temperature
    exp = (scaled - scaled.max(-1, keepdim=True).values).exp()
    return exp / exp.sum(-1, keepdim=True)


def reference_kl(student, teacher, mask, temperature):
    """T^2 * sum over masked positions of sum_v p_v (log p_v - log q_v), p the teacher's and q the student's
    softmax at ``temperature``: KL(teacher || student), written out."""
    p, q = softmax64(teacher[mask], temperature), softmax64(student[mask], temperature)
    return (p * (p.log() - q.log())).sum() * temperature**2


def reference_gradient(student, teacher, mask, temperature):
    """d/d student of reference_kl: T * (softmax(s/T) - softmax(t/T)) where masked, 0 elsewhere."""
    gradient = temperature * (softmax64(student, temperature) - softmax64(teacher, temperature))
    return gradient * mask[..., None]


def test_the_logits_tell_the_wrong_variants_apart():
    right = reference_kl(STUDENT, TEACHER, MASK, T)
    variants = {
        "reversed": reference_kl(TEACHER, STUDENT, MASK, T),
        "no T^2": right / T**2,
        "temperature ignored": reference_kl(STUDENT, TEACHER, MASK, 1.0),
        "temperature ignored, T^2 kept": reference_kl(STUDENT, TEACHER, MASK, 1.0) * T**2,
        "unmasked position included": reference_kl(STUDENT, TEACHER, torch.ones_like(MASK), T),
    }
    for name, value in variants.items():
        assert abs(float(value - right)) > 0.05 * float(right), name


def test_kl_is_the_reference_kl_teacher_to_student_times_t_squared():
    for temperature in (T, 1.0, 0.5, 4.0):
        value = kl_divergence(STUDENT, TEACHER, MASK, temperature)
        torch.testing.assert_close(value.double(), reference_kl(STUDENT, TEACHER, MASK, temperature),
                                   rtol=1e-5, atol=1e-6)
    as_torch_computes_it = F.kl_div(F.log_softmax(STUDENT[MASK] / T, -1), F.log_softmax(TEACHER[MASK] / T, -1),
                                    log_target=True, reduction="sum") * T**2
    torch.testing.assert_close(as_torch_computes_it.double(), reference_kl(STUDENT, TEACHER, MASK, T))


def test_kl_gradient_is_t_times_the_softmax_difference_on_masked_positions():
    student = STUDENT.clone().requires_grad_(True)
    kl_divergence(student, TEACHER, MASK, T).backward()
    torch.testing.assert_close(student.grad.double(), reference_gradient(STUDENT, TEACHER, MASK, T),
                               rtol=1e-5, atol=1e-6)


class FixedTeacher(torch.nn.Module):
    """A teacher whose logits are TEACHER whatever the input; records how it was called."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, input_features, decoder_input_ids):
        self.calls.append((input_features, decoder_input_ids.tolist(), torch.is_grad_enabled()))

        class Output:
            logits = TEACHER * self.weight

        return Output()


LABELS = torch.tensor([[2, 0, -100], [1, 3, 2]])  # the targets where MASK holds; -100 (ignored) elsewhere
INPUTS = torch.tensor([[1, 4, 5], [1, 6, 7]])
CLEAN = torch.randn(2, 40, 10, generator=torch.Generator().manual_seed(0))
AUGMENTED = CLEAN.masked_fill(torch.arange(10) < 3, 0.0)  # as if SpecAugment masked the first 3 frames


def reference_cross_entropy(student, labels):
    """-sum over labelled positions of log softmax(student)[label], written out (float64)."""
    mask = labels != -100
    return -softmax64(student[mask], 1.0).gather(1, labels[mask][:, None]).log().sum()


def reference_loss_and_gradient(alpha, beta):
    """alpha * CE + beta * T^2 * KL(teacher || student), and its gradient: alpha * (softmax(s) - onehot) on
    the labelled positions + beta * T * (softmax(s/T) - softmax(t/T)) on the masked ones."""
    loss = alpha * reference_cross_entropy(STUDENT, LABELS) + beta * reference_kl(STUDENT, TEACHER, MASK, T)
    onehot = F.one_hot(LABELS.clamp(min=0), 4).double()
    cross_entropy_gradient = (softmax64(STUDENT, 1.0) - onehot) * MASK[..., None]
    return loss, alpha * cross_entropy_gradient + beta * reference_gradient(STUDENT, TEACHER, MASK, T)


def matches_the_reference(distillation, alpha, beta) -> bool:
    """Whether the objective's loss and gradient are the reference's, within float32 rounding."""
    student = STUDENT.clone().requires_grad_(True)
    loss = distillation.loss(student, LABELS, StepFeatures(CLEAN, AUGMENTED, None), INPUTS)
    loss.backward()
    expected_loss, expected_gradient = reference_loss_and_gradient(alpha, beta)
    close = torch.allclose(loss.double(), expected_loss, rtol=1e-5, atol=1e-6)
    return close and torch.allclose(student.grad.double(), expected_gradient, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.5, 1.0), (1.0, 0.3), (0.0, 2.0)])
def test_distillation_loss_weighs_ce_and_kl_and_its_gradient_carries_beta(alpha, beta):
    teacher = FixedTeacher()
    assert matches_the_reference(Distillation(teacher, alpha=alpha, beta=beta, temperature=T), alpha, beta)
    assert teacher.weight.grad is None  # the teacher is run without gradients
    (features, inputs, grad_enabled), = teacher.calls
    assert inputs == INPUTS.tolist() and not grad_enabled


#: Mistakes an objective could make, each planted in the real one; the check above must catch every one.
WRONG_KL = {
    "reversed KL(student || teacher)": lambda s, t, mask, temperature: kl_divergence(t, s, mask, temperature),
    "no T^2 factor": lambda s, t, mask, temperature: kl_divergence(s, t, mask, temperature) / temperature**2,
    "temperature ignored": lambda s, t, mask, temperature: kl_divergence(s, t, mask, 1.0),
    "temperature ignored, T^2 kept": lambda s, t, mask, temperature: kl_divergence(s, t, mask, 1.0) * temperature**2,
}


@pytest.mark.parametrize("mistake", [*WRONG_KL, "beta zeroed"])
def test_each_wrong_objective_fails_the_check(mistake, monkeypatch):
    alpha, beta = 0.5, 1.0
    if mistake in WRONG_KL:
        monkeypatch.setattr(objective, "kl_divergence", WRONG_KL[mistake])
        wrong = Distillation(FixedTeacher(), alpha=alpha, beta=beta, temperature=T)
    else:
        wrong = Distillation(FixedTeacher(), alpha=alpha, beta=0.0, temperature=T)
    assert not matches_the_reference(wrong, alpha, beta), mistake


@pytest.mark.parametrize("sees_augmented", [False, True])
def test_the_teacher_sees_the_features_without_specaugment_unless_asked(sees_augmented):
    teacher = FixedTeacher()
    distillation = Distillation(teacher, alpha=0.5, beta=1.0, temperature=T, teacher_sees_augmented=sees_augmented)
    distillation.loss(STUDENT, LABELS, StepFeatures(CLEAN, AUGMENTED, None), INPUTS)
    (features, _, _), = teacher.calls
    assert torch.equal(features, AUGMENTED if sees_augmented else CLEAN)


def test_pseudo_labels_without_a_teacher_are_cross_entropy_only():
    distillation = Distillation(None, alpha=0.7, beta=0.0, temperature=T)
    loss = distillation.loss(STUDENT, LABELS, StepFeatures(CLEAN, CLEAN, None), torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(loss.double(), 0.7 * reference_cross_entropy(STUDENT, LABELS))
