"""Stage entry points: one function per kind of job, from input files to output files.

Each function reads what it needs, calls the science (training loop, scores,
pruning, distillation, analyses) and writes its results through
:mod:`workflow.storage`. They know nothing of Snakemake: the workflow's rules and
a researcher at a shell call them the same way, through :mod:`workflow.cli`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from workflow import axes, cache, storage
from workflow.averaging import accuracy_and_loss, ensemble_probabilities, greedy_soup, interpolate, uniform_soup
from workflow.checkpoint import Checkpointing
from workflow.data import TaskData, load_data
from workflow.engines import resolve_stack, same_but_elementwise
from workflow.lora import merge_lora
from workflow.models import load_model, seeded_model
from workflow.runtime import evaluate, job_device, seed_everything
from workflow.scoring import SCORERS, ScoreContext
from workflow.stages import TrainingSetup
from workflow.stages.registry import TRAINING_STAGES
from workflow.summaries import final_value
from workflow.train import Member, TrainConfig, train_pack

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
    """Train the one run described by ``spec`` (see :meth:`workflow.study.Study.spec`): a pack of one
    (see :func:`train_pack_job`)."""
    inputs = {role: str(path) for role, path in (("parent", parent), ("scores", scores), ("teacher", teacher)) if path}
    pack = {"pack": spec["run"], "stack": "sequential", "data": str(data_path),
            "runs": [{"spec": dict(spec), "out": str(out), "inputs": inputs}]}
    train_pack_job(pack, device=device, threads=threads, progress=progress, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every)


def train_pack_job(
    pack: Mapping[str, Any],
    *,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    checkpoint: PathLike | None = None,
    checkpoint_every: int = 1,
    recompute: bool = False,
) -> None:
    """Train the runs of a pack (see :meth:`workflow.study.Study.pack_description`) that are
    not already stored, in one loop.

    A run whose ``model.pt`` and ``metrics.zarr`` are stored for its key (its spec and the
    identity of its data and input files, :mod:`workflow.cache`) is left as it is, unless
    ``recompute``. Each other run's stage (:data:`workflow.stages.registry.TRAINING_STAGES`)
    prepares its training from its input files, in the order of the pack; then the one
    training loop trains them together, stepped as ``pack["stack"]`` says. Writes each
    run's ``metrics.zarr`` (per-epoch metrics) and then ``model.pt`` (weights, spec,
    masks), each atomically, into its own folder. With ``checkpoint`` (a file outside
    every run's folder), training saves the pack's state there every ``checkpoint_every``
    epochs and when stopped by SIGTERM or SIGUSR1, resumes from it when run again with
    the same runs to train (their keys) and engine, and deletes it once every output is
    written (see :mod:`workflow.checkpoint`).
    """
    keys = [cache.key({"spec": run["spec"]}, {"data": pack["data"], **run["inputs"]}) for run in pack["runs"]]
    stored = [not recompute and cache.is_stored([Path(run["out"]) / "model.pt", Path(run["out"]) / "metrics.zarr"], key)
              for run, key in zip(pack["runs"], keys)]
    todo = [(run, key) for run, key, done in zip(pack["runs"], keys, stored) if not done]
    print(f"{pack['pack']}: training {len(todo)} of {len(keys)} runs; the others are stored for their spec "
          "and inputs" + "".join(f"\n  {'stored' if done else 'train '} {run['spec']['run']}"
                                 for run, done in zip(pack["runs"], stored)), flush=True)
    if todo:
        _train_runs(pack, todo, device=device, threads=threads, progress=progress, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every)
    print(_final_lines(pack["pack"], [(run["spec"]["run"], Path(run["out"]) / "metrics.zarr") for run in pack["runs"]]))


def _train_runs(pack: Mapping[str, Any], todo: Sequence[tuple[Mapping[str, Any], str]], *, device: str,
                threads: int | None, progress: bool, checkpoint: PathLike | None, checkpoint_every: int) -> None:
    """Train the runs of ``pack`` that ``todo`` lists (each with its key) and write their results."""
    dev = job_device(device, threads)
    data = load_data(pack["data"], dev)
    setups, members = [], []
    for run, _ in todo:
        spec = run["spec"]
        seed = spec.get("train_seed", spec["seed"])  # ensemble members: their own initialisation and data order
        seed_everything(seed)
        model = seeded_model(spec["model"], data.in_length, data.num_classes, seed, dev)
        setup = TrainingSetup(model, data, TrainConfig.from_dict(spec["train"]), seed, dev)
        stage = TRAINING_STAGES[spec["stage"]]
        planned = setup.cfg
        stage.prepare(spec, setup, {role: Path(path) for role, path in run["inputs"].items()})
        changed = {f.name for f in fields(planned) if getattr(planned, f.name) != getattr(setup.cfg, f.name)}
        if changed - set(stage.decided_by_job(spec)):  # the planner packs runs on the spec's settings
            raise RuntimeError(f"{spec['run']}: its stage changed the training settings {sorted(changed)} at job "
                               "time; declare them in its decided_by_job, so that the planner packs it alone")
        setups.append(setup)
        members.append(Member(model, setup.data, seed, setup.loss_fn, setup.masks, setup.sampler,
                              setup.snapshot_steps, desc=spec["run"], cfg=setup.cfg))
    try:
        same_but_elementwise([setup.cfg for setup in setups])
    except ValueError as err:
        raise ValueError(f"the runs of pack {pack['pack']} train with different settings: {err}") from None
    trainable = [sum(p.numel() for p in m.model.parameters() if p.requires_grad) for m in members]
    stack = resolve_stack(pack["stack"], dev, [m.model for m in members])
    on_divergence = pack.get("on_divergence", "fail")
    # Resumable into exactly these runs (their keys cover parents and inputs) and this engine.
    saving = Checkpointing.of_spec(checkpoint, {"runs": [key for _, key in todo], "stack": stack,
                                                "on_divergence": on_divergence}, checkpoint_every)
    results = train_pack(members, setups[0].cfg, stack=stack, progress=progress, desc=pack["pack"], checkpoint=saving,
                         on_divergence=on_divergence)

    names = [run["spec"]["run"] for run, _ in todo]
    for (run, key), setup, result, n_trainable in zip(todo, setups, results, trainable):
        spec, model, out = run["spec"], setup.model, Path(run["out"])
        if setup.snapshot_steps:  # the dense run of network pruning: its rewind points
            setup.rewind = {step: result.snapshots[step] for step in setup.snapshot_steps}
        merge_lora(model)  # adapters folded in: what is saved is a plain model of the study's architecture
        TRAINING_STAGES[spec["stage"]].finish(spec, setup)
        metrics = result.history
        metrics["trainable_params"] = xr.DataArray(n_trainable, attrs={"description": "parameters the run trained"})
        metrics.update(setup.metrics)
        if on_divergence == "record":  # divergence as data: where the run stopped, NaN if it did not
            epoch, step = result.diverged or (np.nan, np.nan)
            metrics["diverged_epoch"] = xr.DataArray(float(epoch), attrs={
                "description": "the epoch in which the loss stopped being finite (metrics NaN from it on); NaN: never"})
            metrics["diverged_step"] = xr.DataArray(float(step), attrs={
                "description": "the optimiser step at which the loss stopped being finite; NaN: never"})
        with storage.stamp(key):
            attrs = storage.provenance(spec, parent=spec.get("parent"), seed=setup.seed, device=str(dev))
        attrs.update(steps=result.steps, pack=pack["pack"], pack_runs=names, stack=stack)
        if result.resumed_step is not None:
            attrs["resumed_from_step"] = result.resumed_step
            attrs["stopped_by"] = result.stopped_by
        storage.write_dataset(metrics, out / "metrics.zarr", attrs)
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
            out / "model.pt",
        )
    if saving is not None:
        saving.remove()


def _last_epoch(history: xr.Dataset) -> int:
    """The last epoch of a run's metrics with a test accuracy (-1: none, e.g. diverged at once)."""
    reached = history["epoch"].values[history["test_acc"].notnull().values]
    return int(reached[-1]) if reached.size else -1


def _final_lines(pack: str, stores: Sequence[tuple[str, PathLike]]) -> str:
    """The end of a pack's log: each of its runs (trained now or stored) with its final metrics."""
    lines = [f"{pack}: final metrics of its runs (at the last epoch each reached):"]
    for run, store in stores:
        history = storage.open_dataset(store)
        last = f"epoch {_last_epoch(history)}" if _last_epoch(history) >= 0 else "no finite epoch"
        values = "  ".join(f"{m} {float(final_value(history[m])):.4f}" for m in INDEX_METRICS if m in history)
        lines.append(f"  {run}  ({last})  {values}")
    return "\n".join(lines)


def _metrics(state: Mapping[str, torch.Tensor], template: nn.Module, data: TaskData,
                  split: str = "test") -> tuple[float, float]:
    """Loss and accuracy on ``split`` (test or val) of a state dict loaded into a copy of ``template``."""
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return evaluate(model, *(data.x_val, data.y_val) if split == "val" else (data.x_test, data.y_test))


def wiseft(
    start: PathLike, end: PathLike, alphas: Sequence[float], out: PathLike, *, data_path: PathLike,
    device: str = "auto", threads: int | None = None, recompute: bool = False,
) -> None:
    """WiSE-FT: test loss and accuracy of the weights interpolated from ``start`` (alpha = 0)
    to ``end`` (alpha = 1), over ``alpha``, and their validation loss and accuracy when the
    task has a validation set (on which the best alpha is chosen); nothing when ``out`` is
    stored for these inputs (:mod:`workflow.cache`), unless ``recompute``."""
    key = cache.key({"wiseft": list(alphas), "splits": ["test", "val"]},
                    {"start": start, "end": end, "data": data_path})
    if not cache.needed([out], key, recompute):
        return
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    (model, a), (_, b) = load_model(start, dev), load_model(end, dev)
    splits = ["test"] + (["val"] if data.y_val is not None else [])
    states = [interpolate(a["state_dict"], b["state_dict"], alpha) for alpha in alphas]
    measured = {}
    for split in splits:
        rows = [_metrics(state, model, data, split=split) for state in states]
        measured[f"{split}_loss"] = ("alpha", [r[0] for r in rows])
        measured[f"{split}_acc"] = ("alpha", [r[1] for r in rows])
    ds = xr.Dataset(measured, coords={"alpha": np.asarray(alphas, dtype=np.float64)})
    with storage.stamp(key):
        attrs = storage.provenance(None, device=str(dev))
    attrs.update(start=str(start), end=str(end), method="WiSE-FT: (1 - alpha) start + alpha end, every floating tensor")
    storage.write_dataset(ds, out, attrs)


def ensemble(
    members: Sequence[PathLike], out: PathLike, *, data_path: PathLike, device: str = "auto", threads: int | None = None,
    recompute: bool = False,
) -> None:
    """Test accuracy and loss of each member, of their ensemble (mean probabilities) and of
    their uniform soup (mean weights); with a validation set, each member's validation
    accuracy and the greedy soup built on it (:func:`workflow.averaging.greedy_soup`):
    its test accuracy and loss, its validation accuracy and which members it holds.
    Nothing when ``out`` is stored for these inputs (:mod:`workflow.cache`), unless
    ``recompute``."""
    measures = ["members", "ensemble", "uniform soup", "greedy soup"]  # what the store holds, in its key
    key = cache.key({"ensemble": len(members), "measures": measures},
                    {"data": data_path, **{f"member{i}": m for i, m in enumerate(members)}})
    if not cache.needed([out], key, recompute):
        return
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    loaded = [load_model(path, dev) for path in members]
    models = [m for m, _ in loaded]
    single = [evaluate(m, data.x_test, data.y_test) for m in models]
    ens_acc, ens_loss = accuracy_and_loss(ensemble_probabilities(models, data.x_test), data.y_test)
    states = [s["state_dict"] for _, s in loaded]
    soup_loss, soup_acc = _metrics(uniform_soup(states), models[0], data)
    ds = xr.Dataset(
        {
            "member_acc": ("member", [acc for _, acc in single]),
            "member_loss": ("member", [loss for loss, _ in single]),
            "ensemble_acc": ens_acc, "ensemble_loss": ens_loss,
            "soup_acc": soup_acc, "soup_loss": soup_loss,
        },
        coords={"member": np.arange(len(members))},
    )
    if data.y_val is not None:  # greedy soups choose on held-out data, never on the test set
        def val_acc(state: Mapping[str, torch.Tensor]) -> float:
            return _metrics(state, models[0], data, split="val")[1]

        kept, greedy_val = greedy_soup(states, val_acc)
        greedy_loss, greedy_acc = _metrics(uniform_soup([states[i] for i in kept]), models[0], data)
        ds["member_val_acc"] = ("member", [evaluate(m, data.x_val, data.y_val)[1] for m in models])
        ds["greedy_soup_acc"], ds["greedy_soup_loss"], ds["greedy_soup_val_acc"] = greedy_acc, greedy_loss, greedy_val
        ds["greedy_soup_member"] = ("member", [i in kept for i in range(len(members))])
    with storage.stamp(key):
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
    stack: str = "sequential",
    recompute: bool = False,
) -> None:
    """Score every training example once; write ``score`` over (init, sample) to ``out``;
    nothing when ``out`` is stored for this spec and these inputs (:mod:`workflow.cache`),
    unless ``recompute``.

    ``model_path``: the embedding model, for methods that score in a model's
    representation (prototypes). ``checkpoint``: as for :func:`train_pack_job`, for the
    methods that train (see :mod:`workflow.scoring`), whose repetitions train as one
    pack, stepped as ``stack`` says (:data:`workflow.engines.STACK_MODES`).
    """
    key = cache.key({"spec": spec}, {"data": data_path, "model": model_path})
    if not cache.needed([out], key, recompute):
        return
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    stack = resolve_stack(stack, dev)
    saving = Checkpointing.of_spec(checkpoint, {"scores": key, "stack": stack}, checkpoint_every)
    ctx = ScoreContext(spec, data, dev, str(model_path) if model_path else None, progress, saving, stack)
    rows = SCORERS[spec["score"]](ctx)
    ds = xr.Dataset(
        {
            "score": (("init", "sample"), rows.values.astype(np.float64), {"description": rows.description}),
            "label": ("sample", data.y_train.cpu().numpy()),
        },
        coords={"init": rows.inits, "sample": np.arange(len(data.y_train))},
    )
    with storage.stamp(key):
        attrs = storage.provenance(spec, device=str(dev))
    attrs["stack"] = stack
    storage.write_dataset(ds, out, attrs)
    if saving is not None:
        saving.remove()


