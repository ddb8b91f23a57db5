"""The one training loop, used by every stage that trains a model.

:func:`train_pack` trains a pack of K >= 1 models in lockstep; :func:`train` is a
pack of one. Stages differ only in what they hand over per model (a
:class:`Member`): the trainable parameters (``requires_grad``), the loss
(cross-entropy, or distillation), masks to hold at zero, the examples and their
order, and hooks to read the model during training. How the models step, one
after another or stacked, is the engine's business (:mod:`workflow.engines`).
Runs are seeded: on the CPU the same seed gives bit-identical weights and metrics,
alone or in a sequential pack. Training draws no global random numbers (data
order and augmentation come from each run's own generator), so the members of a
pack cannot disturb each other.
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
from tqdm.auto import tqdm

from workflow.batching import batch_bounds
from workflow.augment import AUGMENTATIONS, compose
from workflow.checkpoint import (
    Checkpointing,
    Preempted,
    rng_states,
    set_rng_states,
    stop_requests,
    stopped_by,
)
from workflow.data import TaskData
from workflow.engines import ENGINES, PRECISIONS, LossFn, cross_entropy, resolve_stack
from workflow.prune_network import apply_masks
from workflow.runtime import evaluate

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``on_batch(indices, logits, y_batch)``, called after every forward pass in training.
A hook that keeps state across batches must have ``state_dict()`` and
``load_state_dict(state)`` to be used with checkpoints (see :func:`train`)."""

OPTIMIZERS = ("sgd", "adam", "adamw")
ON_DIVERGENCE = ("fail", "record")
"""``execution.on_divergence``: a non-finite loss stops the pack (fail), or stops only its
member, whose metrics are NaN from then on (record: divergence as data)."""
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
    precision: str = "fp32"  # bf16: the forward pass and loss under autocast (see workflow.engines)
    compile: bool = False  # torch.compile the forward pass

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", tuple(self.augment))  # a config gives a list
        for name in self.augment:
            AUGMENTATIONS[name]  # refuses an unknown name, listing the allowed ones
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} unknown; allowed: {', '.join(PRECISIONS)}")
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
    # With on_divergence="record": the epoch and optimiser step at which its loss stopped
    # being finite (from that epoch on its metrics are NaN), or None.
    diverged: tuple[int, int] | None = None


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
    """An epoch's order cut into its batches (:func:`~workflow.batching.batch_bounds`)."""
    return [order[a:b] for a, b in batch_bounds(len(order), batch_size)]


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The Euclidean norm of several tensors taken as one vector, in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


DISTANCES = ("weight_distance", "relative_weight_distance")  # how far the weights moved from their start
HISTORY = ("train_loss", "train_acc", "test_loss", "test_acc", *DISTANCES)


def history_names(data: TaskData) -> tuple[str, ...]:
    """What a run on ``data`` records each epoch: :data:`HISTORY`, with the validation
    split's loss and accuracy after the training split's when the task has one."""
    measured = tuple(f"{split}_{m}" for split, _, _ in data.splits() for m in ("loss", "acc"))
    return measured + DISTANCES
"""The per-epoch metrics of every run."""


def history_dataset(history: Mapping[str, Sequence[float]]) -> xr.Dataset:
    """Per-epoch metrics as a Dataset over ``epoch`` (0 = before training)."""
    n = len(next(iter(history.values())))
    return xr.Dataset(
        {k: ("epoch", np.asarray(v, dtype=np.float64)) for k, v in history.items()},
        coords={"epoch": np.arange(n)},
    )


@dataclass
class Member:
    """One model of a pack and what it trains on: the arguments of :func:`train` for one run."""

    model: nn.Module
    data: TaskData
    seed: int  # of its data order (and augmentation draws)
    loss_fn: LossFn | None = None  # default: cross-entropy
    masks: Mapping[str, torch.Tensor] | None = None
    sampler: EpochSampler | None = None
    snapshot_steps: Sequence[int] = ()
    on_batch: BatchHook | None = None
    desc: str = "train"  # names the run in errors
    cfg: TrainConfig | None = None  # its own settings, which may differ from the pack's in ELEMENTWISE ones


