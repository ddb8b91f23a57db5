"""Knowledge distillation (Hinton et al.): the student's loss against a teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