def collect(entries: Sequence[tuple[Mapping[str, Any], PathLike]], out: PathLike,
            attrs: Mapping[str, Any] | None = None) -> None:
    """Combine per-run stores into one tidy dataset whose sweep axes are dimensions (``attrs``:
    settings it carries for its readers, e.g. the zoo's phase thresholds).

    ``entries``: (coordinates of the run on the sweep axes, its store). The coordinates
    of a stacked dimension (:data:`workflow.axes.STACKED`, e.g. ``source`` along
    ``model``) are placed along it. Epochs a run did not reach are NaN. Every variable
    and dimension gets the ``long_name`` and ``units`` of :mod:`workflow.axes`; counts
    are stored as integers and flags as booleans wherever every cell has a value.
    """
    if not entries:
        raise ValueError("nothing to collect")
    parts = []
    for coords, path in entries:
        ds = storage.open_dataset(path)
        ds.attrs = {}
        along = {name: stacked for stacked, names in axes.STACKED.items() if stacked in coords for name in names}
        dims = {k: [v] for k, v in coords.items() if k not in along}
        labels = {k: (along[k], [v]) for k, v in coords.items() if k in along}
        parts.append(ds.expand_dims(dims).assign_coords(labels))
    combined = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
    combined = combined.sortby([k for k in entries[0][0] if k in combined.dims])
    stamped = {**storage.provenance(None), **(attrs or {})}
    stamped["runs"] = [str(p) for _, p in entries]
    storage.write_dataset(described(combined), out, stamped)


