"""Analysis entry points: one function per kind of analysis job, from files to a store.

Like :mod:`workflow.stages` for training, each reads its inputs, calls the science
in :mod:`workflow.analysis` and writes one Zarr store through :mod:`workflow.storage`;
the workflow's rules and a researcher at a shell call them the same way, through
:mod:`workflow.cli`. Probe examples are the first ``probe_size`` test examples of
the target task, the same for every model.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr
from torch import nn

from workflow import cache, storage
from workflow.analysis.activations import activations_dataset, pool_positions, record_activations
from workflow.analysis.alignment import match_units, permute_units
from workflow.analysis.connectivity import linear_connectivity
from workflow.analysis.hessian import hessian_analysis
from workflow.analysis.manifold import Cutting, class_success_rates, effective_dimension
from workflow.analysis.ntk import ntk_analysis
from workflow.analysis.rank import representation_ranks, weight_ranks
from workflow.analysis.relative import (
    choose_anchors,
    compare_spaces,
    head_inputs,
    relative_representation,
    zero_shot_stitching,
)
from workflow.analysis.similarity import similarity_matrices
from workflow.data import TaskData, load_data
from workflow.models import load_model
from workflow.storage import PathLike
from workflow.runtime import evaluate, job_device


CONNECTIVITY_BATCH = 256
"""Examples per batch on the line, and per batch that re-estimates BatchNorm there."""


def _two_models(model_a: PathLike, model_b: PathLike, data_path: PathLike, device: str,
                threads: int | None) -> tuple[TaskData, list[nn.Module]]:
    """The target task and two models, on the job's device."""
    dev = job_device(device, threads)
    return load_data(data_path, dev), [load_model(path, dev)[0] for path in (model_a, model_b)]


def _write_comparison(ds: xr.Dataset, out: PathLike, settings: Mapping[str, Any], names: tuple[str, str]) -> None:
    """A store comparing two models: the analysis's settings are its config; the models are named."""
    attrs = storage.provenance(settings)
    attrs.update(ds.attrs, model_a=names[0], model_b=names[1])
    storage.write_dataset(ds, out, attrs)


def _model_attrs(saved: Mapping[str, Any], model_path: PathLike, device: torch.device) -> dict[str, Any]:
    spec = saved["spec"]
    attrs = storage.provenance(spec, parent=spec.get("parent"), seed=spec["seed"], device=str(device))
    attrs["model"] = str(model_path)
    return attrs


