"""Fine-tuning methods: how a model is prepared from its parent before training.

Each method takes the freshly built (seeded) model and the parent's weights, and
leaves the model ready to train: weights loaded, and ``requires_grad`` set on what
the method trains. The head is always new: it is a classifier for the target
task, whatever the source task was.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from workflow.registry import Registry

Prepare = Callable[[nn.Module, Mapping[str, torch.Tensor] | None], None]
FINETUNE: Registry[Prepare] = Registry("finetune method")


def _load_body(model: nn.Module, parent: Mapping[str, torch.Tensor] | None) -> None:
    """Load every parent weight except the head's, which keeps its fresh initialisation."""
    if parent is None:
        raise ValueError("this fine-tuning method needs a parent model")
    body = {k: v for k, v in parent.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"parent does not match the model: missing {missing}, unexpected {unexpected}")


@FINETUNE.register("full")
def full(model: nn.Module, parent: Mapping[str, torch.Tensor] | None) -> None:
    """Start from the parent's weights, train everything."""
    _load_body(model, parent)


@FINETUNE.register("linear_probe")
def linear_probe(model: nn.Module, parent: Mapping[str, torch.Tensor] | None) -> None:
    """Start from the parent's weights, train only the head (BatchNorm statistics frozen too)."""
    _load_body(model, parent)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))


@FINETUNE.register("scratch")
def scratch(model: nn.Module, parent: Mapping[str, torch.Tensor] | None) -> None:
    """The baseline: the same architecture trained from its random initialisation."""
    if parent is not None:
        raise ValueError("scratch takes no parent model")