class RunState:
    """What one run of a pack carries from step to step besides its weights, with
    ``state_dict`` / ``load_state_dict``: its data order, snapshots and history."""

    def __init__(self, member: Member, sampler: EpochSampler) -> None:
        self.member, self.sampler = member, sampler
        self.generator = torch.Generator().manual_seed(member.seed)
        self.wanted = set(member.snapshot_steps)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.history: dict[str, list[float]] = {k: [] for k in history_names(member.data)}
        # Lazy vs rich training: how far the weights travel from where this run started.
        self.start = [p.detach().to(torch.float64, copy=True) for p in member.model.parameters()]
        self.start_norm = _norm(self.start)
        self.order: torch.Tensor | None = None  # this epoch's examples, in order (CPU)
        self.diverged: tuple[int, int] | None = None  # (epoch, step) its loss stopped being finite

    def record(self, measured: Mapping[str, float] | None = None) -> None:
        """Append this epoch's metrics to the history: ``measured`` (every one of
        :func:`history_names`), or as the member's module measures now; NaN from the epoch
        the run diverged in on."""
        model, data, history = self.member.model, self.member.data, self.history
        if self.diverged is not None or measured is not None:
            for name, values in history.items():
                values.append(math.nan if self.diverged is not None else measured[name])  # type: ignore[index]
            return
        for split, x, y in data.splits():
            loss, acc = evaluate(model, x, y)
            history[f"{split}_loss"].append(loss)
            history[f"{split}_acc"].append(acc)
        distance = _norm([p.detach().double() - p0 for p, p0 in zip(model.parameters(), self.start)])
        history["weight_distance"].append(distance)
        history["relative_weight_distance"].append(distance / self.start_norm if self.start_norm > 0 else math.nan)

    def state_dict(self) -> dict[str, Any]:
        hook = self.member.on_batch
        return {
            "generator": self.generator.get_state(), "order": self.order, "history": self.history,
            "snapshots": self.snapshots, "start": self.start, "sampler": self.sampler.state_dict(),
            "hook": hook.state_dict() if hook is not None else None,  # type: ignore[attr-defined]
            "diverged": self.diverged,
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.generator.set_state(saved["generator"])
        self.sampler.load_state_dict(saved["sampler"])
        if self.member.on_batch is not None:
            self.member.on_batch.load_state_dict(saved["hook"])  # type: ignore[attr-defined]
        # A checkpoint is read onto the CPU: what is compared with the weights goes back to their device.
        device = next(self.member.model.parameters()).device
        self.history = saved["history"]
        self.snapshots = {step: {k: v.to(device) for k, v in weights.items()} for step, weights in saved["snapshots"].items()}
        self.start = [p0.to(device) for p0 in saved["start"]]
        self.start_norm = _norm(self.start)
        self.order = saved["order"]
        self.diverged = saved["diverged"]


class Finite:
    """Whether every member's loss stayed finite, noted on the device without waiting for it:
    :meth:`check` reads the first bad step of each member once per epoch, and before a
    checkpoint is saved."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.k, self.device = k, device
        self.clear()

    def clear(self) -> None:
        self.bad_step = torch.zeros(self.k, dtype=torch.long, device=self.device)  # 0: every loss was finite
        self.bad_loss = torch.zeros(self.k, device=self.device)

    def watch(self, losses: torch.Tensor, step: int) -> None:
        """Note which members' losses (K,) at optimiser step ``step`` are not finite."""
        first = (self.bad_step == 0) & ~torch.isfinite(losses)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, losses.to(self.bad_loss.dtype), self.bad_loss)

    def check(self, members: Sequence[Member], epoch: int, lr: Callable[[int, int], float],
              record: bool = False) -> dict[int, int]:
        """Raise :class:`DivergenceError` naming the first member whose loss was not finite;
        with ``record``, return instead the members whose loss was not finite, each with
        the first such step."""
        bad = self.bad_step.tolist()  # the one wait for the device in an epoch
        if not record:
            for k, step in enumerate(bad):
                if step:
                    raise DivergenceError(
                        f"{members[k].desc}: loss is {float(self.bad_loss[k])} at epoch {epoch}, step {step} "
                        f"(lr={lr(step, k):.3g}); lower the learning rate or check the data"
                    )
        self.clear()
        return {k: step for k, step in enumerate(bad) if step}


def _shared_source(members: Sequence[Member]) -> tuple[TaskData, torch.Tensor] | None:
    """The one task every member's training set is drawn from, and each member's rows of it
    (K, N), when the members share one task, its test set and a training-set size."""
    sources = [m.data.source() for m in members]
    task = sources[0][0]
    if any(t is not task or m.data.x_test is not task.x_test or m.data.x_val is not task.x_val
           for (t, _), m in zip(sources, members)):
        return None
    if len({len(rows) for _, rows in sources}) > 1:
        return None
    return task, torch.stack([rows for _, rows in sources])


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
    """Train ``model`` in place on ``data`` and return its per-epoch metrics: a pack of one
    (see :func:`train_pack` for every argument)."""
    member = Member(model, data, seed, loss_fn, masks, sampler, snapshot_steps, on_batch, desc)
    return train_pack([member], cfg, stop_after=stop_after, progress=progress, desc=desc, checkpoint=checkpoint)[0]


