"""Reductions of the summary datasets shared by the figures and the report: final values,
statistics over seeds, the best hyperparameters, coordinate values and title text.

No matplotlib here: the report reads the summaries without drawing anything."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from workflow import axes


def final_value(da: xr.DataArray, dim: str = "epoch") -> xr.DataArray:
    """Value of ``da`` at the last non-NaN position along ``dim`` (NaN if none).

    Runs of a sweep stop at different epochs and are NaN-padded to a common
    length, so "the last epoch" differs per run and ``isel(epoch=-1)`` is wrong.
    """
    valid = da.notnull()
    # argmax on the reversed mask finds the first valid entry from the end.
    last = da.sizes[dim] - 1 - valid.isel({dim: slice(None, None, -1)}).argmax(dim)
    out = da.isel({dim: last}).where(valid.any(dim))
    return out.drop_vars(dim, errors="ignore")


@dataclass(frozen=True)
class SeedStats:
    """Summary over the ``seed`` dim: centre line, error bar and band."""

    mean: xr.DataArray
    std: xr.DataArray
    low: xr.DataArray
    high: xr.DataArray


def over_seeds(da: xr.DataArray) -> SeedStats:
    """Mean, sample std (0 for a single seed) and min/max over seeds, NaNs skipped."""
    if "seed" not in da.dims:
        da = da.expand_dims("seed")
    count = da.count("seed")
    with warnings.catch_warnings():
        # All-NaN slices (runs not done) are expected and simply give NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        std = da.std("seed", ddof=1).where(count > 1, 0.0)
        return SeedStats(
            mean=da.mean("seed"), std=std, low=da.min("seed"), high=da.max("seed")
        )


def quiet_mean(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Mean over ``dim`` skipping NaN; all-NaN slices give NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.mean(dim)


def _final(da: xr.DataArray) -> xr.DataArray:
    """The final value of each run if ``da`` still has an epoch dim, else ``da`` itself."""
    return final_value(da) if "epoch" in da.dims else da


def _argbest(
    mean: xr.DataArray, dims: Sequence[str]
) -> tuple[dict[str, xr.Variable], xr.DataArray]:
    """Where ``mean`` is largest over the combinations of ``dims`` (jointly), per other index.

    Returns positional indices along each of ``dims`` (for ``isel``; first maximum
    in coordinate order on ties) and a mask of where any combination is not NaN.
    """
    dims = list(dims)
    others = [d for d in mean.dims if d not in dims]
    ordered = mean.transpose(*others, *dims)
    flat = ordered.values.reshape(ordered.shape[: len(others)] + (-1,))
    run = ~np.isnan(flat)
    best = np.where(run, flat, -np.inf).argmax(axis=-1)
    positions = np.unravel_index(best, [mean.sizes[d] for d in dims])
    indices = {d: xr.Variable(others, pos) for d, pos in zip(dims, positions)}
    found = xr.DataArray(
        run.any(axis=-1), dims=others, coords={d: mean[d] for d in others if d in mean.coords}
    )
    return indices, found


def _seed_mean(da: xr.DataArray) -> xr.DataArray:
    """The seed-mean final values of ``da``."""
    mean = _final(da)
    return quiet_mean(mean, "seed") if "seed" in mean.dims else mean


def _choose(
    da: xr.DataArray, dims: Sequence[str], by: xr.DataArray | None
) -> tuple[xr.DataArray, dict[str, xr.Variable], xr.DataArray]:
    """The seed-mean final values of ``da``, and :func:`_argbest` over ``dims`` of those of
    ``by`` (``da`` itself when None)."""
    mean = _seed_mean(da)
    chooser = mean if by is None else _seed_mean(by).transpose(*mean.dims)
    return (mean, *_argbest(chooser, dims))


def best_over(
    da: xr.DataArray, dims: Sequence[str], by: xr.DataArray | None = None
) -> tuple[xr.DataArray, xr.Dataset]:
    """The seed-mean final value of ``da`` at the best combination of ``dims``, and where it is.

    The best combination is where the seed-mean final value of ``by`` is highest (``da``
    itself when None): choose on validation (``by=val_acc``) and report the test
    accuracy (``da=test_acc``). Both are metrics where higher is better, per run: with
    an ``epoch`` dim its :func:`final_value` is taken; with a ``seed`` dim the mean over
    seeds (NaN skipped), maximised jointly over ``dims`` (e.g. temperature and alpha).
    Returns ``(best, where)``: ``best`` the value of ``da`` there, over the remaining
    dims, and ``where`` a Dataset with, for each of ``dims``, the coordinate value of
    the choice. Both are NaN where no combination was run; ties go to the first
    combination in coordinate order.
    """
    mean, indices, found = _choose(da, dims, by)
    best = mean.isel(indices).where(found).drop_vars(list(dims), errors="ignore")
    where = xr.Dataset(
        {d: found.copy(data=mean[d].values[indices[d].values]).where(found) for d in dims}
    )
    return best, where


def best_runs(da: xr.DataArray, dims: Sequence[str], by: xr.DataArray | None = None) -> xr.DataArray:
    """Per-seed final values of ``da`` at the combination of ``dims`` :func:`best_over` picks."""
    _, indices, found = _choose(da, dims, by)
    return _final(da).isel(indices).where(found).drop_vars(list(dims), errors="ignore")


def chosen_by(ds: xr.Dataset) -> tuple[xr.DataArray, str]:
    """What a choice among runs is made on, and how to say so: the validation accuracy where
    the runs measured one, else (a task without ``val_size``) the test accuracy itself."""
    if "val_acc" in ds and bool(ds["val_acc"].notnull().any()):
        return ds["val_acc"], "chosen on validation"
    return ds["test_acc"], "chosen on test: the task has no validation set"


def crossed(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each stacked dimension (:data:`workflow.axes.STACKED`: ``model``, ``pair``)
    unstacked into the axes along it, e.g. ``model`` into ``source`` x ``finetuning``, for
    drawing a grid: cells no run fills (scratch under a real source) are NaN. A dataset
    without a stacked dimension is returned as it is."""
    for dim, names in axes.STACKED.items():
        if dim in ds.dims:
            # the stage follows from the fine-tuning ("none": pretrained), so it is not an axis of the grid
            grid = [name for name in names if name in ds.coords and name != "stage"]
            ds = ds.drop_vars([n for n in names if n in ds.coords and n not in grid] + [dim])
            ds = ds.set_index({dim: grid}).unstack(dim).transpose(*grid, ...)
    return ds


