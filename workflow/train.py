"""The one training loop, used by every stage that trains a model.

Stages differ only in what they hand to :func:`train`: the trainable parameters
(``requires_grad``), the loss (cross-entropy, or distillation), masks to hold at
zero, and hooks to read the model during training. Runs are seeded: on the CPU
the same seed gives bit-identical weights and metrics.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from workflow.augment import AUGMENTATIONS, compose
from workflow.checkpoint import Checkpointing, Preempted, rng_states, set_rng_states, stop_requests, stopped_by
from workflow.data import TaskData
from workflow.prune_network import apply_masks
from workflow.runtime import evaluate

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, x_batch, y_batch) -> scalar loss``."""

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``on_batch(indices, logits, y_batch)``, called after every forward pass in training.
A hook that keeps state across batches must have ``state_dict()`` and
``load_state_dict(state)`` to be used with checkpoints (see :func:`train`)."""

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


class DivergenceError(RuntimeError):
    """The training loss stopped being finite."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: tuple[str, ...] = ()  # names in workflow.augment.AUGMENTATIONS, applied in order

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", tuple(self.augment))  # a config gives a list
        for name in self.augment:
            AUGMENTATIONS[name]  # refuses an unknown name, listing the allowed ones
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; allowed: {', '.join(SCHEDULES)}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {asdict(self)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What a run leaves besides the trained model itself."""

    history: xr.Dataset
    snapshots: dict[int, dict[str, torch.Tensor]]
    steps: int
    resumed_step: int | None = None  # the step of the checkpoint this run went on from
    # What stopped the run before it was resumed: the signal it saved on (SIGTERM,
    # SIGUSR1), or "kill" when it died without warning and went on from a periodic checkpoint.
    stopped_by: str | None = None


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _set_train_mode(model: nn.Module) -> None:
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


class EpochSampler(Protocol):
    """Chooses the training examples of each epoch, in order."""

    size: int  # examples per epoch

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of the next epoch's examples (a LongTensor on the CPU)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What the sampler carries from epoch to epoch (for checkpoints); draws come from the generator."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class Shuffle:
    """Every example once per epoch, in a fresh random order: the usual epoch."""

    def __init__(self, n: int) -> None:
        self.n = self.size = n

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    # A batch of one breaks BatchNorm in train mode; fold it into the previous one.
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The Euclidean norm of several tensors taken as one vector, in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


HISTORY = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_distance", "relative_weight_distance")
"""The per-epoch metrics of every run."""


def history_dataset(history: Mapping[str, Sequence[float]]) -> xr.Dataset:
    """Per-epoch metrics as a Dataset over ``epoch`` (0 = before training)."""
    n = len(next(iter(history.values())))
    return xr.Dataset(
        {k: ("epoch", np.asarray(v, dtype=np.float64)) for k, v in history.items()},
        coords={"epoch": np.arange(n)},
    )


class TrainingState:
    """Everything that determines the rest of a run, with ``state_dict`` / ``load_state_dict``.

    Progress is counted as ``epoch`` whole epochs done, then ``done`` batches of the next
    epoch's ``order``; ``step`` counts optimiser steps. The loss is checked for being
    finite on the device, without waiting for it: :meth:`check_finite` reads the
    first bad step at the end of each epoch and before a checkpoint is saved.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TaskData,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LambdaLR,
        sampler: EpochSampler,
        generator: torch.Generator,
        on_batch: BatchHook | None,
        snapshot_steps: Sequence[int],
    ) -> None:
        self.model, self.data, self.opt, self.sched = model, data, opt, sched
        self.sampler, self.generator, self.on_batch = sampler, generator, on_batch
        self.wanted = set(snapshot_steps)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY}
        # Lazy vs rich training: how far the weights travel from where this run started.
        self.start = [p.detach().to(torch.float64, copy=True) for p in model.parameters()]
        self.start_norm = _norm(self.start)
        self.epoch, self.step, self.order, self.done = 0, 0, None, 0
        self._clear_bad()

    def _clear_bad(self) -> None:
        device = next(self.model.parameters()).device
        self._bad_step = torch.zeros((), dtype=torch.long, device=device)  # 0: every loss was finite
        self._bad_loss = torch.zeros((), device=device)

    def watch(self, loss: torch.Tensor) -> None:
        """Note, on the device, whether the loss of step ``self.step + 1`` is finite."""
        loss = loss.detach()
        first = (self._bad_step == 0) & ~torch.isfinite(loss)
        self._bad_step = torch.where(first, self.step + 1, self._bad_step)
        self._bad_loss = torch.where(first, loss.to(self._bad_loss.dtype), self._bad_loss)

    def check_finite(self, desc: str, epoch: int) -> None:
        """Raise :class:`DivergenceError` naming the first step of ``epoch`` whose loss was not finite."""
        bad = int(self._bad_step)  # the one wait for the device in an epoch
        if bad:
            lr = self.sched.base_lrs[0] * self.sched.lr_lambdas[0](bad - 1)  # what step `bad` trained with
            raise DivergenceError(
                f"{desc}: loss is {float(self._bad_loss)} at epoch {epoch}, step {bad} "
                f"(lr={lr:.3g}); lower the learning rate or check the data"
            )
        self._clear_bad()

    def snapshot(self) -> None:
        """Keep a copy of the weights if this step is one of ``snapshot_steps``."""
        if self.step in self.wanted:
            self.snapshots[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def record(self, desc: str) -> None:
        """Append this epoch's metrics to the history."""
        data, history = self.data, self.history
        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            loss, acc = evaluate(self.model, x, y)
            history[f"{split}_loss"].append(loss)
            history[f"{split}_acc"].append(acc)
        distance = _norm([p.detach().double() - p0 for p, p0 in zip(self.model.parameters(), self.start)])
        history["weight_distance"].append(distance)
        history["relative_weight_distance"].append(distance / self.start_norm if self.start_norm > 0 else math.nan)
        # The last optimiser step can break the weights after its own loss was finite.
        if not math.isfinite(history["train_loss"][-1]):
            raise DivergenceError(
                f"{desc}: the training-set loss is {history['train_loss'][-1]} after epoch "
                f"{len(history['train_loss']) - 1}, step {self.step}; lower the learning rate or check the data"
            )

    def state_dict(self, signum: int | None = None) -> dict[str, Any]:
        """The state to save; ``signum``: the signal the run stops on, if any."""
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "generator": self.generator.get_state(),
            "rng": rng_states(), "epoch": self.epoch, "step": self.step, "order": self.order,
            "done": self.done, "history": self.history, "snapshots": self.snapshots, "start": self.start,
            "sampler": self.sampler.state_dict(),
            "hook": self.on_batch.state_dict() if self.on_batch is not None else None,  # type: ignore[attr-defined]
            "signal": signum,
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        set_rng_states(saved["rng"])
        self.sampler.load_state_dict(saved["sampler"])
        if self.on_batch is not None:
            self.on_batch.load_state_dict(saved["hook"])  # type: ignore[attr-defined]
        self.history, self.snapshots, self.start = saved["history"], saved["snapshots"], saved["start"]
        self.start_norm = _norm(self.start)
        self.epoch, self.step, self.order, self.done = saved["epoch"], saved["step"], saved["order"], saved["done"]


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def train(
    model: nn.Module,
    data: TaskData,
    cfg: TrainConfig,
    *,
    seed: int,
    loss_fn: LossFn | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    snapshot_steps: Sequence[int] = (),
    stop_after: int | None = None,
    sampler: EpochSampler | None = None,
    on_batch: BatchHook | None = None,
    progress: bool = True,
    desc: str = "train",
    checkpoint: Checkpointing | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` and return its per-epoch metrics.

    * Parameters with ``requires_grad=False`` are not trained.
    * ``loss_fn`` defaults to cross-entropy; metrics are always cross-entropy.
    * ``masks`` (parameter name -> bool tensor) are applied before training and after
      every optimiser step, so masked weights stay exactly zero.
    * ``snapshot_steps``: optimiser steps (0 = before training) at which a copy of the
      weights is kept, e.g. the rewind point of iterative magnitude pruning.
    * ``stop_after``: stop after this many epochs while keeping the learning-rate
      schedule of the full ``cfg.epochs`` (an early checkpoint of a normal run).
    * ``sampler`` picks each epoch's examples (default :class:`Shuffle`: all of them);
      e.g. repeated random sampling trains on a fresh subset every epoch.
    * ``cfg.augment`` transforms each training batch (the loss, ``on_batch`` and the
      teacher of a distillation all see the augmented batch); metrics use clean data.
    * A non-finite loss raises :class:`DivergenceError` at the end of its epoch, naming
      the epoch and step it happened at (checked on the device, so steps never wait).
    * Besides loss and accuracy, every epoch records ``weight_distance``, the norm of
      the change of all parameters since the start of this run (lazy vs rich
      training), and ``relative_weight_distance``, that over the starting norm.
    * ``checkpoint``: save the whole state of training every ``checkpoint.every``
      epochs, and on SIGTERM or SIGUSR1 after the current step, then raise
      :class:`~workflow.checkpoint.Preempted`; start from a saved state when there is
      one (see :mod:`workflow.checkpoint`). An ``on_batch`` hook's state is saved and
      restored with it, so the hook needs ``state_dict`` and ``load_state_dict``.
    """
    loss_fn = loss_fn or (lambda logits, xb, yb: F.cross_entropy(logits, yb))
    if checkpoint is not None and on_batch is not None and not (
        hasattr(on_batch, "state_dict") and hasattr(on_batch, "load_state_dict")
    ):
        raise ValueError(
            f"checkpointing needs the on_batch hook's state: give {type(on_batch).__name__} "
            "state_dict() and load_state_dict(), or train without a checkpoint"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    opt = _optimizer(params, cfg)
    sampler = sampler or Shuffle(len(data.y_train))
    steps_per_epoch = len(_batches(torch.arange(sampler.size), cfg.batch_size))
    sched = _schedule(opt, cfg, total_steps=max(1, cfg.epochs * steps_per_epoch))
    augment = compose(cfg.augment)
    if augment is not None:  # a wrong input shape fails here, before any training
        augment(data.x_train[:2], torch.Generator().manual_seed(0))
    epochs = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
    # Refuse before training, not after: a rewind point past the end is a config error.
    beyond = sorted(s for s in snapshot_steps if not 0 <= s <= epochs * steps_per_epoch)
    if beyond:
        raise ValueError(
            f"snapshot steps {beyond} lie beyond the {epochs * steps_per_epoch} steps of training "
            f"({epochs} epochs of {steps_per_epoch} steps)"
        )
    if masks:
        apply_masks(model, masks)

    run = TrainingState(model, data, opt, sched, sampler, torch.Generator().manual_seed(seed), on_batch, snapshot_steps)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        run.record(desc)
        run.snapshot()
    else:
        run.load_state_dict(saved)
    bar = tqdm(range(run.epoch + 1, epochs + 1), desc=desc, disable=not progress, mininterval=2.0, leave=False)
    with stop_requests() if checkpoint is not None else contextlib.nullcontext(lambda: None) as stop:
        for epoch in bar:
            _set_train_mode(model)
            if run.order is None:
                run.order = sampler(run.generator)
            batches = _batches(run.order, cfg.batch_size)
            for idx in batches[run.done:]:
                idx = idx.to(data.x_train.device)
                xb, yb = data.x_train[idx], data.y_train[idx]
                if augment is not None:
                    xb = augment(xb, run.generator)
                logits = model(xb)
                loss = loss_fn(logits, xb, yb)
                run.watch(loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if masks:
                    apply_masks(model, masks)
                if on_batch is not None:
                    on_batch(idx, logits.detach(), yb)
                run.step += 1
                run.done += 1
                run.snapshot()
                if (signum := stop()) is not None and run.done < len(batches):
                    run.check_finite(desc, epoch)
                    checkpoint.save(run.state_dict(signum))
                    raise Preempted(signum)
            run.check_finite(desc, epoch)
            run.epoch, run.order, run.done = epoch, None, 0
            run.record(desc)
            bar.set_postfix(test_acc=f"{run.history['test_acc'][-1]:.3f}")
            if checkpoint is not None and (epoch % checkpoint.every == 0 or stop() is not None) and epoch < epochs:
                signum = stop()
                checkpoint.save(run.state_dict(signum))
                if signum is not None:
                    raise Preempted(signum)
    resumed_step, stopper = (None, None) if saved is None else (saved["step"], stopped_by(saved))
    return TrainResult(history_dataset(run.history), run.snapshots, run.step, resumed_step, stopper)