def train_pack(
    members: Sequence[Member],
    cfg: TrainConfig,
    *,
    stack: str = "sequential",
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
    checkpoint: Checkpointing | None = None,
    on_divergence: str = "fail",
    measure_together: bool | None = None,
) -> list[TrainResult]:
    """Train every member's model in place, in lockstep, and return each one's metrics.

    The members share the training config and the number of steps per epoch; each
    has its own data, data order, loss, masks, snapshots and metrics (:class:`Member`).
    ``stack`` (:data:`~workflow.engines.STACK_MODES`) says how they step
    (:mod:`workflow.engines`): ``sequential`` gives each run exactly the numbers it
    would have alone.

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
    * A member's ``cfg`` may differ from ``cfg`` in its element-wise optimiser settings
      (:data:`~workflow.stages.ELEMENTWISE`: learning rate, weight decay, momentum);
      each member keeps its own values and schedule.
    * A non-finite loss raises :class:`DivergenceError` at the end of its epoch, naming
      the run (its ``desc``), the epoch and the step (checked on the device, so steps
      never wait). With ``on_divergence="record"`` (:data:`ON_DIVERGENCE`) it stops
      that member instead: it takes no optimiser step from then on, its metrics are
      NaN from that epoch on, and its result records the epoch and step
      (``diverged``); the others train on.
    * Besides loss and accuracy, every epoch records ``weight_distance``, the norm of
      the change of all parameters since the start of this run (lazy vs rich
      training), and ``relative_weight_distance``, that over the starting norm.
    * ``measure_together``: a stacked pack whose members share one task measures them
      all in one vmapped pass per chunk and reads the metrics once an epoch; by default
      on a GPU only, since on a CPU a loop over the members is twice as fast (16 CNNs).
    * ``checkpoint``: save the whole state of training every ``checkpoint.every``
      epochs, and on SIGTERM or SIGUSR1 after the current step, then raise
      :class:`~workflow.checkpoint.Preempted`; start from a saved state when there is
      one (see :mod:`workflow.checkpoint`). An ``on_batch`` hook's state is saved and
      restored with it, so the hook needs ``state_dict`` and ``load_state_dict``.
    """
    if not members:
        raise ValueError("a pack needs at least one member")
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence {on_divergence!r} unknown; allowed: {', '.join(ON_DIVERGENCE)}")
    record_divergence = on_divergence == "record"
    for m in members:
        if checkpoint is not None and m.on_batch is not None and not (
            hasattr(m.on_batch, "state_dict") and hasattr(m.on_batch, "load_state_dict")
        ):
            raise ValueError(
                f"checkpointing needs the on_batch hook's state: give {type(m.on_batch).__name__} "
                "state_dict() and load_state_dict(), or train without a checkpoint"
            )
        if not any(p.requires_grad for p in m.model.parameters()):
            raise ValueError(f"{m.desc}: no trainable parameters")
    samplers = [m.sampler or Shuffle(len(m.data.y_train)) for m in members]
    steps = {len(_batches(torch.arange(s.size), cfg.batch_size)) for s in samplers}
    if len(steps) > 1:
        raise ValueError(f"the runs of a pack must take as many steps per epoch; these take {sorted(steps)}")
    steps_per_epoch = steps.pop()
    augment = compose(cfg.augment)
    if augment is not None:  # a wrong input shape fails here, before any training
        augment(members[0].data.x_train[:2], torch.Generator().manual_seed(0))
    epochs = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
    for m in members:
        # Refuse before training, not after: a rewind point past the end is a config error.
        beyond = sorted(s for s in m.snapshot_steps if not 0 <= s <= epochs * steps_per_epoch)
        if beyond:
            raise ValueError(
                f"snapshot steps {beyond} lie beyond the {epochs * steps_per_epoch} steps of training "
                f"({epochs} epochs of {steps_per_epoch} steps)"
            )
        if m.masks:
            apply_masks(m.model, m.masks)

    device = members[0].data.x_train.device
    engine = ENGINES[resolve_stack(stack, device, [m.model for m in members])]([m.model for m in members], [m.masks for m in members],
                                                   [m.cfg or cfg for m in members],
                                                   max(1, cfg.epochs * steps_per_epoch), record_divergence)
    # A stacked pack whose members draw their training sets from one task gathers every
    # member's batch in one indexing operation, and (on a GPU) measures them all at once.
    shared = _shared_source(members) if engine.name == "stacked" else None
    together = shared is not None and (device.type != "cpu" if measure_together is None else measure_together)
    runs = [RunState(m, s) for m, s in zip(members, samplers)]
    hooks = any(m.on_batch is not None for m in members)
    loss_fns = [m.loss_fn or cross_entropy for m in members]
    finite = Finite(len(members), device)
    epoch_done, step, done = 0, 0, 0  # whole epochs done; optimiser steps; batches of the next epoch done

    def snapshot() -> None:
        wanted = [run for run in runs if step in run.wanted]
        if wanted:
            engine.sync()
            for run in wanted:
                run.snapshots[step] = {k: v.detach().clone() for k, v in run.member.model.state_dict().items()}

    def diverge(bad: dict[int, int], epoch: int) -> None:
        """Note the members whose loss stopped being finite in ``epoch`` (record mode)."""
        for k, at in bad.items():
            if runs[k].diverged is None:
                runs[k].diverged = (epoch, at)

    def record() -> None:
        if not together:
            engine.sync()
            for run in runs:
                run.record()
        else:  # on the device for every member at once, and read in one go
            source, rows = shared  # type: ignore[misc]
            measured = [value for split, x, y in source.splits()
                        for value in engine.evaluate(x, y, rows if split == "train" else None)]
            table = torch.stack([*measured, *engine.distance()]).tolist()
            names = history_names(source)
            for k, run in enumerate(runs):
                run.record({name: table[i][k] for i, name in enumerate(names)})
        for run in runs:
            # The last optimiser step can break the weights after its own loss was finite.
            loss = run.history["train_loss"][-1]
            if not math.isfinite(loss) and run.diverged is None and record_divergence:
                run.diverged = (len(run.history["train_loss"]) - 1, step)
                for values in run.history.values():
                    values[-1] = math.nan
            elif not math.isfinite(loss) and run.diverged is None:
                raise DivergenceError(
                    f"{run.member.desc}: the training-set loss is {loss} after epoch "
                    f"{len(run.history['train_loss']) - 1}, step {step}; lower the learning rate or check the data"
                )

    def state(signum: int | None) -> dict[str, Any]:
        return {"engine": engine.state_dict(), "runs": [run.state_dict() for run in runs], "rng": rng_states(),
                "epoch": epoch_done, "step": step, "done": done, "signal": signum}

    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        record()
        snapshot()
    else:
        engine.load_state_dict(saved["engine"])
        for run, s in zip(runs, saved["runs"]):
            run.load_state_dict(s)
        set_rng_states(saved["rng"])
        epoch_done, step, done = saved["epoch"], saved["step"], saved["done"]
    bar = tqdm(range(epoch_done + 1, epochs + 1), desc=desc, disable=not progress, mininterval=2.0, leave=False)
    with stop_requests() if checkpoint is not None else contextlib.nullcontext(lambda: None) as stop:
        for epoch in bar:
            engine.train_mode()
            for run in runs:
                if run.order is None:
                    run.order = run.sampler(run.generator)
            # One copy of the orders to the device per epoch; the steps then never wait for the host.
            if shared is None:
                batches = [_batches(run.order.to(device), cfg.batch_size) for run in runs]
            else:
                orders = torch.stack([run.order for run in runs]).to(device)
                bounds = batch_bounds(orders.shape[1], cfg.batch_size)
            for i in range(done, steps_per_epoch):
                if shared is None:
                    idx = [b[i] for b in batches]
                    xbs = [m.data.x_train[j] for m, j in zip(members, idx)]
                    ybs = [m.data.y_train[j] for m, j in zip(members, idx)]
                else:  # (K, B) positions in each member's training set, their rows in the shared task
                    positions = orders[:, bounds[i][0]:bounds[i][1]]
                    picked = shared[1].gather(1, positions)
                    xbs, ybs = shared[0].x_train[picked], shared[0].y_train[picked]
                    idx = list(positions) if hooks else []
                if augment is not None:
                    xbs = [augment(xb, run.generator) for xb, run in zip(xbs, runs)]
                losses, logits = engine.step(xbs, ybs, loss_fns)
                step += 1
                done += 1
                finite.watch(losses, step)
                if hooks:
                    for m, j, lg, yb in zip(members, idx, logits, ybs):
                        if m.on_batch is not None:
                            m.on_batch(j, lg, yb)
                snapshot()
                if (signum := stop()) is not None and done < steps_per_epoch:
                    diverge(finite.check(members, epoch, engine.lr, record_divergence), epoch)
                    checkpoint.save(state(signum))  # type: ignore[union-attr]
                    raise Preempted(signum)
            diverge(finite.check(members, epoch, engine.lr, record_divergence), epoch)
            epoch_done, done = epoch, 0
            for run in runs:
                run.order = None
            record()
            bar.set_postfix(test_acc=f"{runs[0].history['test_acc'][-1]:.3f}")
            if checkpoint is not None and (epoch % checkpoint.every == 0 or stop() is not None) and epoch < epochs:
                signum = stop()
                checkpoint.save(state(signum))
                if signum is not None:
                    raise Preempted(signum)
    engine.sync()
    resumed_step, stopper = (None, None) if saved is None else (saved["step"], stopped_by(saved))
    return [TrainResult(history_dataset(run.history), run.snapshots, step, resumed_step, stopper, run.diverged)
            for run in runs]