# Selections below pass a dict: ``sel(method=...)`` would be taken as sel's own
# ``method`` (inexact-match) argument, not as the "method" dim of the sweeps.


def coord_values(ds: xr.Dataset, dim: str) -> list[Hashable]:
    """Coordinate values along ``dim`` as plain Python objects (for labels and ``sel``)."""
    return ds[dim].values.tolist()


def seeds_text(how: str, *datasets: xr.Dataset) -> str:
    """How the seeds were summarised, for titles: ``how`` over n seeds, or "single seed"."""
    n = max(int(ds.sizes.get("seed", 1)) for ds in datasets)
    return f"{how} over {n} seeds" if n > 1 else "single seed"


def layer_mean(da: xr.DataArray, *, same: bool = True) -> xr.DataArray:
    """Mean of a layer x layer similarity over the pairs of a layer with itself (``same``),
    or over the pairs of different layers."""
    same_layer = da["layer_a"] == da["layer_b"]
    return da.where(same_layer if same else ~same_layer).mean(["layer_a", "layer_b"])


def per_seed_over_pairs(da: xr.DataArray) -> xr.DataArray:
    """A symmetric measure of seed pairs (dims ``seed`` and ``other_seed``, each pair stored
    once) as each seed's mean over every other seed it was paired with: dim ``seed``."""
    mirrored = da.rename({"seed": "other_seed", "other_seed": "seed"})
    both = da.combine_first(mirrored)
    return both.where(both["seed"] != both["other_seed"]).mean("other_seed")


