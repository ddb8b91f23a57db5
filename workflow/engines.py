"""How the training loop steps the models of a pack: one after another, or stacked as one.

:func:`workflow.train.train_pack` owns everything that is per run and the same
whichever way the models step (data order, snapshots, metrics, checkpoints). An
engine owns the models' weights and optimisers and takes one optimiser step of
every model at once:

* :class:`Sequential`: each model is its own module with its own optimiser and
  schedule, stepped in turn. A member computes exactly what it would alone, so on
  the CPU a pack's runs are bitwise the runs trained one per process.
* :class:`Stacked`: the weights of all models stacked along a leading dimension,
  one forward and backward pass through ``torch.func.vmap``, one optimiser. On a
  GPU, where one small model leaves the device idle between kernel launches, this
  is the fast way; its numbers agree with the sequential ones to float rounding.

Both keep each member's BatchNorm statistics, masks (held after every optimiser
step) and loss function, and both take a training config's ``precision`` (bf16:
the forward pass and loss under autocast, for GPUs with bf16 tensor cores; weights,
optimiser state and metrics stay float32) and ``compile`` (``torch.compile`` of the
forward pass, which pays off for long runs of large models on a GPU).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from workflow.prune_network import apply_masks

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, x_batch, y_batch) -> scalar loss``."""

PRECISIONS = ("fp32", "bf16")
"""``train.precision``: fp32, or bf16 autocast of the forward pass and loss."""

STACK_MODES = ("auto", "stacked", "sequential")
"""``execution.stack``: auto picks stacked on a GPU and sequential on a CPU (see :func:`resolve_stack`)."""


def resolve_stack(stack: str, device: torch.device) -> str:
    """The engine a pack uses on ``device``: ``auto`` is stacked on CUDA, sequential elsewhere.

    Measured in ``benchmarks/bench_pack.py``: on a 2-core CPU stacking K small CNNs
    is no faster than stepping them in turn (the CPU is compute-bound either way),
    and sequential packs are bitwise the runs trained alone.
    """
    if stack not in STACK_MODES:
        raise ValueError(f"stack {stack!r} unknown; allowed: {', '.join(STACK_MODES)}")
    if stack == "auto":
        return "stacked" if torch.device(device).type == "cuda" else "sequential"
    return stack


def optimizer(params: list[torch.Tensor], cfg: Any) -> torch.optim.Optimizer:
    """The optimiser of a :class:`~workflow.train.TrainConfig` over ``params``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def schedule(opt: torch.optim.Optimizer, cfg: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of a training config, over ``total_steps`` optimiser steps."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except frozen BatchNorm layers keep their statistics.

    A linear probe freezes the body; its BatchNorm statistics are part of the
    frozen features and must not drift with the target data. A BatchNorm is frozen
    when it has affine parameters and none of them trains (one without affine
    parameters follows the model).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def autocast(cfg: Any, x: torch.Tensor) -> torch.autocast:
    """bf16 autocast on ``x``'s device when ``cfg.precision`` is bf16; a no-op for fp32."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def cross_entropy(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of the logits against the labels."""
    return F.cross_entropy(logits, yb)


