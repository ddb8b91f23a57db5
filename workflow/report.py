"""Plain-text tables of a study's headline numbers, read from its summaries alone."""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from workflow import storage
from workflow.summaries import (ZOO_PHASES, best_over, best_runs, chosen_by, final_value, layer_mean, zoo_init_scores,
                                zoo_manifold, zoo_metrics, zoo_phases, zoo_rank_agreement)


def _final_acc(ds: xr.Dataset) -> xr.DataArray:
    return 100 * final_value(ds["test_acc"])


def _table(title: str, da: xr.DataArray, what: str = "final test accuracy (%)", digits: int = 1) -> str:
    """Mean ± std over ``seed`` (and every seed's value) for each other coordinate.

    Without a seed dim (e.g. a comparison of two seeds), the values themselves.
    """
    if "seed" not in da.dims:
        frame = da.to_series().dropna().to_frame(name="value")
        return f"{title}: {what}\n{frame.round(digits).to_string(na_rep='-')}\n"
    if len(da.dims) > 1:
        frame = da.to_series().unstack("seed")
    else:
        frame = da.to_series().to_frame(name="").T
    seeds = list(frame.columns)
    frame.columns = [f"seed {s}" for s in seeds]
    values = frame.iloc[:, : len(seeds)]
    frame["mean"] = values.mean(axis=1)
    frame["std"] = values.std(axis=1, ddof=1) if len(seeds) > 1 else 0.0
    frame = frame.dropna(subset=["mean"])
    # "-": a seed the row was not run for (stages may have different seeds), or no spread of one seed
    return f"{title}: {what}\n{frame.round(digits).to_string(na_rep='-')}\n"


# The cross-model similarity summaries besides fine-tuning's, and what their two models are.
LINEAGE_TABLES = {
    "similarity_prune": "dense vs pruned",
    "similarity_distill": "trained teacher vs student",
    "similarity_seeds": "first vs second seed",
}


def _code_of(store: Path) -> str:
    """The code a store records it was made with (:func:`workflow.storage.code_version`), as text."""
    try:
        attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return "unreadable store"
    if "git_commit" not in attrs:
        return "not recorded (made before provenance recorded its code)"
    dirty = attrs["git_dirty"]
    tree = {True: "with uncommitted changes", False: "clean"}.get(dirty, f"tree {dirty}")
    versions = ", ".join(f"{k} {v}" for k, v in attrs.get("versions", {}).items())
    return f"commit {attrs['git_commit'][:12]} ({tree}); {versions}"


def _stores(results: Path) -> list[Path]:
    """Every Zarr store of the study under ``results``, not those of another study's folder
    inside it (e.g. ``results/lottery`` within the default study's ``results``)."""
    found = []
    for folder, subfolders, _ in os.walk(results):
        here = Path(folder)
        if here != results and (here / "summary").is_dir():
            subfolders.clear()  # another study's root
            continue
        found += [here / name for name in subfolders if name.endswith(".zarr")]
        subfolders[:] = sorted(name for name in subfolders if not name.endswith(".zarr"))
    return sorted(found)


def provenance_table(results: str | Path) -> str:
    """Which code made the study's stores: each distinct commit and set of versions, with
    how many of the study's Zarr stores it made."""
    counts = Counter(_code_of(store) for store in _stores(Path(results)))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    lines = [f"  {n} store{'' if n == 1 else 's'}: {code}" for code, n in ranked]
    return "provenance: the code that made the stores\n" + "\n".join(lines) + "\n"


def _stitching_table(ds: xr.Dataset) -> str:
    """Zero-shot stitching beside what it is read against, per model (seed 0 against seed 1)."""
    columns = {
        "stitched, relative": ds["stitched_acc"].sel(space="relative"),
        "on seed 0, relative": ds["classifier_acc_a"].sel(space="relative"),
        "stitched, absolute": ds["stitched_acc"].sel(space="absolute"),
        "on seed 0, absolute": ds["classifier_acc_a"].sel(space="absolute"),
        "seed 0's own head": ds["model_acc_a"],
    }
    table = xr.concat([100 * da.drop_vars("space", errors="ignore") for da in columns.values()],
                      dim=xr.DataArray(list(columns), dims="column"))
    frame = table.to_series().unstack("column")[list(columns)].dropna(how="all")
    return ("zero-shot stitching: test accuracy (%) of a ridge classifier fitted on seed 0's training "
            "representations\n(the head's inputs; not the model's own head), applied to seed 1's test "
            "representations (stitched)\nand to seed 0's own (on seed 0); the model's own head beside them (a pretrained "
            "model's head is its source task's)\n"
            f"{frame.round(1).to_string(na_rep='-')}\n")


