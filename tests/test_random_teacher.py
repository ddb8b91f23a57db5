"""Tests for random teachers: a student at zero noise starts exactly at its teacher, noise
moves only the conv and linear weights by noise times an independent initialisation, the
loss never reads a label, and its closed forms; the linear probe on separable features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from workflow.random_teacher import RandomTeacherLoss, probe_accuracy, random_teacher_loss
from workflow.stages import TrainingSetup
from workflow.stages.random_teacher import NOISE_SEED, RandomTeacher
from workflow.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MODEL = {"name": "cnn1d", "channels": 8}


def _spec(noise: float, seed: int = 0) -> dict:
    return {"model": MODEL, "noise": noise, "noise_seed": NOISE_SEED + seed, "teacher_temperature": 0.04,
            "student_temperature": 0.1, "probe_ridge": 1e-3}


def _prepared(task, noise: float, seed: int = 0) -> TrainingSetup:
    from workflow.models import seeded_model

    model = seeded_model(MODEL, task.in_length, task.num_classes, seed)
    setup = TrainingSetup(model, task, TrainConfig(epochs=2, batch_size=50, lr=0.01), seed, torch.device("cpu"))
    RandomTeacher().prepare(_spec(noise, seed), setup, {})
    return setup


def test_at_zero_noise_the_student_starts_exactly_at_its_teacher(task) -> None:
    setup = _prepared(task, 0.0)
    teacher = setup.loss_fn.teacher
    student, frozen = setup.model.state_dict(), teacher.state_dict()
    assert student.keys() == frozen.keys()
    assert all(torch.equal(student[k], frozen[k]) for k in student)  # weights and BatchNorm statistics
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    setup.model.eval()
    assert torch.equal(setup.model(task.x_test), teacher(task.x_test))
    # the teacher is the seed's own initialisation (its BatchNorm statistics calibrated on the inputs)
    from workflow.models import seeded_model

    init = dict(seeded_model(MODEL, task.in_length, task.num_classes, 0).named_parameters())
    assert all(torch.equal(p, init[n]) for n, p in teacher.named_parameters())


def test_noise_moves_conv_and_linear_weights_by_noise_times_an_independent_initialisation(task) -> None:
    from workflow.models import seeded_model

    setup = _prepared(task, 0.3)
    teacher = dict(setup.loss_fn.teacher.named_parameters())
    fresh = dict(seeded_model(MODEL, task.in_length, task.num_classes, NOISE_SEED).named_parameters())
    layers = {n for n, m in setup.model.named_modules() if isinstance(m, (nn.Conv1d, nn.Linear))}
    for name, p in setup.model.named_parameters():
        if name.rpartition(".")[0] in layers:
            torch.testing.assert_close(p, teacher[name] + 0.3 * fresh[name], rtol=0, atol=1e-6)
            assert not torch.equal(p, teacher[name])
        else:  # BatchNorm's affine parameters are the teacher's
            assert torch.equal(p, teacher[name]), name


def test_the_student_never_reads_a_label(task) -> None:
    """Training with the labels permuted gives the same student, bit for bit."""
    shuffled = dataclasses.replace(task, y_train=task.y_train[torch.randperm(len(task.y_train))])
    students = []
    for data in (task, shuffled):
        setup = _prepared(data, 0.0)
        train(setup.model, data, setup.cfg, seed=0, loss_fn=setup.loss_fn, progress=False)
        students.append(setup.model.state_dict())
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])
    assert any(not torch.equal(students[0][k], _prepared(task, 0.0).model.state_dict()[k]) for k in students[0])


def test_the_loss_is_the_cross_entropy_from_the_sharpened_centred_teacher() -> None:
    torch.manual_seed(0)
    s, t, c = torch.randn(6, 4), torch.randn(6, 4), torch.randn(4)
    p = torch.softmax((t - c) / 0.04, 1)
    expected = -(p * torch.log_softmax(s / 0.1, 1)).sum(1).mean()
    torch.testing.assert_close(random_teacher_loss(s, t, c, 0.04, 0.1), expected)
    # equal temperatures, no centre, student = teacher: the cross-entropy is at its minimum (zero gradient)
    s = t.clone().requires_grad_()
    random_teacher_loss(s, t, torch.zeros(4), 0.1, 0.1).backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), rtol=0, atol=1e-6)
    # a sharper teacher pulls even a student that sits at it
    s = t.clone().requires_grad_()
    random_teacher_loss(s, t, torch.zeros(4), 0.04, 0.1).backward()
    assert s.grad.abs().max() > 1e-2


def test_the_loss_ignores_the_labels(task) -> None:
    setup = _prepared(task, 0.0)
    loss = setup.loss_fn
    assert isinstance(loss, RandomTeacherLoss)
    x = task.x_train[:10]
    logits = setup.model(x)
    assert torch.equal(loss(logits, x, task.y_train[:10]), loss(logits, x, torch.zeros(10, dtype=torch.long)))


def test_the_probe_separates_linearly_separable_features() -> None:
    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 5.0], [5.0, 0.0], [-5.0, -5.0]])
    y = torch.arange(3).repeat(40)
    x = centres[y] + 0.3 * torch.randn(len(y), 2, generator=generator)
    acc = probe_accuracy(Features(), x[:90], y[:90], {"test": (x[90:], y[90:])}, 3)
    assert acc == {"train": 1.0, "test": 1.0}