class Sequential:
    """Each model with its own optimiser and schedule, stepped one after another."""

    name = "sequential"

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor] | None],
                 cfg: Any, total_steps: int) -> None:
        self.models, self.masks, self.cfg = list(models), list(masks), cfg
        self.forwards = [torch.compile(m) if cfg.compile else m for m in self.models]
        self.opts = [optimizer([p for p in m.parameters() if p.requires_grad], cfg) for m in self.models]
        self.scheds = [schedule(opt, cfg, total_steps) for opt in self.opts]

    def train_mode(self) -> None:
        for model in self.models:
            set_train_mode(model)

    def step(self, xbs: Sequence[torch.Tensor], ybs: Sequence[torch.Tensor],
             loss_fns: Sequence[LossFn]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One optimiser step of every model; their losses (K,) and logits, detached."""
        losses, logits_all = [], []
        for model, forward, opt, sched, masks, loss_fn, xb, yb in zip(
            self.models, self.forwards, self.opts, self.scheds, self.masks, loss_fns, xbs, ybs
        ):
            with autocast(self.cfg, xb):
                logits = forward(xb)
                loss = loss_fn(logits, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if masks:
                apply_masks(model, masks)
            losses.append(loss.detach())
            logits_all.append(logits.detach().float())  # bf16 under autocast
        return torch.stack(losses), logits_all

    def lr(self, step: int) -> float:
        """The learning rate optimiser step ``step`` (counted from 1) trained with."""
        sched = self.scheds[0]
        return sched.base_lrs[0] * sched.lr_lambdas[0](step - 1)

    def sync(self) -> None:
        """Nothing to do: the members' modules are the weights."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.opts],
            "schedulers": [s.state_dict() for s in self.scheds],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for model, opt, sched, m, o, s in zip(
            self.models, self.opts, self.scheds, state["models"], state["optimizers"], state["schedulers"]
        ):
            model.load_state_dict(m)
            opt.load_state_dict(o)
            sched.load_state_dict(s)


class Stacked:
    """The models' weights stacked along a leading dimension, stepped as one with ``vmap``.

    Every member must have the same architecture and the same trainable parameters.
    The members' own modules hold their weights only after :meth:`sync`.
    """

    name = "stacked"

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor] | None],
                 cfg: Any, total_steps: int) -> None:
        self.models = list(models)
        first = self.models[0]
        layout = [(n, p.shape, p.requires_grad) for n, p in first.named_parameters()]
        for k, model in enumerate(self.models[1:], 1):
            if [(n, p.shape, p.requires_grad) for n, p in model.named_parameters()] != layout:
                raise ValueError(
                    f"stacked training needs one architecture and one set of trainable parameters; "
                    f"member {k} differs from member 0 (train this pack with stack: sequential)"
                )
        self.base = copy.deepcopy(first).to("meta")  # the structure; weights come from the stacks
        self.params = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in self.models]).requires_grad_(grad)
            for name, _, grad in layout
        }
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name] for m in self.models]) for name, _ in first.named_buffers()
        }
        # A member without a mask for a tensor keeps all of it.
        names = sorted({name for m in masks if m for name in m})
        self.masks = {
            name: torch.stack([
                (m[name] if m and name in m else torch.ones_like(self.params[name][0], dtype=torch.bool))
                .to(self.params[name].device, torch.bool)
                for m in masks
            ])
            for name in names
        }
        self.opt = optimizer([p for p in self.params.values() if p.requires_grad], cfg)
        self.sched = schedule(self.opt, cfg, total_steps)
        self.cfg = cfg

        def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        self.forward = torch.compile(vmap(forward)) if cfg.compile else vmap(forward)

    def train_mode(self) -> None:
        set_train_mode(self.base)

    def step(self, xbs: Sequence[torch.Tensor], ybs: Sequence[torch.Tensor],
             loss_fns: Sequence[LossFn]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of every model; their losses (K,) and logits (K, B, C), detached."""
        xb, yb = torch.stack(list(xbs)), torch.stack(list(ybs))
        with autocast(self.cfg, xb):
            logits = self.forward(self.params, self.buffers, xb)
            if all(fn is cross_entropy for fn in loss_fns):  # one kernel for every member's loss
                losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(len(xb), -1).mean(1)
            else:
                losses = torch.stack([fn(logits[k], xbs[k], ybs[k]) for k, fn in enumerate(loss_fns)])
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # each member's gradient is that of its own loss
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name].masked_fill_(~mask, 0.0)
        return losses.detach(), logits.detach().float()

    def lr(self, step: int) -> float:
        return self.sched.base_lrs[0] * self.sched.lr_lambdas[0](step - 1)

    def sync(self) -> None:
        """Copy each member's slice of the stacks into its own module."""
        with torch.no_grad():
            for k, model in enumerate(self.models):
                for name, p in model.named_parameters():
                    p.copy_(self.params[name][k])
                for name, b in model.named_buffers():
                    b.copy_(self.buffers[name][k])

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {n: p.detach() for n, p in self.params.items()}, "buffers": self.buffers,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
            for name, b in self.buffers.items():
                b.copy_(state["buffers"][name])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.sync()


ENGINES = {"sequential": Sequential, "stacked": Stacked}