def write_zoo_models(summaries: Mapping[str, PathLike], *, zarr: PathLike, csv: PathLike) -> None:
    """The zoo's per-model table (:func:`workflow.summaries.zoo_models`) from the study's
    summaries (``zoo`` and those of :data:`~workflow.summaries.ZOO_MODEL_SOURCES` it has), as
    a dataset over the zoo's axes and seed in Zarr and as a CSV table, a row per model."""
    from workflow.summaries import ZOO_MODEL_SOURCES, zoo_models, zoo_models_frame

    opened = {name: storage.open_dataset(path) for name, path in summaries.items()}
    models = described(zoo_models(opened["zoo"], **{n: opened[n] for n in ZOO_MODEL_SOURCES if n in opened}))
    storage.write_dataset(models, zarr, storage.provenance(None))
    with storage.atomic_path(csv) as tmp:
        zoo_models_frame(models).to_csv(tmp, index=False)


# The final metrics of every run in the run index: the last epoch each reached.
INDEX_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")

# What each column of the run index holds, besides the axes of :mod:`workflow.axes`.
RUN_INDEX_COLUMNS = {
    "parent": "the run whose weights this run starts from ('' for none)",
    "pack": "the training pack (job) that trains it",
    "model": "path of its model file, relative to the results folder (as every path here)",
    "metrics": "path of its per-epoch metrics",
    "activations": "path of its activations on the probe set ('' if not recorded)",
    "spectra": "path of its spectra store ('' if not analysed)",
    "other_stores": "the analysis stores it is part of, separated by ';'",
    "epochs": "the last epoch with a test accuracy",
    **{f"final_{m}": f"{m.replace('_', ' ')} at the last epoch" for m in INDEX_METRICS},
}


