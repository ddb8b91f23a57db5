"""What every job needs around a model, whatever it computes: its device and threads,
seeding, eval mode, and the test of a classifier.

Shared by training, scoring and the analyses, so that an analysis need not import
the training loop.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def job_device(device: str = "auto", threads: int | None = None) -> torch.device:
    """The device of a job (see :func:`resolve_device`), with torch's thread count set first when given."""
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy, e.g. before building a model."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own mode.

    Modes are saved per module because a model may hold a mix (e.g. a frozen,
    eval-mode backbone under a training head).
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss = correct = 0.0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss / len(y), correct / len(y)
