"""Tests for the knowledge-distillation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workflow.distill import kd_loss


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, 5, (8,), generator=gen)
    return student, teacher, targets


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_by_hand(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """KL(p_T || p_S) summed over classes, averaged over the batch."""
    p_s, p_t = _softmax(student / temperature), _softmax(teacher / temperature)
    return float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))


def _ce_by_hand(student: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.mean(np.log(_softmax(student)[np.arange(len(targets)), targets])))


def test_alpha_zero_is_cross_entropy_exactly(batch) -> None:
    student, teacher, targets = batch
    assert torch.equal(kd_loss(student, teacher, targets, 4.0, 0.0), F.cross_entropy(student, targets))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_alpha_one_is_t_squared_kl(batch, temperature: float) -> None:
    student, teacher, targets = batch
    got = kd_loss(student.float(), teacher.float(), targets, temperature, 1.0).item()
    expected = temperature**2 * _kl_by_hand(student.numpy(), teacher.numpy(), temperature)
    assert got == pytest.approx(expected, abs=1e-6)


def test_mixed_alpha_matches_hand_computation(batch) -> None:
    student, teacher, targets = batch
    t, alpha = 3.0, 0.7
    expected = (1 - alpha) * _ce_by_hand(student.numpy(), targets.numpy()) + alpha * t**2 * _kl_by_hand(
        student.numpy(), teacher.numpy(), t
    )
    assert kd_loss(student, teacher, targets, t, alpha).item() == pytest.approx(expected, abs=1e-10)


def test_no_gradient_reaches_the_teacher(batch) -> None:
    student, teacher, targets = batch
    student, teacher = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    kd_loss(student, teacher, targets, 2.0, 0.5).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kl_term_vanishes_when_teacher_is_student(batch) -> None:
    student, _, targets = batch
    assert kd_loss(student, student, targets, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # so any alpha gives (1 - alpha) * CE
    ce = F.cross_entropy(student, targets).item()
    assert kd_loss(student, student, targets, 2.0, 0.25).item() == pytest.approx(0.75 * ce, abs=1e-12)


@pytest.mark.parametrize(
    ("temperature", "alpha", "name"), [(2.0, -0.1, "alpha"), (2.0, 1.5, "alpha"), (0.0, 0.5, "temperature")]
)
def test_kd_loss_validates(batch, temperature: float, alpha: float, name: str) -> None:
    student, teacher, targets = batch
    with pytest.raises(ValueError, match=name):
        kd_loss(student, teacher, targets, temperature, alpha)


def test_the_stacked_kd_loss_of_k_students_is_each_ones_kd_loss() -> None:
    from workflow.distill import stacked_kd_loss

    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(3, 8, 5, generator=g, dtype=torch.float64), torch.randn(3, 8, 5, generator=g,
                                                                                          dtype=torch.float64)
    targets = torch.randint(0, 5, (3, 8), generator=g)
    temperature, alpha = torch.tensor([1.0, 4.0, 2.5], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0],
                                                                                          dtype=torch.float64)
    got = stacked_kd_loss(student, teacher, targets, temperature, alpha)
    expected = torch.stack([kd_loss(student[k], teacher[k], targets[k], float(temperature[k]), float(alpha[k]))
                            for k in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