def write_run_index(rows: Sequence[Mapping[str, Any]], root: PathLike, *, zarr: PathLike, csv: PathLike) -> None:
    """The study's run index (:meth:`workflow.study.Study.run_index`, paths relative to the
    results folder ``root``) with each run's final metrics read from its store, as a dataset
    along ``run`` in Zarr and as a CSV table.

    Coordinates a run's stage lacks are empty strings (text) or NaN (numbers); ``epochs``
    is the last epoch with a test accuracy, and the ``final_*`` metrics are at it.
    """
    table = []
    for row in rows:
        metrics = storage.open_dataset(Path(root) / row["metrics"])
        epochs = _last_epoch(metrics)
        finals = {f"final_{m}": float(final_value(metrics[m])) for m in INDEX_METRICS if m in metrics}
        table.append({**row, "epochs": epochs, **finals})
    frame = pd.DataFrame(table).set_index("run")
    columns = {}
    for name, column in frame.items():
        text = column.map(lambda v: isinstance(v, str)).any()
        columns[name] = column.fillna("").astype(str) if text else column
    ds = xr.Dataset({name: ("run", column.to_numpy()) for name, column in columns.items()},
                    coords={"run": frame.index.to_numpy().astype(str)})
    for name in ds.data_vars:
        ds[name].attrs["long_name"] = RUN_INDEX_COLUMNS.get(str(name)) or axes.DIMENSIONS.get(str(name), str(name))
        if str(name).startswith("final_"):
            ds[name].attrs["units"] = axes.variable_info(str(name).removeprefix("final_"))[1]
    # what identifies a run is a coordinate, what it measured a variable: ``where`` masks only the latter
    measured = {"epochs", *(f"final_{m}" for m in INDEX_METRICS)}
    storage.write_dataset(ds.set_coords([n for n in ds.data_vars if n not in measured]), zarr, storage.provenance(None))
    with storage.atomic_path(csv) as tmp:
        frame.to_csv(tmp)


def described(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the vocabulary's attributes (:mod:`workflow.axes`) on every variable and
    coordinate, counts as integers and flags as booleans where no cell is missing."""
    ds = ds.copy()
    for name in ds.data_vars:
        long_name, units, kind = axes.variable_info(str(name))
        var = ds[name]
        if kind in ("int", "bool") and not var.isnull().any():
            var = var.astype(np.int64 if kind == "int" else bool)
        ds[name] = var.assign_attrs(long_name=long_name, units=units)
    for name in ds.coords:
        if name in axes.DIMENSIONS:
            ds[name].attrs.update(long_name=axes.DIMENSIONS[str(name)])
    return ds


def parse_entries(text: str) -> list[tuple[dict[str, Any], str]]:
    """Entries of :func:`collect` from JSON: ``[[{"seed": 0}, "path"], ...]``."""
    return entries_from(json.loads(text))


def entries_from(data: Sequence[Sequence[Any]]) -> list[tuple[dict[str, Any], str]]:
    """Entries of :func:`collect` from decoded JSON: ``[[{"seed": 0}, "path"], ...]``."""
    return [(dict(c), str(p)) for c, p in data]
