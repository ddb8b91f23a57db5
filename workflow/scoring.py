"""Scoring every training example, one method per registry entry.

Each scorer returns one row of scores per independent repetition (``init``: an
initialisation, a training run, or a k-means seed); the data-pruning stage
averages them over ``init``. High scores mean hard examples. Scores are computed
once per (dataset, model, setting) and reused by every kept fraction.

Scorers that train (EL2N, GraNd, forgetting) are resumable like any training run:
with a checkpoint, each repetition's training saves its state beside it, and the
rows already finished are kept in it, so a rerun of a killed job goes on where it
stopped and ends with the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from workflow.checkpoint import Checkpointing
from workflow.data import TaskData
from workflow.forgetting import ForgettingTracker
from workflow.grand import grand
from workflow.models import load_model, seeded_model
from workflow.prototypes import prototype_scores
from workflow.prune_data import el2n, random_scores
from workflow.registry import Registry
from workflow.train import TrainConfig, train


@dataclass
class ScoreContext:
    """What a scorer may use: its spec, the task, the device, an optional model file,
    and where the job checkpoints (None: it does not)."""

    spec: Mapping[str, Any]
    data: TaskData
    device: torch.device
    model_path: str | None = None
    progress: bool = True
    checkpoint: Checkpointing | None = None


@dataclass
class ScoreRows:
    """Scores over (init, sample), the label of each row, and what they are."""

    values: np.ndarray
    inits: list[int]
    description: str


Scorer = Callable[[ScoreContext], ScoreRows]
SCORERS: Registry[Scorer] = Registry("score")


def _per_init(ctx: ScoreContext, row: Callable[[int, Checkpointing | None], np.ndarray]) -> np.ndarray:
    """``row(init, checkpoint)`` for every repetition, stacked over ``init``.

    With ``ctx.checkpoint``, repetition ``init`` trains with a checkpoint of its own
    (``<name>.init<k>.pt`` beside it), and each finished row is saved in
    ``ctx.checkpoint``, so a rerun recomputes neither finished rows nor finished epochs.
    """
    inits = range(ctx.spec["inits"])
    saved = ctx.checkpoint.load() if ctx.checkpoint is not None else None
    rows: dict[int, np.ndarray] = saved["rows"] if saved is not None else {}
    for init in inits:
        if init in rows:
            continue
        own = None
        if ctx.checkpoint is not None:
            path = ctx.checkpoint.path
            own = replace(ctx.checkpoint, path=path.with_name(f"{path.stem}.init{init}{path.suffix}"),
                          key=f"{ctx.checkpoint.key}/init{init}")
        rows[init] = row(init, own)
        if own is not None:
            ctx.checkpoint.save({"rows": rows})
            own.remove()
    return np.stack([rows[i] for i in inits])


def _early_model(ctx: ScoreContext, init: int, checkpoint: Checkpointing | None) -> nn.Module:
    """A model of the spec, initialised with seed ``init`` and trained ``spec["epoch"]``
    epochs of the full schedule (epoch 0: the initialisation itself)."""
    model = seeded_model(ctx.spec["model"], ctx.data.in_length, ctx.data.num_classes, init, ctx.device)
    if ctx.spec["epoch"] > 0:
        cfg = TrainConfig.from_dict(ctx.spec["train"])
        train(model, ctx.data, cfg, seed=init, stop_after=ctx.spec["epoch"], progress=ctx.progress,
              desc=f"{ctx.spec['score']} init {init}", checkpoint=checkpoint)
    return model.eval()


@SCORERS.register("el2n")
def _el2n(ctx: ScoreContext) -> ScoreRows:
    def row(init: int, checkpoint: Checkpointing | None) -> np.ndarray:
        model = _early_model(ctx, init, checkpoint)
        with torch.no_grad():
            logits = torch.cat([model(xb) for xb in ctx.data.x_train.split(1024)])
        return el2n(logits, ctx.data.y_train).cpu().numpy()

    return ScoreRows(_per_init(ctx, row), list(range(ctx.spec["inits"])),
                     f"EL2N at epoch {ctx.spec['epoch']}, one row per initialisation")


@SCORERS.register("grand")
def _grand(ctx: ScoreContext) -> ScoreRows:
    def row(init: int, checkpoint: Checkpointing | None) -> np.ndarray:
        model = _early_model(ctx, init, checkpoint)
        return grand(model, ctx.data.x_train, ctx.data.y_train, params=ctx.spec["params"]).cpu().numpy()

    scope = "all parameters" if ctx.spec["params"] == "all" else "the head only (an approximation of GraNd)"
    return ScoreRows(_per_init(ctx, row), list(range(ctx.spec["inits"])),
                     f"GraNd over {scope} at epoch {ctx.spec['epoch']}, one row per initialisation")


@SCORERS.register("forgetting")
def _forgetting(ctx: ScoreContext) -> ScoreRows:
    cfg = TrainConfig.from_dict(ctx.spec["train"])

    def row(init: int, checkpoint: Checkpointing | None) -> np.ndarray:
        model = seeded_model(ctx.spec["model"], ctx.data.in_length, ctx.data.num_classes, init, ctx.device)
        tracker = ForgettingTracker(len(ctx.data.y_train))
        train(model, ctx.data, cfg, seed=init, on_batch=tracker, progress=ctx.progress,
              desc=f"forgetting run {init}", checkpoint=checkpoint)
        return tracker.counts()

    return ScoreRows(_per_init(ctx, row), list(range(ctx.spec["inits"])),
                     "forgetting events over a full training run (inf: never learned), one row per run")


def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """The features a model's head sees (its penultimate representation), float64."""
    feats: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda module, inputs: feats.append(inputs[0].detach().flatten(1)))
    try:
        with torch.no_grad():
            for xb in x.split(batch_size):
                model(xb)
    finally:
        hook.remove()
    return torch.cat(feats).double().cpu().numpy()


@SCORERS.register("prototypes")
def _prototypes(ctx: ScoreContext) -> ScoreRows:
    if ctx.model_path is None:
        raise ValueError("prototype scores need the embedding model (--model)")
    model, _ = load_model(ctx.model_path, ctx.device)
    features = embed(model, ctx.data.x_train)
    inits = list(range(ctx.spec["inits"]))
    rows = [prototype_scores(features, ctx.spec["k"], seed=i) for i in inits]
    return ScoreRows(np.stack(rows), inits,
                     f"distance to the nearest of {ctx.spec['k']} k-means prototypes in the embedding of "
                     f"{ctx.spec['embedding']}, one row per k-means seed")


@SCORERS.register("random")
def _random(ctx: ScoreContext) -> ScoreRows:
    inits = list(ctx.spec["seeds"])
    n = len(ctx.data.y_train)
    return ScoreRows(np.stack([random_scores(n, s) for s in inits]), inits,
                     "uniform random scores, one independent draw per training seed")
