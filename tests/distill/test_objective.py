"""The distillation objective against an independent reference: direction, temperature, T^2, beta, gradients.

Each check is made so that a reversed KL (student || teacher), a missing T^2, an
ignored temperature or a dropped beta term fails it; the first test proves that
the hand-made logits tell those variants apart.
"""

import pytest
import torch
import torch.nn.functional as F

from streamtrain.distill.objective import Distillation, kl_divergence

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


def reference_kl(student, teacher, mask, temperature):
    """KL(teacher || student) at ``temperature``, summed over masked positions, times T^2, via F.kl_div."""
    log_q = F.log_softmax(student[mask] / temperature, dim=-1)
    log_p = F.log_softmax(teacher[mask] / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") * temperature**2


def reference_gradient(student, teacher, mask, temperature):
    """d/d student of reference_kl: T * (softmax(s/T) - softmax(t/T)) where masked, 0 elsewhere."""
    gradient = temperature * (F.softmax(student / temperature, -1) - F.softmax(teacher / temperature, -1))
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
    value = kl_divergence(STUDENT, TEACHER, MASK, T)
    torch.testing.assert_close(value, reference_kl(STUDENT, TEACHER, MASK, T), rtol=1e-5, atol=1e-6)
    for temperature in (1.0, 0.5, 4.0):
        torch.testing.assert_close(kl_divergence(STUDENT, TEACHER, MASK, temperature),
                                   reference_kl(STUDENT, TEACHER, MASK, temperature), rtol=1e-5, atol=1e-6)


def test_kl_gradient_is_t_times_the_softmax_difference_on_masked_positions():
    student = STUDENT.clone().requires_grad_(True)
    kl_divergence(student, TEACHER, MASK, T).backward()
    torch.testing.assert_close(student.grad, reference_gradient(STUDENT, TEACHER, MASK, T), rtol=1e-5, atol=1e-6)


class FixedTeacher(torch.nn.Module):
    """A teacher whose logits are TEACHER whatever the input; records how it was called."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, input_features, decoder_input_ids):
        self.calls.append((input_features.shape, decoder_input_ids.tolist(), torch.is_grad_enabled()))

        class Output:
            logits = TEACHER * self.weight

        return Output()


@pytest.mark.parametrize("alpha,beta", [(0.5, 1.0), (1.0, 0.3), (0.0, 2.0)])
def test_distillation_loss_weighs_ce_and_kl_and_its_gradient_carries_beta(alpha, beta):
    teacher = FixedTeacher()
    distillation = Distillation(teacher, alpha=alpha, beta=beta, temperature=T)
    student = STUDENT.clone().requires_grad_(True)
    cross_entropy = torch.tensor(3.0, requires_grad=True)
    inputs = torch.tensor([[1, 4, 5], [1, 6, 7]])
    loss = distillation.loss(cross_entropy, student, torch.zeros(2, 40, 10), inputs, MASK)
    torch.testing.assert_close(loss, alpha * 3.0 + beta * reference_kl(STUDENT, TEACHER, MASK, T), rtol=1e-5, atol=1e-6)
    loss.backward()
    torch.testing.assert_close(student.grad, beta * reference_gradient(STUDENT, TEACHER, MASK, T), rtol=1e-5, atol=1e-6)
    assert float(cross_entropy.grad) == pytest.approx(alpha)
    assert teacher.weight.grad is None  # the teacher is run without gradients
    assert teacher.calls == [((2, 40, 10), inputs.tolist(), False)]