def _distill_chosen(ds: xr.Dataset) -> str:
    """Each student's test accuracy at the temperature and alpha chosen per subset and
    teacher (on validation where the task has a validation set), with the choices."""
    by, how = chosen_by(ds)
    dims = ("temperature", "alpha")
    best = 100 * best_runs(ds["test_acc"], dims, by=by)
    _, where = best_over(ds["test_acc"], dims, by=by)
    choices = where.to_dataframe().dropna(how="all")
    return (_table(f"data pruning with distillation, at the T and alpha {how}", best)
            + f"T and alpha {how}:\n{choices.to_string()}\n")


def _random_teacher_table(ds: xr.Dataset) -> str:
    """The linear probe of each random teacher's students, beside the teacher's own."""
    parts = []
    for split in ("val", "test"):
        if f"probe_{split}_acc" not in ds:
            continue
        probes = xr.concat([100 * ds[f"probe_{split}_acc"], 100 * ds[f"teacher_probe_{split}_acc"]],
                           dim=xr.DataArray(["student", "teacher"], dims="network"))
        parts.append(_table("random teachers: a linear probe (ridge on the training set) of the penultimate "
                            "features, by the student's starting noise", probes, f"{split} accuracy (%)"))
    return "".join(parts)


def _zoo_tables(ds: xr.Dataset, pairs: xr.Dataset | None, similarity: xr.Dataset | None,
                manifold: xr.Dataset | None = None) -> list[str]:
    """A zoo's grids (width x size rows, learning rate columns; means over seeds) of its
    metrics (:func:`workflow.summaries.zoo_metrics`), each cell's phase where the seed pairs
    were analysed, and how each training-free score of the initialisations ranks the
    trained models (Kendall's tau and Spearman's rho with final test accuracy)."""
    from workflow.analysis.phases import PHASES

    cells = zoo_metrics(ds, pairs, similarity)
    labels = {"test_acc": ("final test accuracy (%)", 100, 1), "hessian_trace": ("Hessian trace", 1, 2),
              "hessian_top_eigenvalue": ("Hessian top eigenvalue", 1, 2),
              "barrier": ("test-error barrier to the other seeds (points)", 100, 2),
              "aligned_barrier": ("test-error barrier to the other seeds, their units aligned (points)", 100, 2),
              "cka": ("linear CKA to the other seeds, mean over matched layers", 1, 2)}
    parts = []
    for name, (what, scale, digits) in labels.items():
        if name in cells:
            frame = (scale * cells[name]).mean("seed").to_series().unstack("lr")
            parts.append(f"zoo: {what}, mean over {ds.sizes['seed']} seeds (rows: width, size; columns: lr)\n"
                         f"{frame.round(digits).to_string()}\n")
    accuracy = cells["test_acc"]
    rows = {label: zoo_rank_agreement(score, accuracy) for label, score in zoo_init_scores(ds).items()}
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("score")
    parts.append(f"zoo: training-free scores at initialisation against final test accuracy, over all "
                 f"{accuracy.size} models, and within each size and learning rate (over widths and seeds; "
                 f"the mean over those cells)\n{frame.round(3).to_string()}\n")
    if (found := zoo_phases(cells, ds.attrs.get("phases") or ZOO_PHASES)) is not None:
        phase, said = found
        parts.append(f"zoo: phase of each cell ({said})\n{phase.to_series().unstack('lr').to_string()}\n"
                     + "".join(f"  {name}: {text}\n" for name, text in PHASES.items()))
    if manifold is not None:
        parts += _zoo_manifold_tables(ds, manifold)
    return parts


