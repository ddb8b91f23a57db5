"""How the training loop steps the models of a pack: one after another, or stacked as one.

:func:`workflow.train.train_pack` owns everything that is per run and the same
whichever way the models step (data order, snapshots, metrics, checkpoints). An
engine owns the models' weights and optimisers and takes one optimiser step of
every model at once:

* :class:`Sequential`: each model is its own module with its own optimiser and
  schedule, stepped in turn. A member computes exactly what it would alone, so on
  the CPU a pack's runs are bitwise the runs trained one per process.
* :class:`Stacked`: the trainable weights of all models in one (K, N) tensor, one
  forward and backward pass through ``torch.func.vmap``, one optimiser step of a
  handful of operations on that tensor (:class:`StackedOptimizer`). On a GPU, where
  one small model leaves the device idle between kernel launches, this is the fast
  way; its numbers agree with the sequential ones to float rounding.

Both keep each member's BatchNorm statistics, masks (held after every optimiser
step), loss function and element-wise optimiser settings (learning rate, weight
decay, momentum: :data:`~workflow.stages.ELEMENTWISE`), and both can record a
divergence as data (``record``): a member whose loss stops being finite stops
updating, weights and BatchNorm statistics alike, while the others train on. Both
take a training config's ``precision`` (bf16:
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

from workflow.distill import KDLoss, stacked_kd_loss
from workflow.prune_network import apply_masks
from workflow.stages import ELEMENTWISE

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, x_batch, y_batch) -> scalar loss``."""

PRECISIONS = ("fp32", "bf16")
"""``train.precision``: fp32, or bf16 autocast of the forward pass and loss."""

STACK_MODES = ("auto", "stacked", "sequential")
"""``execution.stack``: auto picks stacked on a GPU and sequential on a CPU (see :func:`resolve_stack`)."""


def resolve_stack(stack: str, device: torch.device, models: Sequence[nn.Module] | None = None) -> str:
    """The engine a pack uses on ``device``: ``auto`` is stacked on CUDA, sequential elsewhere,
    and sequential too for ``models`` that cannot stack (:func:`stackable`; e.g. EVA runs whose
    ranks differ by seed).

    Measured in ``benchmarks/bench_pack.py``: on a 2-core CPU stacking K small CNNs
    is no faster than stepping them in turn (the CPU is compute-bound either way),
    and sequential packs are bitwise the runs trained alone.
    """
    if stack not in STACK_MODES:
        raise ValueError(f"stack {stack!r} unknown; allowed: {', '.join(STACK_MODES)}")
    if stack == "auto":
        fits = models is None or stackable(models)
        return "stacked" if torch.device(device).type == "cuda" and fits else "sequential"
    return stack


def _layout(model: nn.Module) -> list[tuple[str, torch.Size, bool]]:
    return [(n, p.shape, p.requires_grad) for n, p in model.named_parameters()]


def stackable(models: Sequence[nn.Module]) -> bool:
    """Whether ``models`` share one architecture and one set of trainable parameters."""
    return all(_layout(m) == _layout(models[0]) for m in models[1:])


def optimizer(params: list[torch.Tensor], cfg: Any) -> torch.optim.Optimizer:
    """The optimiser of a :class:`~workflow.train.TrainConfig` over ``params``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: Any, total_steps: int) -> Callable[[int], float]:
    """The learning rate's factor after ``s`` optimiser steps, over ``total_steps`` steps."""
    if cfg.schedule == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    return lambda s: 1.0