# The zoo's phase thresholds when its summary carries none (the schema's defaults).
ZOO_PHASES = {"barrier": 0.02, "path": "linear", "hessian_trace": None, "cka": 0.9}


def zoo_metrics(zoo: xr.Dataset, pairs: xr.Dataset | None = None, similarity: xr.Dataset | None = None) -> xr.Dataset:
    """Each zoo model's metrics over the zoo's axes and seed: final test accuracy, Hessian
    trace and top eigenvalue, and where its seed pairs were analysed, the test-error
    barrier (and, where the seeds' units were aligned, ``aligned_barrier``) and the mean
    matched-layer linear CKA to the other seeds of its cell."""
    out = xr.Dataset({"test_acc": final_value(zoo["test_acc"]), "hessian_trace": zoo["hessian_trace"],
                      "hessian_top_eigenvalue": zoo["hessian_top_eigenvalue"]})
    if pairs is not None:
        out["barrier"] = per_seed_over_pairs(pairs["test_error_barrier"])
        if "aligned_test_error_barrier" in pairs:
            out["aligned_barrier"] = per_seed_over_pairs(pairs["aligned_test_error_barrier"])
    if similarity is not None and "linear_cka" in similarity:
        cka = similarity["linear_cka"]
        out["cka"] = per_seed_over_pairs(layer_mean(cka))
    return out


ZOO_SCORES = {"init_ntk_condition_number": "NTK condition number", "init_ntk_alignment": "NTK alignment (centred)"}


def zoo_init_scores(zoo: xr.Dataset) -> dict[str, xr.DataArray]:
    """Each training-free score of the zoo's initialisations, by its label: the hidden-covariance
    score of each hidden layer, the NTK's condition number and its centred alignment."""
    layers = {f"hidden covariance, {layer}": zoo["init_hidden_covariance"].sel(layer=layer, drop=True)
              for layer in zoo["layer"].values.tolist()} if "init_hidden_covariance" in zoo else {}
    return {**layers, **{label: zoo[name] for name, label in ZOO_SCORES.items() if name in zoo}}


def zoo_rank_agreement(score: xr.DataArray, accuracy: xr.DataArray) -> dict[str, float]:
    """How ``score`` ranks the models by ``accuracy`` (both over the zoo's axes and seed):
    Kendall's tau and Spearman's rho over every model, and ``kendall_tau_within``, Kendall's
    tau within each training-set size and learning rate (where only the architecture and
    the seed differ: a training-free score's own question) averaged over those cells."""
    from workflow.analysis.training_free import rank_agreement

    score, accuracy = xr.broadcast(score, accuracy)
    overall = rank_agreement(score.values.ravel(), accuracy.values.ravel())
    within = [rank_agreement(score.sel(size=n, lr=lr).values.ravel(), accuracy.sel(size=n, lr=lr).values.ravel())
              for n in score["size"].values for lr in score["lr"].values]
    taus = [r["kendall_tau"] for r in within if np.isfinite(r["kendall_tau"])]
    return {"kendall_tau": overall["kendall_tau"], "spearman_rho": overall["spearman_rho"],
            "kendall_tau_within": float(np.mean(taus)) if taus else float("nan")}


ZOO_AXES = ("width", "size", "lr", "seed")  # a zoo model's coordinates

# The summaries the zoo's per-model table is built from, besides ``zoo`` (each where the study has it).
ZOO_MODEL_SOURCES = ("connectivity_seed_pairs", "similarity_seed_pairs", "manifold")