def _zoo_manifold_tables(ds: xr.Dataset, manifold: xr.Dataset) -> list[str]:
    """The class-manifold dimension of the zoo models measured (mean over classes and seeds;
    rows: width, size; columns: lr), and how it ranks with test accuracy and with the
    training-set size (Kendall's tau and Spearman's rho over the models; for the size,
    within each width and learning rate, averaged)."""
    from workflow.analysis.training_free import rank_agreement

    measured = zoo_manifold(ds, manifold)
    dimension, accuracy = measured["class_manifold_dimension"], measured["test_acc"]
    frame = xr.Dataset({"dimension": dimension.mean("seed"), "test_acc_%": 100 * accuracy.mean("seed")}
                       ).to_dataframe(dim_order=["width", "size", "lr"]).unstack("lr")
    with_acc = rank_agreement(dimension.values.ravel(), accuracy.values.ravel())
    with_size = [rank_agreement(dimension.sel(width=w, lr=lr).values.ravel(),
                                dimension["size"].broadcast_like(dimension.sel(width=w, lr=lr)).values.ravel())
                 for w in dimension["width"].values for lr in dimension["lr"].values]
    rows = pd.DataFrame({"kendall_tau": [with_acc["kendall_tau"], np.nanmean([r["kendall_tau"] for r in with_size])],
                         "spearman_rho": [with_acc["spearman_rho"],
                                          np.nanmean([r["spearman_rho"] for r in with_size])]},
                        index=[f"with test accuracy (all {dimension.size} models)",
                               "with training-set size (within each width and lr, mean)"])
    dims = manifold["subspace_dim"].values.tolist()
    settings = manifold.attrs.get("manifold", {})
    return [f"zoo: class-manifold dimension (input dimension {int(manifold['input_dim'].max())} minus the "
            f"smallest subspace dimension, of {dims}, reaching the class at probability "
            f"{settings.get('threshold', '?')} in half of {settings.get('trials', '?')} trials; mean over classes and "
            f"{manifold.sizes['seed']} seeds) and test accuracy\n{frame.round(1).to_string()}\n",
            f"zoo: rank correlation of the class-manifold dimension\n{rows.round(3).to_string()}\n"]


def report(results: str | Path) -> str:
    """Tables for every summary present under ``results/summary``, as plain text."""
    return "\n".join(report_parts(results))


def report_html(results: str | Path, title: str = "Tables") -> str:
    """The tables of :func:`report` as an HTML page: each under its heading, in a fixed-width
    block, as the terminal shows them (for Snakemake's report, and to send)."""
    sections = []
    for part in report_parts(results):
        heading, _, body = part.partition("\n")
        sections.append(f"<h3>{html.escape(heading)}</h3>\n<pre>{html.escape(body)}</pre>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body>\n<h2>{html.escape(title)}</h2>\n" + "\n".join(sections) + "\n</body></html>\n")


