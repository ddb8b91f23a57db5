"""Knowledge distillation (Hinton et al.): the student's loss against a teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``(1 - alpha) * CE(targets, s) + alpha * T^2 * KL(p_T || p_S)``, ``p = softmax(logits / T)``.

    CE is the batch mean, KL the batch sum over examples divided by the batch size
    ("batchmean"). The T^2 keeps the soft-target gradients' scale independent of T.
    The teacher's logits are detached: no gradient reaches the teacher.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must satisfy 0 <= alpha <= 1, got {alpha!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: "
            f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    ce = F.cross_entropy(student_logits, targets)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * temperature**2 * kl


@dataclass(eq=False)
class KDLoss:
    """A student's training loss: :func:`kd_loss` against a frozen ``teacher``'s logits on the
    same (augmented) batch. A stacked pack computes the losses of all its students at once
    (:func:`stacked_kd_loss`), every teacher in one vmapped forward pass."""

    teacher: nn.Module  # frozen, in eval mode
    temperature: float
    alpha: float

    def __call__(self, logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(xb)
        return kd_loss(logits, teacher_logits, yb, self.temperature, self.alpha)


def stacked_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                    temperature: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """:func:`kd_loss` of K students at once: logits (K, B, C), targets (K, B), ``temperature``
    and ``alpha`` (K,); the K losses (K,)."""
    k, b, c = student_logits.shape
    t = temperature.view(k, 1, 1)
    ce = F.cross_entropy(student_logits.reshape(k * b, c), targets.reshape(-1), reduction="none").view(k, b).mean(1)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum((1, 2)) / b
    return (1 - alpha) * ce + alpha * temperature**2 * kl
