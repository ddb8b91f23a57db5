"""Stage entry points: one function per kind of job, from input files to output files.

Each function reads what it needs, calls the science (training loop, scores,
pruning, distillation, analyses) and writes its results through
:mod:`workflow.storage`. They know nothing of Snakemake: the workflow's rules and
a researcher at a shell call them the same way, through :mod:`workflow.cli`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from workflow import storage
from workflow.averaging import accuracy_and_loss, ensemble_probabilities, interpolate, uniform_soup
from workflow.checkpoint import Checkpointing
from workflow.data import TaskData, load_data
from workflow.lora import merge_lora
from workflow.models import load_model, seeded_model
from workflow.runtime import evaluate, job_device, seed_everything
from workflow.scoring import SCORERS, ScoreContext
from workflow.stages import TrainingSetup
from workflow.stages.registry import TRAINING_STAGES
from workflow.train import TrainConfig, train

PathLike = str | Path


def train_run(
    spec: Mapping[str, Any],
    out: PathLike,
    *,
    data_path: PathLike,
    parent: PathLike | None = None,
    scores: PathLike | None = None,
    teacher: PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    checkpoint: PathLike | None = None,
    checkpoint_every: int = 1,
) -> None:
    """Train the run described by ``spec`` (see :meth:`workflow.study.Study.spec`).

    The run's stage (:data:`workflow.stages.registry.TRAINING_STAGES`) prepares its
    training from the input files; then the one training loop runs. Writes
    ``out/metrics.zarr`` (per-epoch metrics) and then ``out/model.pt`` (weights,
    spec, masks), each atomically. With ``checkpoint`` (a file outside ``out``),
    training saves its state there every ``checkpoint_every`` epochs and when stopped
    by SIGTERM or SIGUSR1, resumes from it when run again with the same spec, and
    deletes it once the outputs are written (see :mod:`workflow.checkpoint`).
    """
    dev = job_device(device, threads)
    seed = spec.get("train_seed", spec["seed"])  # ensemble members: their own initialisation and data order
    data = load_data(data_path, dev)
    seed_everything(seed)
    model = seeded_model(spec["model"], data.in_length, data.num_classes, seed, dev)
    setup = TrainingSetup(model, data, TrainConfig.from_dict(spec["train"]), seed, dev)
    inputs = {role: Path(path) for role, path in (("parent", parent), ("scores", scores), ("teacher", teacher)) if path}
    TRAINING_STAGES[spec["stage"]].prepare(spec, setup, inputs)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    saving = Checkpointing.of_spec(checkpoint, spec, checkpoint_every)
    result = train(
        model, setup.data, setup.cfg, seed=seed, loss_fn=setup.loss_fn, masks=setup.masks,
        snapshot_steps=setup.snapshot_steps, sampler=setup.sampler, progress=progress, desc=spec["run"],
        checkpoint=saving,
    )
    if setup.snapshot_steps:  # the dense run of network pruning: its rewind points
        setup.rewind = {step: result.snapshots[step] for step in setup.snapshot_steps}

    merge_lora(model)  # adapters folded in: what is saved is a plain model of the study's architecture
    metrics = result.history
    metrics["trainable_params"] = xr.DataArray(trainable, attrs={"description": "parameters the run trained"})
    metrics.update(setup.metrics)
    attrs = storage.provenance(spec, parent=spec.get("parent"), seed=seed, device=str(dev))
    attrs["steps"] = result.steps
    if result.resumed_step is not None:
        attrs["resumed_from_step"] = result.resumed_step
        attrs["stopped_by"] = result.stopped_by
    storage.write_dataset(metrics, Path(out) / "metrics.zarr", attrs)
    storage.save_torch(
        {
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "spec": dict(spec),
            "in_length": data.in_length,
            "num_classes": data.num_classes,
            "masks": setup.masks,
            "rewind": setup.rewind,
            "kept": setup.kept,
            "provenance": attrs,
        },
        Path(out) / "model.pt",
    )
    if saving is not None:
        saving.remove()


def _test_metrics(state: Mapping[str, torch.Tensor], template: nn.Module, data: TaskData) -> tuple[float, float]:
    """Test loss and accuracy of a state dict loaded into a copy of ``template``."""
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return evaluate(model, data.x_test, data.y_test)


def wiseft(
    start: PathLike, end: PathLike, alphas: Sequence[float], out: PathLike, *, data_path: PathLike,
    device: str = "auto", threads: int | None = None,
) -> None:
    """WiSE-FT: test loss and accuracy of the weights interpolated from ``start`` (alpha = 0)
    to ``end`` (alpha = 1), over ``alpha``."""
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    (model, a), (_, b) = load_model(start, dev), load_model(end, dev)
    rows = [_test_metrics(interpolate(a["state_dict"], b["state_dict"], alpha), model, data) for alpha in alphas]
    ds = xr.Dataset(
        {"test_loss": ("alpha", [r[0] for r in rows]), "test_acc": ("alpha", [r[1] for r in rows])},
        coords={"alpha": np.asarray(alphas, dtype=np.float64)},
    )
    attrs = storage.provenance(None, device=str(dev))
    attrs.update(start=str(start), end=str(end), method="WiSE-FT: (1 - alpha) start + alpha end, every floating tensor")
    storage.write_dataset(ds, out, attrs)


def ensemble(
    members: Sequence[PathLike], out: PathLike, *, data_path: PathLike, device: str = "auto", threads: int | None = None,
) -> None:
    """Test accuracy and loss of each member, of their ensemble (mean probabilities) and of
    their uniform soup (mean weights)."""
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    loaded = [load_model(path, dev) for path in members]
    models = [m for m, _ in loaded]
    single = [evaluate(m, data.x_test, data.y_test) for m in models]
    ens_acc, ens_loss = accuracy_and_loss(ensemble_probabilities(models, data.x_test), data.y_test)
    soup_loss, soup_acc = _test_metrics(uniform_soup([s["state_dict"] for _, s in loaded]), models[0], data)
    ds = xr.Dataset(
        {
            "member_acc": ("member", [acc for _, acc in single]),
            "member_loss": ("member", [loss for loss, _ in single]),
            "ensemble_acc": ens_acc, "ensemble_loss": ens_loss,
            "soup_acc": soup_acc, "soup_loss": soup_loss,
        },
        coords={"member": np.arange(len(members))},
    )
    attrs = storage.provenance(None, device=str(dev))
    attrs["members"] = [str(p) for p in members]
    storage.write_dataset(ds, out, attrs)


def compute_scores(
    spec: Mapping[str, Any],
    out: PathLike,
    *,
    data_path: PathLike,
    model_path: PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    checkpoint: PathLike | None = None,
    checkpoint_every: int = 1,
) -> None:
    """Score every training example once; write ``score`` over (init, sample) to ``out``.

    ``model_path``: the embedding model, for methods that score in a model's
    representation (prototypes). ``checkpoint``: as for :func:`train_run`, for the
    methods that train (see :mod:`workflow.scoring`).
    """
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    saving = Checkpointing.of_spec(checkpoint, spec, checkpoint_every)
    ctx = ScoreContext(spec, data, dev, str(model_path) if model_path else None, progress, saving)
    rows = SCORERS[spec["score"]](ctx)
    ds = xr.Dataset(
        {
            "score": (("init", "sample"), rows.values.astype(np.float64), {"description": rows.description}),
            "label": ("sample", data.y_train.cpu().numpy()),
        },
        coords={"init": rows.inits, "sample": np.arange(len(data.y_train))},
    )
    storage.write_dataset(ds, out, storage.provenance(spec, device=str(dev)))
    if saving is not None:
        saving.remove()


def collect(entries: Sequence[tuple[Mapping[str, Any], PathLike]], out: PathLike) -> None:
    """Combine per-run stores into one tidy dataset whose sweep axes are dimensions.

    ``entries``: (coordinates of the run on the sweep axes, its store). Runs that a
    sweep does not have, and epochs a run did not reach, are NaN.
    """
    if not entries:
        raise ValueError("nothing to collect")
    parts = []
    for coords, path in entries:
        ds = storage.open_dataset(path)
        ds.attrs = {}
        parts.append(ds.expand_dims({k: [v] for k, v in coords.items()}))
    combined = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
    combined = combined.sortby(list(entries[0][0]))
    attrs = storage.provenance(None)
    attrs["runs"] = [str(p) for _, p in entries]
    storage.write_dataset(combined, out, attrs)


def parse_entries(text: str) -> list[tuple[dict[str, Any], str]]:
    """Entries of :func:`collect` from JSON: ``[[{"seed": 0}, "path"], ...]``."""
    return [(dict(c), str(p)) for c, p in json.loads(text)]