def report_parts(results: str | Path) -> list[str]:
    """Each table of :func:`report` (its title on the first line), in the report's order."""
    summary = Path(results) / "summary"
    parts = []

    def have(name: str) -> xr.Dataset | None:
        path = summary / f"{name}.zarr"
        return storage.open_dataset(path) if path.exists() else None

    if (ds := have("pretrain")) is not None:
        parts.append(_table("pretrain (source task)", _final_acc(ds)))
    if (ds := have("finetune")) is not None:
        parts.append(_table("finetune (target task)", _final_acc(ds)))
        if "trainable_params" in ds:
            parts.append(_table("finetune", ds["trainable_params"], "trainable parameters"))
    if (ds := have("data_pruning")) is not None:
        parts.append(_table("data pruning, no distillation", _final_acc(ds)))
    if (ds := have("distill")) is not None:
        parts.append(_table("data pruning with distillation", _final_acc(ds)))
        if ds.sizes["temperature"] * ds.sizes["alpha"] > 1:  # a choice to make
            parts.append(_distill_chosen(ds))
    if (ds := have("zoo")) is not None:
        parts += _zoo_tables(ds, have("connectivity_seed_pairs"), have("similarity_seed_pairs"), have("manifold"))
    if (ds := have("random_teacher")) is not None:
        parts.append(_random_teacher_table(ds))
    if (ds := have("network_pruning")) is not None:
        density = 100 * ds["density"].mean([d for d in ds["density"].dims if d != "level"])
        remaining = ", ".join(f"{lv}: {d:.1f}" for lv, d in zip(ds["level"].values, density.values))
        parts.append(_table("network pruning", _final_acc(ds)) + f"weights remaining per level (%): {remaining}\n")
    if (ds := have("wiseft")) is not None:
        parts.append(_table("WiSE-FT (alpha 0: linear probe, 1: fine-tuned)", 100 * ds["test_acc"], "test accuracy (%)"))
        if "val_acc" in ds:
            best, where = best_over(ds["test_acc"], ("alpha",), by=ds["val_acc"])
            parts.append(_table("WiSE-FT at the alpha chosen on validation (mean over seeds)", 100 * best,
                                "test accuracy (%)")
                         + "alpha chosen: " + ", ".join(f"{m}: {a:g}" for m, a in
                                                        zip(where["model"].values, where["alpha"].values)) + "\n")
    if (ds := have("ensemble")) is not None:
        members = 100 * ds["member_acc"]
        rows = {"mean member": members.mean("member"), "best member": members.max("member"),
                "ensemble": 100 * ds["ensemble_acc"], "uniform soup": 100 * ds["soup_acc"]}
        if "greedy_soup_acc" in ds:  # built on the validation set
            best = ds["member_val_acc"].argmax("member")
            rows["member best on validation"] = members.isel(member=best)
            rows["greedy soup (chosen on validation)"] = 100 * ds["greedy_soup_acc"]
        combined = xr.concat(list(rows.values()), dim=xr.DataArray(list(rows), dims="model"))
        parts.append(_table("ensembles and soups", combined, "test accuracy (%)"))
        if "greedy_soup_member" in ds:
            size = ds["greedy_soup_member"].sum("member")
            parts.append(_table("greedy soups", size, "members kept (of "
                                f"{ds.sizes['member']}, in order of validation accuracy)", 1))
    if (ds := have("similarity")) is not None:
        for measure in ds.data_vars:
            parts.append(_table("similarity, pretrained vs fine-tuned, mean over matched layers",
                                layer_mean(ds[measure]), measure, 3))
    for name, models in LINEAGE_TABLES.items():
        if (ds := have(name)) is not None and "linear_cka" in ds:
            parts.append(_table(f"similarity, {models}, mean over matched layers",
                                layer_mean(ds["linear_cka"]), "linear_cka", 3))
    if (ds := have("similarity_within")) is not None and "linear_cka" in ds:
        # Each layer with itself is 1 by construction: how alike the different layers are says more.
        parts.append(_table("similarity within each model, mean over pairs of different layers",
                            layer_mean(ds["linear_cka"], same=False), "linear_cka", 3))
    if (ds := have("spectra")) is not None:
        parts.append(_table("spectra", ds["ntk_condition_number"], "NTK condition number"))
        parts.append(_table("spectra", ds["hessian_eigenvalues"].isel(hessian_eig=0), "top Hessian eigenvalue"))
        parts.append(_table("spectra", ds["hessian_trace"], "Hessian trace (Hutchinson)"))
        if "representation_entropy" in ds:
            parts.append(_table("spectra", ds["representation_entropy"], "effective rank of representations (entropy)"))
    if (ds := have("relative")) is not None:
        for measure in ds["measure"].values:
            parts.append(_table("seed 0 vs seed 1, absolute and relative representations",
                                ds["similarity"].sel({"measure": measure}), str(measure), 3))
        parts.append(_stitching_table(ds))
    if (ds := have("connectivity")) is not None:
        whats = {"test_error_barrier": "barrier: test error's rise above the line between the ends (points)",
                 "test_error_max_minus_mean_of_ends": "test error's max minus the mean of the ends "
                                                      "(Frankle et al.; points)"}
        for name, what in whats.items():
            if name in ds:
                parts.append(_table("mode connectivity", 100 * ds[name], what))
    if not parts:
        raise FileNotFoundError(f"no summaries under {summary}; run the study first")
    parts.append(provenance_table(results))
    return parts