def zoo_models(zoo: xr.Dataset, connectivity_seed_pairs: xr.Dataset | None = None,
               similarity_seed_pairs: xr.Dataset | None = None, manifold: xr.Dataset | None = None) -> xr.Dataset:
    """One tidy table of the zoo, a row per model over its axes and seed: the final train,
    validation and test metrics, the Hessian's trace and top eigenvalue, the training-free
    scores of its initialisation, and where measured the mean barriers and CKA to the other
    seeds of its cell (:func:`zoo_metrics`) and its class-manifold dimension (mean over
    classes; NaN for the models not measured)."""
    out = zoo_metrics(zoo, connectivity_seed_pairs, similarity_seed_pairs)
    for name in ("train_acc", "val_acc", "train_loss", "val_loss", "test_loss"):
        if name in zoo:
            out[name] = final_value(zoo[name])
    for name in ("init_hidden_covariance", "init_ntk_condition_number", "init_ntk_alignment"):
        if name in zoo:
            out[name] = zoo[name]
    if manifold is not None:
        dimension = zoo_manifold(zoo, manifold)["class_manifold_dimension"]
        out["class_manifold_dimension"] = dimension.reindex({d: out[d] for d in dimension.dims})
    return out


def zoo_models_frame(models: xr.Dataset) -> pd.DataFrame:
    """:func:`zoo_models` as a flat table: a row per model, its ``model_path`` (relative to the
    results folder), a column per metric (a per-layer metric as one column per layer,
    ``<name>_<layer>``)."""
    from workflow.runs import run_id

    flat = {}
    for name, var in models.data_vars.items():
        extra = [d for d in var.dims if d not in ZOO_AXES]
        if extra:  # the layer
            for value in var[extra[0]].values.tolist():
                flat[f"{name}_{value}"] = var.sel({extra[0]: value}, drop=True)
        else:
            flat[str(name)] = var
    frame = xr.Dataset(flat).to_dataframe(dim_order=list(ZOO_AXES)).reset_index()
    paths = [f"{run_id('zoo', **dict(zip(ZOO_AXES, row)))}/model.pt" for row in frame[list(ZOO_AXES)].itertuples(False)]
    frame.insert(len(ZOO_AXES), "model_path", paths)
    return frame


def zoo_manifold(zoo: xr.Dataset, manifold: xr.Dataset) -> xr.Dataset:
    """The zoo models whose class-manifold dimension was measured: its mean over classes
    (``class_manifold_dimension``; NaN if a class was never reached) beside their final test
    accuracy, over the zoo's axes and seed (only the coordinates measured)."""
    dimension = manifold["class_manifold_dimension"].mean("class_label", skipna=False)
    accuracy = final_value(zoo["test_acc"]).sel({d: dimension[d] for d in ZOO_AXES})
    return xr.Dataset({"class_manifold_dimension": dimension, "test_acc": accuracy})


def zoo_phases(cells: xr.Dataset, phases: Mapping[str, float | None]) -> tuple[xr.DataArray, str] | None:
    """Each cell's phase (:func:`workflow.analysis.phases.classify`) from the seed means of
    :func:`zoo_metrics`, at the ``phases`` thresholds (a trace threshold of None: the median
    cell's; ``path``: the barrier on the straight line, or after aligning the seeds' units),
    and the thresholds in words; None without that barrier and CKA."""
    from workflow.analysis.phases import Thresholds, classify

    path = phases.get("path", "linear")
    barrier = "aligned_barrier" if path == "aligned" else "barrier"
    if barrier not in cells or "cka" not in cells:
        return None
    means = cells.mean("seed")
    trace = phases["hessian_trace"]
    thresholds = Thresholds(phases["barrier"], float(means["hessian_trace"].median()) if trace is None else trace,
                            phases["cka"])
    said = (f"{'aligned' if path == 'aligned' else 'straight-line'} barrier above {thresholds.barrier:g} (test error), "
            f"Hessian trace above {thresholds.hessian_trace:.4g}"
            + (" (the median cell's)" if trace is None else "") + f", CKA above {thresholds.cka:g}")
    return classify(means[barrier], means["hessian_trace"], means["cka"], thresholds), said
