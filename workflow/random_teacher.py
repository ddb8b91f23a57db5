"""Random teachers ("Random Teachers are Good Teachers", Sarnthein et al.): a student
distilled from a frozen, untrained teacher on inputs alone, no label anywhere, then read
by a linear probe.

* The teacher is the seed's random initialisation, its BatchNorm statistics set to those
  of the training inputs (:func:`workflow.finetune.calibrate_batchnorm`), frozen, in eval
  mode.
* The student starts at the teacher, or near it: ``theta_S = theta_T + noise * theta_0``
  for every weight and bias of a convolution or linear layer, ``theta_0`` an independent
  initialisation (so the noise has the scale of an initialisation); BatchNorm parameters
  and statistics are the teacher's. At ``noise = 0`` the student is the teacher exactly.
* The loss is DINO's without augmentations, as the paper's: the cross-entropy from the
  teacher's centred, sharpened distribution ``softmax((t - c) / tau_t)`` to the student's
  ``softmax(s / tau_s)``, with ``tau_t < tau_s``. The centre ``c`` is the mean of the
  teacher's outputs over the training inputs (DINO's running mean, exact here: the
  teacher never changes). The model's head is the projection both distributions are read
  from (this pipeline's architectures end in a head of one output per class).
* A linear probe reads the head's inputs (the penultimate features): a ridge classifier
  on standardised features of the training set, scored on validation and test, for the
  student and for its teacher alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workflow.analysis.relative import fit_ridge_head, head_inputs, ridge_accuracy


def random_teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                        teacher_temperature: float, student_temperature: float) -> torch.Tensor:
    """``-sum_c softmax((t - center) / tau_t)_c * log softmax(s / tau_s)_c``, the batch mean."""
    targets = F.softmax((teacher_logits.detach() - center) / teacher_temperature, dim=-1)
    return -(targets * F.log_softmax(student_logits / student_temperature, dim=-1)).sum(-1).mean()


@dataclass(eq=False)
class RandomTeacherLoss:
    """A student's training loss against a frozen ``teacher``; the labels are never read."""

    teacher: nn.Module  # frozen, in eval mode
    center: torch.Tensor  # (outputs,)
    teacher_temperature: float
    student_temperature: float

    def __call__(self, logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(xb)
        return random_teacher_loss(logits, teacher_logits, self.center, self.teacher_temperature,
                                   self.student_temperature)


@torch.no_grad()
def outputs_mean(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The mean of ``model``'s outputs over ``x`` (the model as it is, e.g. in eval mode)."""
    return torch.cat([model(xb) for xb in x.split(batch_size)]).mean(0)


@torch.no_grad()
def start_near(student: nn.Module, teacher: nn.Module, fresh: nn.Module, noise: float) -> None:
    """Set ``student`` to ``teacher`` (parameters and buffers), then add ``noise`` times
    ``fresh``'s weights and biases to every convolution and linear layer's."""
    student.load_state_dict(teacher.state_dict())
    if noise == 0:
        return
    fresh_params = dict(fresh.named_parameters())
    for name, module in student.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            for pname, p in module.named_parameters(recurse=False):
                p.add_(noise * fresh_params[f"{name}.{pname}" if name else pname])


def _standardised(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0  # a dead feature stays 0
    return [(a - mean) / std for a in (train, *others)]


def probe_accuracy(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                   evaluated: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                   ridge: float = 1e-3) -> dict[str, float]:
    """A linear probe of ``model``'s penultimate features: a ridge classifier fitted on the
    standardised features of the training set; its accuracy on each of ``evaluated``
    (name -> (x, y)) and on the training set itself (``train``)."""
    names = list(evaluated)
    feats = _standardised(head_inputs(model, x_train), *(head_inputs(model, evaluated[n][0]) for n in names))
    head = fit_ridge_head(feats[0], y_train, num_classes, ridge)
    labels = [y_train, *(evaluated[n][1] for n in names)]
    return {name: ridge_accuracy(head, f, y) for name, f, y in zip(["train", *names], feats, labels)}
