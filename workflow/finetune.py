"""Fine-tuning methods: how a model is prepared from its parent before training.

Each method takes the freshly built (seeded) model and the parent's weights, and
leaves the model ready to train: weights loaded, and ``requires_grad`` set on what
the method trains. The head is always new: it is a classifier for the target
task, whatever the source task was.

``linear_probe``, ``bn_only`` and ``bn_head`` also take no parent: they then train
part of a randomly initialised network, its random features ("Training BatchNorm and
Only BatchNorm"). Such a random body's BatchNorm statistics are first set to those of
the target's training inputs (:func:`calibrate_batchnorm`), so that a probe, whose
BatchNorm is frozen, reads the same normalised random features the BatchNorm-only
network starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from workflow.lora import add_eva, add_lora
from workflow.registry import Registry


@dataclass
class FinetuneSetup:
    """What a method may need besides the parent: its settings and the target data."""

    settings: Mapping[str, Any] = field(default_factory=dict)  # e.g. lora: rank, alpha, eva_batches, eva_rho
    x_train: torch.Tensor | None = None
    batch_size: int = 100
    seed: int = 0


Prepare = Callable[[nn.Module, Mapping[str, torch.Tensor] | None, FinetuneSetup], None]
FINETUNE: Registry[Prepare] = Registry("finetune method")


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Set every BatchNorm's running statistics to the mean and variance of its inputs over
    ``x`` (one pass in train mode, in order, averaged over the minibatches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the minibatches
        for xb in x.split(batch_size):
            model(xb)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def _start(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None) -> None:
    """The parent's body (:func:`_load_body`), or without a parent the model's own random
    body with BatchNorm statistics calibrated on the target's training inputs."""
    if parent is not None:
        _load_body(model, parent)
        return
    if setup is None or setup.x_train is None:
        raise ValueError("a random-feature method needs the target training inputs (its BatchNorm statistics)")
    calibrate_batchnorm(model, setup.x_train, setup.batch_size)


def _train_only(model: nn.Module, batchnorm: bool, head: bool) -> None:
    """Freeze every parameter but the affine BatchNorm ones (``batchnorm``) and the head's."""
    model.requires_grad_(False)
    if batchnorm:
        affine = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        if not affine:
            raise ValueError("training BatchNorm needs a model with affine BatchNorm layers")
        for m in affine:
            m.requires_grad_(True)
    if head:
        for name, p in model.named_parameters():
            if name.startswith("head."):
                p.requires_grad_(True)


def _load_body(model: nn.Module, parent: Mapping[str, torch.Tensor] | None) -> None:
    """Load every parent weight except the head's, which keeps its fresh initialisation."""
    if parent is None:
        raise ValueError("this fine-tuning method needs a parent model")
    body = {k: v for k, v in parent.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"parent does not match the model: missing {missing}, unexpected {unexpected}")


@FINETUNE.register("full")
def full(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """Start from the parent's weights, train everything."""
    _load_body(model, parent)


@FINETUNE.register("linear_probe")
def linear_probe(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """Start from the parent's weights (or random ones), train only the head (BatchNorm
    statistics frozen too)."""
    _start(model, parent, setup)
    _train_only(model, batchnorm=False, head=True)


@FINETUNE.register("bn_only")
def bn_only(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """Start from the parent's weights (or random ones), train only the BatchNorm affine
    parameters.

    As in "Training BatchNorm and Only BatchNorm", every other weight stays as it
    is, the new head included: it keeps its random initialisation.
    """
    _start(model, parent, setup)
    _train_only(model, batchnorm=True, head=False)


@FINETUNE.register("bn_head")
def bn_head(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """As :func:`bn_only`, with the head trained too (the paper's other variant)."""
    _start(model, parent, setup)
    _train_only(model, batchnorm=True, head=True)


def _lora(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None, init: str) -> None:
    if setup is None or "lora" not in setup.settings:
        raise ValueError(f"{init} fine-tuning needs its settings (finetune.lora: rank, alpha)")
    lora = setup.settings["lora"]
    _load_body(model, parent)
    if init == "random":
        add_lora(model, lora["rank"], lora["alpha"], skip=("head",))
        return
    if setup.x_train is None:
        raise ValueError("EVA needs the target training inputs")
    generator = torch.Generator().manual_seed(setup.seed)
    order = torch.randperm(len(setup.x_train), generator=generator)[: lora["eva_batches"] * setup.batch_size]
    batches = setup.x_train[order.to(setup.x_train.device)].split(setup.batch_size)
    add_eva(model, lora["rank"], lora["alpha"], batches, rho=lora["eva_rho"], skip=("head",))


@FINETUNE.register("lora")
def lora(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """Start from the parent's weights; train low-rank updates of every linear and
    convolutional layer (randomly initialised, see :mod:`workflow.lora`) and the head."""
    _lora(model, parent, setup, "random")


@FINETUNE.register("eva")
def eva(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """LoRA whose down-projections start at the top right-singular vectors of each
    layer's input activations on the target data, with ranks redistributed across
    layers by explained variance (EVA, see :mod:`workflow.lora`)."""
    _lora(model, parent, setup, "eva")


@FINETUNE.register("stats")
def stats(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """Transfer only the parent's per-tensor statistics, then train everything.

    As in "Insights into Pre-training via Simpler Synthetic Tasks": each parameter
    tensor of the body is drawn afresh with the mean and standard deviation of the
    parent's (standardised noise, so both match exactly); the head is new and
    BatchNorm statistics start afresh.
    """
    if parent is None:
        raise ValueError("stats fine-tuning needs a parent model")
    generator = torch.Generator().manual_seed(setup.seed if setup else 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("head."):
                continue
            source = parent[name].to(torch.float64)
            if source.numel() < 2:
                p.copy_(source)
                continue
            noise = torch.randn(source.shape, generator=generator, dtype=torch.float64)
            noise = (noise - noise.mean()) / noise.std()
            p.copy_(source.mean() + source.std() * noise)


@FINETUNE.register("scratch")
def scratch(model: nn.Module, parent: Mapping[str, torch.Tensor] | None, setup: FinetuneSetup | None = None) -> None:
    """The baseline: the same architecture trained from its random initialisation."""
    if parent is not None:
        raise ValueError("scratch takes no parent model")
