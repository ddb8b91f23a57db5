"""Scoring every training example, one method per registry entry.

Each scorer returns one row of scores per independent repetition (``init``: an
initialisation, a training run, or a k-means seed); the data-pruning stage
averages them over ``init``. High scores mean hard examples. Scores are computed
once per (dataset, model, setting) and reused by every kept fraction.

Scorers that train (EL2N, GraNd, forgetting) train their repetitions together, as
one pack (:func:`workflow.train.train_pack`), and are resumable like any training
run: with a checkpoint, a rerun of a killed job goes on where the pack stopped and
ends with the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from workflow.train import Member, TrainConfig, train_pack


@dataclass
class ScoreContext:
    """What a scorer may use: its spec, the task, the device, an optional model file,
    where the job checkpoints (None: it does not) and how a pack of repetitions steps."""

    spec: Mapping[str, Any]
    data: TaskData
    device: torch.device
    model_path: str | None = None
    progress: bool = True
    checkpoint: Checkpointing | None = None
    stack: str = "sequential"  # how the repetitions of a scorer that trains step (execution.stack)


@dataclass
class ScoreRows:
    """Scores over (init, sample), the label of each row, and what they are."""

    values: np.ndarray
    inits: list[int]
    description: str


Scorer = Callable[[ScoreContext], ScoreRows]
SCORERS: Registry[Scorer] = Registry("score")


def _trained(ctx: ScoreContext, *, epochs: int | None = None, hooks: bool = False) -> list[tuple[nn.Module, Any]]:
    """One model of the spec per repetition (initialised with seed ``init``), trained
    together as one pack: ``epochs`` epochs of the full schedule (None: all of it; 0:
    the initialisations themselves). With ``hooks``, each trains with a
    :class:`ForgettingTracker`. Returns (model in eval mode, its tracker or None)."""
    inits = range(ctx.spec["inits"])
    trackers = [ForgettingTracker(len(ctx.data.y_train)) if hooks else None for _ in inits]
    members = [
        Member(seeded_model(ctx.spec["model"], ctx.data.in_length, ctx.data.num_classes, init, ctx.device),
               ctx.data, seed=init, on_batch=tracker, desc=f"{ctx.spec['score']} init {init}")
        for init, tracker in zip(inits, trackers)
    ]
    if epochs != 0:
        train_pack(members, TrainConfig.from_dict(ctx.spec["train"]), stack=ctx.stack, stop_after=epochs,
                   progress=ctx.progress, desc=f"{ctx.spec['score']} x{len(members)}", checkpoint=ctx.checkpoint)
    return [(m.model.eval(), tracker) for m, tracker in zip(members, trackers)]


@SCORERS.register("el2n")
def _el2n(ctx: ScoreContext) -> ScoreRows:
    rows = []
    for model, _ in _trained(ctx, epochs=ctx.spec["epoch"]):
        with torch.no_grad():
            logits = torch.cat([model(xb) for xb in ctx.data.x_train.split(1024)])
        rows.append(el2n(logits, ctx.data.y_train).cpu().numpy())
    return ScoreRows(np.stack(rows), list(range(ctx.spec["inits"])),
                     f"EL2N at epoch {ctx.spec['epoch']}, one row per initialisation")


@SCORERS.register("grand")
def _grand(ctx: ScoreContext) -> ScoreRows:
    rows = [grand(model, ctx.data.x_train, ctx.data.y_train, params=ctx.spec["params"]).cpu().numpy()
            for model, _ in _trained(ctx, epochs=ctx.spec["epoch"])]
    scope = "all parameters" if ctx.spec["params"] == "all" else "the head only (an approximation of GraNd)"
    return ScoreRows(np.stack(rows), list(range(ctx.spec["inits"])),
                     f"GraNd over {scope} at epoch {ctx.spec['epoch']}, one row per initialisation")


@SCORERS.register("forgetting")
def _forgetting(ctx: ScoreContext) -> ScoreRows:
    rows = [tracker.counts() for _, tracker in _trained(ctx, hooks=True)]
    return ScoreRows(np.stack(rows), list(range(ctx.spec["inits"])),
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