def record(
    model_path: PathLike,
    data_path: PathLike,
    out: PathLike,
    *,
    probe_size: int,
    layers: list[str] | None = None,
    conv: str = "flatten",
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """Activations of ``layers`` (default: the model's named layers) on the probe set (first test examples).

    ``conv``: convolutional maps are stored ``flatten``-ed (a unit per channel and
    position) or ``pool``-ed (averaged over positions, a unit per channel).
    """
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    if probe_size > len(data.y_test):
        raise ValueError(f"probe_size={probe_size} exceeds the {len(data.y_test)} test examples")
    model, saved = load_model(model_path, dev)
    acts = record_activations(model, data.x_test[:probe_size], layers)
    if conv == "pool":
        acts = pool_positions(acts)
    elif conv != "flatten":
        raise ValueError(f"conv={conv!r}; allowed: flatten, pool")
    ds = activations_dataset(acts, np.arange(probe_size))
    storage.write_dataset(ds, out, _model_attrs(saved, model_path, dev))


def compare(
    acts_a: PathLike,
    acts_b: PathLike | None,
    out: PathLike,
    *,
    model_a: str,
    model_b: str,
    settings: Mapping[str, Any],
    threads: int | None = None,
) -> None:
    """Every similarity measure of ``settings["measures"]``, layer x layer, between two activation stores.

    Streamed from the stores (see :func:`workflow.analysis.similarity.similarity_matrices`);
    both must hold the same probe examples. Without ``acts_b``, the layers of
    ``acts_a`` against each other, each read once. On the CPU, with ``threads`` torch threads.
    """
    job_device("cpu", threads)
    options = {k: settings[k] for k in ("chunk", "batch", "cca_dims") if k in settings}
    ds = similarity_matrices(acts_a, acts_b, measures=settings["measures"], **options)
    _write_comparison(ds, out, settings, (model_a, model_b))


def _prefixed(ds: xr.Dataset, prefix: str, dims: Mapping[str, str] | None = None) -> xr.Dataset:
    """``ds`` with every variable (and the given dims) renamed, so analyses share one store."""
    ds = ds.rename({name: f"{prefix}_{name}" for name in ds.data_vars})
    ds.attrs = {f"{prefix}_{k}": v for k, v in ds.attrs.items()}
    return ds.rename(dims) if dims else ds


def spectra(
    model_path: PathLike,
    data_path: PathLike,
    out: PathLike,
    *,
    settings: Mapping[str, Any],
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """The NTK of the probe set, the Hessian of the training loss, and the weights' effective ranks.

    ``ntk_*``: eigenvalues (dim ``eig``), condition number and kernel-target
    alignment of the empirical NTK (traced over outputs, float64) on the first
    ``ntk_examples`` probe examples; ``hessian_*``: the top ``hessian_k``
    eigenvalues (dim ``hessian_eig``), trace and its standard error on the first
    ``hessian_examples`` training examples; ``weight_*``: effective ranks of the
    weights (dim ``param``, their state-dict keys); ``representation_*``: those of
    each named layer's centred outputs on the probe set (dim ``layer``). Fewer
    examples are used when there are fewer; the counts used are attrs.
    """
    dev = job_device(device, threads)
    data: TaskData = load_data(data_path, dev)
    model, saved = load_model(model_path, dev)
    # the first examples, or all there are: a study's default must fit its smallest task
    n_ntk = min(settings["ntk_examples"], settings["probe_size"], len(data.y_test))
    n_hess = min(settings["hessian_examples"], len(data.y_train))
    ntk = ntk_analysis(model, data.x_test[:n_ntk], data.y_test[:n_ntk], method=settings["ntk_method"])
    hessian = hessian_analysis(
        model, data.x_train[:n_hess], data.y_train[:n_hess], settings["hessian_k"],
        method=settings["hessian_method"], num_probes=settings["hutchinson_probes"], batch_size=256,
    )
    ranks = weight_ranks({k: v.detach().cpu() for k, v in model.state_dict().items()})
    n_probe = min(settings["probe_size"], len(data.y_test))
    representations = representation_ranks(record_activations(model, data.x_test[:n_probe]))
    ds = xr.merge(
        [_prefixed(ntk, "ntk"), _prefixed(hessian, "hessian", {"eig": "hessian_eig"}), _prefixed(ranks, "weight"),
         _prefixed(representations, "representation")],
        combine_attrs="no_conflicts",
    )
    attrs = _model_attrs(saved, model_path, dev)
    attrs.update(analysis_config=json.dumps(settings, sort_keys=True), ntk_examples=n_ntk, hessian_examples=n_hess)
    storage.write_dataset(ds.drop_vars([v for v in ("sample_a", "sample_b") if v in ds.coords]), out, attrs)


def connectivity(
    model_a: PathLike,
    model_b: PathLike,
    data_path: PathLike,
    out: PathLike,
    *,
    names: tuple[str, str],
    settings: Mapping[str, Any],
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """Loss and error on the line between two models, BatchNorm re-estimated at each point.

    With ``align``, also on the line to b with its units matched to a's
    (:mod:`workflow.analysis.alignment`, on the training examples that re-estimate
    BatchNorm): its variables prefixed ``aligned_``, and ``aligned_unit_correlation``
    (dim ``layer``), the mean correlation of each block's matched units.
    """
    data, (a, b) = _two_models(model_a, model_b, data_path, device, threads)
    kwargs = dict(x_train=data.x_train, y_train=data.y_train, alphas=np.linspace(0.0, 1.0, settings["alphas"]),
                  bn_batches=settings["bn_batches"], batch_size=CONNECTIVITY_BATCH, names=names)
    ds = linear_connectivity(a, b, data.x_test, data.y_test, **kwargs)
    if settings.get("align"):
        matching = data.x_train[: settings["bn_batches"] * CONNECTIVITY_BATCH]
        matched = match_units(a, b, matching)
        aligned = linear_connectivity(a, permute_units(b, matched.perms), data.x_test, data.y_test, **kwargs)
        ds = ds.merge(aligned.rename({v: f"aligned_{v}" for v in aligned.data_vars}))
        ds["aligned_unit_correlation"] = xr.DataArray(list(matched.correlation.values()), dims="layer",
                                                      coords={"layer": list(matched.correlation)})
    _write_comparison(ds, out, settings, names)


def relative(
    model_a: PathLike,
    model_b: PathLike,
    data_path: PathLike,
    out: PathLike,
    *,
    names: tuple[str, str],
    settings: Mapping[str, Any],
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """Relative against absolute representations of two models, and zero-shot stitching between them.

    Representations are the inputs of each model's head. ``anchors`` training
    examples (class-balanced, drawn by ``seed``; their indices are stored) are the
    same for both models. Stores ``similarity`` (space, measure) of the two models'
    test representations, absolute and relative; ``stitched_acc`` (space): the test
    accuracy of a ridge classifier fitted on model a's training representations (not
    the model's own head) applied to model b's test representations; and what it is
    read against: ``classifier_acc_a`` (space), the same classifier on model a's own
    test representations, and ``model_acc_a``/``model_acc_b``, each model's own test
    accuracy with its trained head.
    """
    data, models = _two_models(model_a, model_b, data_path, device, threads)
    anchors = choose_anchors(data.y_train, settings["anchors"], settings["seed"], class_balanced=True)
    spaces: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"absolute": {}, "relative": {}}
    for name, model in zip(("a", "b"), models):
        train, test = head_inputs(model, data.x_train), head_inputs(model, data.x_test)
        spaces["absolute"][name] = (train, test)
        spaces["relative"][name] = tuple(relative_representation(x, train[anchors]) for x in (train, test))
    similarity = compare_spaces(spaces["absolute"]["a"][1], spaces["absolute"]["a"][0][anchors],
                                spaces["absolute"]["b"][1], spaces["absolute"]["b"][0][anchors])
    y_train, y_test = data.y_train.cpu().numpy(), data.y_test.cpu().numpy()
    stitched = {
        space: zero_shot_stitching(reps["a"][0], y_train, reps["a"][1], reps["b"][1], y_test, data.num_classes)
        for space, reps in spaces.items()
    }
    with torch.no_grad():
        own = [evaluate(model, data.x_test, data.y_test)[1] for model in models]
    ds = xr.Dataset(
        {
            "similarity": similarity,
            "stitched_acc": ("space", [float(stitched[s]["accuracy_stitched"]) for s in similarity["space"].values]),
            "classifier_acc_a": ("space", [float(stitched[s]["accuracy_a"]) for s in similarity["space"].values]),
            "model_acc_a": ((), float(own[0])),
            "model_acc_b": ((), float(own[1])),
            "anchor": ("anchor_index", anchors),
        },
    )
    _write_comparison(ds, out, settings, names)


def manifold(
    model_path: PathLike,
    data_path: PathLike,
    out: PathLike,
    *,
    settings: Mapping[str, Any],
    device: str = "auto",
    threads: int | None = None,
) -> None:
    """The class-manifold dimension of every class of the target task (Fort et al.,
    :mod:`workflow.analysis.manifold`).

    Starting points are drawn per input coordinate from a normal with the training
    inputs' mean and standard deviation there. Stores ``success_rate`` (class_label,
    subspace_dim), ``class_manifold_dimension`` (class_label; NaN where no dimension
    tried reached the class in half the trials) and the ``input_dim``.
    """
    dev = job_device(device, threads)
    data = load_data(data_path, dev)
    model, saved = load_model(model_path, dev)
    x = data.x_train.reshape(len(data.x_train), -1)
    mean, std = x.mean(0), x.std(0)

    def draw_point(generator: torch.Generator) -> torch.Tensor:
        return mean + std * torch.randn(x.shape[1], generator=generator).to(dev)

    cutting = Cutting(threshold=settings["threshold"], trials=settings["trials"], steps=settings["steps"],
                      lr=settings["lr"])
    dims, labels = list(settings["dims"]), list(range(data.num_classes))
    rates = class_success_rates(model, labels, dims, draw_point, cutting, seed=settings["seed"])
    dimension = [effective_dimension(dict(zip(dims, row)), x.shape[1]) for row in rates]
    ds = xr.Dataset({"success_rate": (("class_label", "subspace_dim"), rates),
                     "class_manifold_dimension": ("class_label", dimension), "input_dim": ((), x.shape[1])},
                    coords={"class_label": labels, "subspace_dim": dims})
    attrs = _model_attrs(saved, model_path, dev)
    attrs.update(analysis_config=json.dumps(settings, sort_keys=True))
    storage.write_dataset(ds, out, attrs)


def _task_names(task: Mapping[str, Any]) -> tuple[str, str]:
    runs = task["runs"]
    return runs[0], runs[-1]


# How a batch runs each kind of task: (task, data file, the kind's settings, device, threads).
_TASKS: dict[str, Any] = {
    "activations": lambda t, data, s, device, threads: record(
        t["inputs"]["model"], data, t["out"], probe_size=s["probe_size"], layers=s.get("layers"),
        conv=s.get("conv", "flatten"), device=device, threads=threads),
    "similarity": lambda t, data, s, device, threads: compare(
        t["inputs"]["a"], t["inputs"].get("b"), t["out"], model_a=t["runs"][0], model_b=t["runs"][-1],
        settings=s, threads=threads),
    "relative": lambda t, data, s, device, threads: relative(
        t["inputs"]["a"], t["inputs"]["b"], data, t["out"], names=_task_names(t), settings=s, device=device,
        threads=threads),
    "connectivity": lambda t, data, s, device, threads: connectivity(
        t["inputs"]["a"], t["inputs"]["b"], data, t["out"], names=_task_names(t), settings=s, device=device,
        threads=threads),
    "spectra": lambda t, data, s, device, threads: spectra(
        t["inputs"]["model"], data, t["out"], settings=s, device=device, threads=threads),
    "manifold": lambda t, data, s, device, threads: manifold(
        t["inputs"]["model"], data, t["out"], settings=s, device=device, threads=threads),
}


def run_batch(batch: Mapping[str, Any], *, device: str = "auto", threads: int | None = None,
              progress: bool = True, recompute: bool = False) -> None:
    """Every task of an analysis batch (:func:`workflow.analysis.batches.describe`), in order,
    each writing its own store exactly as the single analysis would, except those stored for
    exactly their settings and inputs (:mod:`workflow.cache`), unless ``recompute``.

    A task's key is taken when its turn comes, after the tasks before it in the batch
    (the activations it compares) are written. Similarity runs on the CPU, as it always
    does; the others on ``device``.
    """
    from tqdm import tqdm

    unknown = sorted({t["kind"] for t in batch["tasks"]} - set(_TASKS))
    if unknown:
        raise ValueError(f"batch {batch['batch']}: unknown kinds of task {unknown}; allowed: {', '.join(_TASKS)}")
    for task in tqdm(batch["tasks"], desc=batch["batch"], disable=not progress, mininterval=1.0):
        settings = batch["settings"][task["kind"]]
        key = cache.key({"kind": task["kind"], "runs": task["runs"], "settings": settings},
                        {"data": batch["data"], **task["inputs"]})
        if cache.needed([task["out"]], key, recompute):
            with storage.stamp(key):
                _TASKS[task["kind"]](task, batch["data"], settings, device, threads)