def schedule(opt: torch.optim.Optimizer, cfg: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of a training config, over ``total_steps`` optimiser steps."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total_steps))


def same_but_elementwise(cfgs: Sequence[Any]) -> None:
    """Refuse members whose training settings differ in more than :data:`~workflow.stages.ELEMENTWISE`."""
    shared = {tuple((f, getattr(c, f)) for f in type(c).__dataclass_fields__ if f not in ELEMENTWISE) for c in cfgs}
    if len(shared) > 1:
        raise ValueError(f"the members of a pack may differ only in {', '.join(ELEMENTWISE)}; these differ in more: "
                         f"{sorted(map(str, shared))}")


class StackedOptimizer:
    """SGD, Adam or AdamW over weights stacked along a leading member dimension (K, N), with
    each member's own learning rate, weight decay and momentum: torch.optim's update rules
    (SGD without dampening; Adam and AdamW with betas 0.9, 0.999 and eps 1e-8), the
    settings held as (K, 1) tensors, so that a step is a handful of operations whatever K is.

    ``step(active)`` leaves a member where ``active`` (K,) is False exactly as it was.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, flat: torch.Tensor, cfgs: Sequence[Any], total_steps: int) -> None:
        same_but_elementwise(cfgs)
        self.flat, self.kind = flat, cfgs[0].optimizer
        self.base_lrs = [float(c.lr) for c in cfgs]

        def column(name: str) -> torch.Tensor:
            return torch.tensor([[float(getattr(c, name))] for c in cfgs], dtype=flat.dtype, device=flat.device)

        self.base_lr, self.weight_decay, self.momentum = (column(name) for name in ELEMENTWISE)
        self.factor = lr_factor(cfgs[0], total_steps)
        self.steps = 0
        names = ("momentum_buffer",) if self.kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.state = {name: torch.zeros_like(flat) for name in names}

    def lr(self, step: int, member: int) -> float:
        """The learning rate optimiser step ``step`` (counted from 1) of ``member`` trained with."""
        return self.base_lrs[member] * self.factor(step - 1)

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        p, g = self.flat, self.flat.grad
        old = p.clone() if active is not None else None
        lr = self.base_lr * self.factor(self.steps)
        self.steps += 1
        if self.kind == "sgd":
            buf = self.state["momentum_buffer"]
            buf.mul_(self.momentum).add_(g + self.weight_decay * p)
            p.sub_(lr * buf)
        else:
            if self.kind == "adamw":
                p.mul_(1 - lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
            b1, b2 = self.BETAS
            m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.EPS)
            p.addcdiv_(m * (lr / (1 - b1**self.steps)), denom, value=-1.0)
        if active is not None:
            p.copy_(torch.where(active[:, None], p, old))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = state["steps"]
        for name, saved in state["state"].items():
            self.state[name].copy_(saved)


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
    """Each model with its own optimiser and schedule, stepped one after another.

    With ``record``, a member whose loss is not finite skips its optimiser step, from then
    on, and gets back the BatchNorm statistics its forward pass changed (reading each loss
    on the host, which a CPU does at no cost).
    """

    name = "sequential"

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor] | None],
                 cfgs: Sequence[Any], total_steps: int, record: bool = False) -> None:
        same_but_elementwise(cfgs)
        self.models, self.masks, self.cfg, self.record = list(models), list(masks), cfgs[0], record
        self.forwards = [torch.compile(m) if self.cfg.compile else m for m in self.models]
        self.opts = [optimizer([p for p in m.parameters() if p.requires_grad], c) for m, c in zip(self.models, cfgs)]
        self.scheds = [schedule(opt, c, total_steps) for opt, c in zip(self.opts, cfgs)]
        self.active = [True] * len(self.models)

    def train_mode(self) -> None:
        for model in self.models:
            set_train_mode(model)

    def step(self, xbs: Sequence[torch.Tensor], ybs: Sequence[torch.Tensor],
             loss_fns: Sequence[LossFn]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One optimiser step of every model; their losses (K,) and logits, detached."""
        losses, logits_all = [], []
        for k, (model, forward, opt, sched, masks, loss_fn, xb, yb) in enumerate(zip(
            self.models, self.forwards, self.opts, self.scheds, self.masks, loss_fns, xbs, ybs
        )):
            saved = {n: b.clone() for n, b in model.named_buffers()} if self.record else None
            with autocast(self.cfg, xb):
                logits = forward(xb)
                loss = loss_fn(logits, xb, yb)
            opt.zero_grad(set_to_none=True)
            if saved is not None and not (self.active[k] and bool(torch.isfinite(loss))):
                self.active[k] = False  # diverged: no step from here on, its statistics as they were
                with torch.no_grad():
                    for n, b in model.named_buffers():
                        b.copy_(saved[n])
            else:
                loss.backward()
                opt.step()
                sched.step()
                if masks:
                    apply_masks(model, masks)
            losses.append(loss.detach())
            logits_all.append(logits.detach().float())  # bf16 under autocast
        return torch.stack(losses), logits_all

    def lr(self, step: int, member: int = 0) -> float:
        """The learning rate optimiser step ``step`` (counted from 1) of ``member`` trained with."""
        sched = self.scheds[member]
        return sched.base_lrs[0] * sched.lr_lambdas[0](step - 1)

    def sync(self) -> None:
        """Nothing to do: the members' modules are the weights."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.opts],
            "schedulers": [s.state_dict() for s in self.scheds],
            "active": list(self.active),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for model, opt, sched, m, o, s in zip(
            self.models, self.opts, self.scheds, state["models"], state["optimizers"], state["schedulers"]
        ):
            model.load_state_dict(m)
            opt.load_state_dict(o)
            sched.load_state_dict(s)
        self.active = list(state["active"])


class Stacked:
    """The models' trainable weights in one (K, N) tensor, stepped as one with ``vmap``.

    Every member must have the same architecture and the same trainable parameters.
    The forward pass sees each parameter as a (K, ...) view of that tensor; the
    optimiser (:class:`StackedOptimizer`) and the masks act on the whole tensor at once.
    With ``record``, which members are still finite is kept on the device (``active``),
    never read by the host in a step; a diverged member's weights and BatchNorm
    statistics stay as they were before its first non-finite loss. The members' own
    modules hold their weights only after :meth:`sync`.
    """

    name = "stacked"

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor] | None],
                 cfgs: Sequence[Any], total_steps: int, record: bool = False) -> None:
        self.models = list(models)
        first = self.models[0]
        layout = _layout(first)
        for k, model in enumerate(self.models[1:], 1):
            if _layout(model) != layout:
                raise ValueError(
                    f"stacked training needs one architecture and one set of trainable parameters; "
                    f"member {k} differs from member 0 (train this pack with stack: sequential)"
                )
        self.base = copy.deepcopy(first).to("meta")  # the structure; weights come from the stacks

        def stacked(name: str) -> torch.Tensor:
            return torch.stack([dict(m.named_parameters())[name].detach() for m in self.models])

        k = len(self.models)
        self.trainable = [(name, shape) for name, shape, grad in layout if grad]
        self.frozen = {name: stacked(name) for name, _, grad in layout if not grad}
        self.flat = torch.cat([stacked(name).reshape(k, -1) for name, _ in self.trainable], 1).requires_grad_()
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name] for m in self.models]) for name, _ in first.named_buffers()
        }
        # A member without a mask for a tensor keeps all of it.
        self.mask = None
        if any(masks):
            self.mask = torch.cat([
                torch.stack([
                    (m[name] if m and name in m else torch.ones(shape, dtype=torch.bool)).to(self.flat.device, torch.bool)
                    for m in masks
                ]).reshape(k, -1)
                for name, shape in self.trainable
            ], 1)
        self.opt = StackedOptimizer(self.flat, cfgs, total_steps)
        self.cfg = cfgs[0]
        self.active = torch.ones(k, dtype=torch.bool, device=self.flat.device) if record else None
        # Where each member started, for the distance its weights travel (frozen ones do not move).
        self.start = self.flat.detach().double().clone()
        frozen_sq = sum((t.double().pow(2).flatten(1).sum(1) for t in self.frozen.values()), torch.zeros_like(self.start[:, 0]))
        self.start_norm = (self.start.pow(2).sum(1) + frozen_sq).sqrt()

        def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        self.forward = torch.compile(vmap(forward)) if self.cfg.compile else vmap(forward)
        self.forward_shared = vmap(forward, in_dims=(0, 0, None))  # one input for every member
        self._teachers: tuple[Any, ...] | None = None  # distillation's teachers, stacked at the first step

    def params(self) -> dict[str, torch.Tensor]:
        """Every parameter as a (K, ...) tensor: views of the trainable (K, N) tensor, and the frozen ones."""
        params, start, k = dict(self.frozen), 0, len(self.models)
        for name, shape in self.trainable:
            size = shape.numel()
            params[name] = self.flat[:, start:start + size].view(k, *shape)
            start += size
        return params

    def train_mode(self) -> None:
        set_train_mode(self.base)

    def step(self, xbs: Sequence[torch.Tensor] | torch.Tensor, ybs: Sequence[torch.Tensor] | torch.Tensor,
             loss_fns: Sequence[LossFn]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of every model, on their batches (a list, or stacked (K, B, ...));
        their losses (K,) and logits (K, B, C), detached."""
        xb = xbs if isinstance(xbs, torch.Tensor) else torch.stack(list(xbs))
        yb = ybs if isinstance(ybs, torch.Tensor) else torch.stack(list(ybs))
        saved = {n: b.clone() for n, b in self.buffers.items()} if self.active is not None else None
        with autocast(self.cfg, xb):
            logits = self.forward(self.params(), self.buffers, xb)
            if all(fn is cross_entropy for fn in loss_fns):  # one kernel for every member's loss
                losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(len(xb), -1).mean(1)
            elif teachers := self.stacked_teachers(loss_fns):  # every teacher in one forward pass
                forward, params, buffers, temperature, alpha = teachers
                with torch.no_grad():
                    teacher_logits = forward(params, buffers, xb)
                losses = stacked_kd_loss(logits, teacher_logits, yb, temperature, alpha)
            else:
                losses = torch.stack([fn(logits[k], xb[k], yb[k]) for k, fn in enumerate(loss_fns)])
        self.flat.grad = None
        losses.sum().backward()  # each member's gradient is that of its own loss
        if self.active is not None:
            self.active &= torch.isfinite(losses.detach())
        self.opt.step(self.active)
        with torch.no_grad():
            if saved is not None:
                for name, b in self.buffers.items():
                    b.copy_(torch.where(self.active.view(-1, *[1] * (b.dim() - 1)), b, saved[name]))
            if self.mask is not None:
                self.flat.masked_fill_(~self.mask, 0.0)
        return losses.detach(), logits.detach().float()

    def lr(self, step: int, member: int = 0) -> float:
        return self.opt.lr(step, member)

    def stacked_teachers(self, loss_fns: Sequence[LossFn]) -> tuple[Any, ...] | None:
        """When every member distils (:class:`~workflow.distill.KDLoss`) from a teacher of one
        architecture: a vmapped forward pass of the teachers, their stacked weights and
        buffers, and the temperatures and alphas (K,). Built once; None otherwise."""
        if self._teachers is None:
            self._teachers = ()
            if all(isinstance(fn, KDLoss) for fn in loss_fns):
                teachers = [fn.teacher for fn in loss_fns]  # type: ignore[attr-defined]
                layout = [(n, p.shape) for n, p in teachers[0].named_parameters()]
                if all([(n, p.shape) for n, p in t.named_parameters()] == layout for t in teachers):
                    base = copy.deepcopy(teachers[0]).to("meta").eval()

                    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                                x: torch.Tensor) -> torch.Tensor:
                        return functional_call(base, (params, buffers), (x,))

                    def stacked(tensors: str) -> dict[str, torch.Tensor]:
                        named = [dict(getattr(t, tensors)()) for t in teachers]
                        return {n: torch.stack([d[n].detach() for d in named]) for n in named[0]}

                    device = self.flat.device
                    self._teachers = (vmap(forward), stacked("named_parameters"), stacked("named_buffers"),
                                      torch.tensor([fn.temperature for fn in loss_fns], device=device),  # type: ignore[attr-defined]
                                      torch.tensor([fn.alpha for fn in loss_fns], device=device))  # type: ignore[attr-defined]
        return self._teachers or None

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None,
                 examples: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's mean cross-entropy and accuracy (K,), in eval mode, in float64 on the
        device: on ``x[rows[k]]`` for member k (``rows`` (K, N)), or on all of ``x``. One
        vmapped forward pass per chunk of about ``examples`` inputs, whatever K is."""
        k = len(self.models)
        n = len(y) if rows is None else rows.shape[1]
        chunk = max(64, examples // k)
        loss = torch.zeros(k, dtype=torch.float64, device=self.flat.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.flat.device)
        training = self.base.training
        self.base.eval()
        params = self.params()
        for a in range(0, n, chunk):
            if rows is None:
                logits, yb = self.forward_shared(params, self.buffers, x[a:a + chunk]), y[a:a + chunk].expand(k, -1)
            else:
                r = rows[:, a:a + chunk]
                logits, yb = self.forward(params, self.buffers, x[r]), y[r]
            loss += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).double().sum(1)
            correct += (logits.argmax(-1) == yb).sum(1)
        if training:
            set_train_mode(self.base)
        return loss / n, correct.double() / n

    @torch.no_grad()
    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """How far each member's weights are from where it started (K,), and that over its
        starting norm (NaN for a start of norm 0), in float64 on the device."""
        distance = (self.flat.detach().double() - self.start).pow(2).sum(1).sqrt()
        return distance, torch.where(self.start_norm > 0, distance / self.start_norm, torch.nan)

    def sync(self) -> None:
        """Copy each member's slice of the stacks into its own module."""
        params = self.params()
        with torch.no_grad():
            for k, model in enumerate(self.models):
                for name, p in model.named_parameters():
                    p.copy_(params[name][k])
                for name, b in model.named_buffers():
                    b.copy_(self.buffers[name][k])

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.flat.detach(), "buffers": self.buffers, "optimizer": self.opt.state_dict(),
                "active": self.active, "start": self.start}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.flat.copy_(state["flat"])
            for name, b in self.buffers.items():
                b.copy_(state["buffers"][name])
            if self.active is not None:
                self.active.copy_(state["active"])
            self.start.copy_(state["start"])
        self.opt.load_state_dict(state["optimizer"])
        self.sync()


ENGINES = {"sequential": Sequential, "stacked": Stacked}
