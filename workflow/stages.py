"""Stage entry points: one function per kind of job, from input files to output files.

Each function reads what it needs, calls the science (training loop, scores,
pruning, distillation, analyses) and writes its results through
:mod:`workflow.storage`. They know nothing of Snakemake: the workflow's rules and
a researcher at a shell call them the same way, through :mod:`workflow.cli`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
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
from workflow.distill import kd_loss
from workflow.finetune import FINETUNE, FinetuneSetup
from workflow.lora import merge_lora
from workflow.models import load_model, seeded_model
from workflow.prune_data import RepeatedRandomSubsets, select
from workflow.scoring import SCORERS, ScoreContext
from workflow.prune_network import (
    PRUNING_METHODS,
    density,
    layer_densities,
    magnitude_masks,
    multiply_adds,
    prunable_parameters,
    random_masks,
)
from workflow.train import TrainConfig, evaluate, job_device, seed_everything, train

PathLike = str | Path


def _new_model(spec: Mapping[str, Any], data: TaskData, device: torch.device, seed: int) -> nn.Module:
    seed_everything(seed)
    return seeded_model(spec["model"], data.in_length, data.num_classes, seed, device)


def _pruned_start(
    spec: Mapping[str, Any], model: nn.Module, parent: Mapping[str, Any], data: TaskData, cfg: TrainConfig
) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """Masks and starting weights (loaded into ``model``) of a network-pruning run, and its
    training settings; the methods are described in :mod:`workflow.prune_network`.

    ``parent``: the previous IMP level (``imp``), the IMP run of the same level
    (``reinit``, ``random``, ``scratch``), or the dense run (``oneshot``).
    """
    method, fraction, scope = spec["method"], spec["fraction"], spec["scope"]
    trained = {name: parent["state_dict"][name] for name in prunable_parameters(model)}
    if method == "imp":
        masks = magnitude_masks(trained, parent["masks"], fraction, scope)
    elif method == "oneshot":
        # Levels of pruning with no training between them rank the same magnitudes:
        # IMP's weight counts, reached at once.
        masks = None
        for _ in range(spec["level"]):
            masks = magnitude_masks(trained, masks, fraction, scope)
    elif method == "random":
        masks = random_masks(parent["masks"], torch.Generator().manual_seed(spec["seed"]))
    elif method in ("reinit", "scratch"):
        masks = dict(parent["masks"])
    else:
        raise ValueError(f"unknown network-pruning method {method!r}; allowed: dense, {', '.join(PRUNING_METHODS)}")
    assert masks is not None
    if method in ("reinit", "scratch"):
        # Fresh weights, not the dense run's initialisation.
        model.load_state_dict(_new_model(spec, data, next(model.parameters()).device, spec["init_seed"]).state_dict())
    else:  # rewind: surviving weights restart from their values at the rewind step
        model.load_state_dict(parent["rewind"][spec["rewind"]])
    if method == "scratch":
        # Scratch-B: as many more epochs as the sparse model saves in multiply-adds.
        example = data.x_train[0]
        ratio = multiply_adds(model, example) / multiply_adds(model, example, masks)
        cfg = replace(cfg, epochs=round(cfg.epochs * ratio))
    return masks, cfg


def _kept_examples(spec: Mapping[str, Any], scores_path: PathLike, labels: np.ndarray) -> np.ndarray:
    scores = storage.open_dataset(scores_path)["score"]
    # Random pruning draws a fresh subset per seed; score-based methods average
    # their scores over initialisations and so keep the same subset for every seed.
    values = scores.sel(init=spec["seed"]) if spec["score"]["score"] == "random" else scores.mean("init")
    return select(
        values.values,
        spec["fraction"],
        keep=spec["keep"],
        labels=labels,
        class_balanced=spec["class_balanced"],
    )


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

    Writes ``out/metrics.zarr`` (per-epoch metrics) and then ``out/model.pt``
    (weights, spec, masks), each atomically. With ``checkpoint`` (a file outside
    ``out``), training saves its state there every ``checkpoint_every`` epochs and
    when stopped by SIGTERM or SIGUSR1, resumes from it when run again with the same
    spec, and deletes it once the outputs are written (see :mod:`workflow.checkpoint`).
    """
    dev = job_device(device, threads)
    stage = spec["stage"]
    seed = spec.get("train_seed", spec["seed"])  # ensemble members: their own initialisation and data order
    data = load_data(data_path, dev)
    model = _new_model(spec, data, dev, seed)
    cfg = TrainConfig.from_dict(spec["train"])
    extra: dict[str, Any] = {}
    loss_fn = None
    masks = None
    sampler = None
    snapshot_steps: Sequence[int] = ()

    if stage == "finetune":
        parent_state = storage.load_torch(parent)["state_dict"] if parent else None
        settings = {"lora": spec["lora"]} if "lora" in spec else {}
        setup = FinetuneSetup(settings, data.x_train, cfg.batch_size, seed)
        FINETUNE[spec["method"]](model, parent_state, setup)
    elif stage == "ensemble":
        parent_state = storage.load_torch(parent)["state_dict"]
        if spec["kind"] == "seeds":  # another full fine-tuning run from the pretrained model
            FINETUNE["full"](model, parent_state)
        else:  # a snapshot cycle (SSE, StarSSE): from the parent's weights, head included
            model.load_state_dict(parent_state)
    elif stage in ("prune_data", "distill"):
        if spec["score"]["score"] == "rs2":
            # No fixed subset: a fresh random slice of the data every epoch.
            sampler = RepeatedRandomSubsets(len(data.y_train), spec["fraction"])
            extra["kept_per_epoch"] = sampler.size
        else:
            kept = _kept_examples(spec, scores, data.y_train.cpu().numpy())
            data = data.subset(kept)
            extra["kept"] = torch.as_tensor(kept)
        if stage == "distill":
            if spec["teacher"] == "trained":
                teacher_model, _ = load_model(teacher, dev)
            else:  # random-teacher distillation: a frozen, untrained network
                teacher_model = seeded_model(spec["model"], data.in_length, data.num_classes,
                                             spec["teacher_seed"], dev).eval()
            teacher_model.requires_grad_(False)
            T, alpha = spec["temperature"], spec["alpha"]

            def loss_fn(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    teacher_logits = teacher_model(xb)
                return kd_loss(logits, teacher_logits, yb, T, alpha)

    elif stage == "prune_network":
        if spec["method"] == "dense":
            snapshot_steps = tuple(spec["rewind_steps"])
        else:
            previous = storage.load_torch(parent)
            masks, cfg = _pruned_start(spec, model, previous, data, cfg)
            extra["rewind"] = {spec["rewind"]: previous["rewind"][spec["rewind"]]}
        extra["masks"] = masks
    elif stage != "pretrain":
        raise ValueError(f"unknown training stage {stage!r}")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    saving = Checkpointing.of_spec(checkpoint, spec, checkpoint_every)
    result = train(
        model, data, cfg, seed=seed, loss_fn=loss_fn, masks=masks,
        snapshot_steps=snapshot_steps, sampler=sampler, progress=progress, desc=spec["run"], checkpoint=saving,
    )
    if stage == "prune_network" and spec["method"] == "dense":
        extra["rewind"] = {step: result.snapshots[step] for step in spec["rewind_steps"]}

    merge_lora(model)  # adapters folded in: what is saved is a plain model of the study's architecture
    metrics = result.history
    metrics["trainable_params"] = xr.DataArray(trainable, attrs={"description": "parameters the run trained"})
    if stage == "prune_network":
        dense = {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable_parameters(model).items()}
        per_layer = layer_densities(masks or dense)
        metrics["density"] = xr.DataArray(density(masks or dense), attrs={"description": "fraction of prunable weights kept"})
        metrics["layer_density"] = xr.DataArray(
            list(per_layer.values()), dims="param", coords={"param": list(per_layer)},
            attrs={"description": "fraction of each prunable tensor kept"},
        )
    if stage in ("prune_data", "distill"):
        kept_size = len(extra["kept"]) if "kept" in extra else extra["kept_per_epoch"]
        metrics["kept_size"] = xr.DataArray(kept_size, attrs={"description": "training examples per epoch"})
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
            "masks": extra.get("masks"),
            "rewind": extra.get("rewind"),
            "kept": extra.get("kept"),
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
