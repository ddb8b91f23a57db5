"""Figures of representational similarity: how similar each layer stays along the
lineage (fine-tuning, pruning, distillation, another seed) and between the layers of one model."""

from __future__ import annotations

from functools import partial
from itertools import product
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workflow.plots.drawing import (
    PRETRAINED,
    PRUNING_LABELS,
    SOURCE_LABELS,
    Run,
    distinct_colours,
    layer_heatmaps,
    legend,
    log_axis,
    no_data,
    panel_grid,
    plot_band,
    run_key,
    run_lines,
    selection_colours,
)
from workflow.runs import NO_SOURCE
from workflow.summaries import coord_values, crossed, over_seeds, quiet_mean, seeds_text

# The measures of the similarity summary, in drawing order, and their names on the axes.
SIMILARITY_LABELS = {
    "linear_cka": "linear CKA",
    "debiased_cka": "debiased linear CKA",
    "rbf_cka": "RBF CKA",
    "svcca": "SVCCA",
    "pwcca": "PWCCA",
    "procrustes": "Procrustes distance",
}

# Measures that are distances (0: unchanged); the others are similarities (1: unchanged).
DISTANCES = frozenset({"procrustes"})


def _matched_layers(da: xr.DataArray) -> tuple[xr.DataArray, list[Hashable]]:
    """``da`` at layer_a == layer_b (dim ``layer``), and those layers in layer_a's order."""
    names_b = set(coord_values(da, "layer_b"))
    layers = [layer for layer in coord_values(da, "layer_a") if layer in names_b]
    index = xr.DataArray(layers, dims="layer")
    return da.sel({"layer_a": index, "layer_b": index}), layers


def _matched_panel(ax: Axes, da: xr.DataArray, runs: Sequence[Run]) -> None:
    """Each run's similarity of every layer with the same layer of the other model, against the layer."""
    matched, layers = _matched_layers(da)
    for where, label, style in runs:
        plot_band(ax, np.arange(len(layers)), over_seeds(matched.sel(where)),
                  marker="o", markersize=3, label=label, **style)
    if not matched.notnull().any():
        no_data(ax)
    names = [str(layer) for layer in layers]
    # Slanted when they would not fit side by side (about 6.4 in for 11 characters an inch).
    slant = {"rotation": 45, "ha": "right"} if len("".join(names)) + 2 * len(names) > 60 else {}
    ax.set_xticks(np.arange(len(layers)), names, **slant)
    ax.grid(alpha=0.3)


def similarity(ds: xr.Dataset) -> Figure:
    """Similarity of each layer to itself before and after fine-tuning, one panel per measure.

    Panels: the measures present (procrustes is a distance, the others similarities), in a
    grid of up to three columns; one line per (source, method), colour per method and line
    style per source.
    """
    ds = crossed(ds)
    measures = [m for m in SIMILARITY_LABELS if m in ds]
    runs = run_lines(ds, measures, "finetuning")
    fig, axes = panel_grid(len(measures), (5.0, 3.0))
    for ax, measure in zip(axes, measures):
        _matched_panel(ax, ds[measure], runs)
        distance = measure in DISTANCES
        ax.axhline(0.0 if distance else 1.0, color="grey", linestyle=":", linewidth=0.8, zorder=0)
        ax.set_ylabel("distance" if distance else "similarity")
        what = "distance, 0 = unchanged" if distance else "similarity, 1 = unchanged"
        ax.set_title(f"{SIMILARITY_LABELS[measure]} ({what})", fontsize="medium")
        ax.set_xlabel("layer (pretrained vs the same layer fine-tuned)", fontsize="small")
    if not measures:
        axes[0].set_axis_on()
        no_data(axes[0], "no similarity measures")
    run_key(fig, runs, "fine-tuning")
    how = seeds_text("mean line, min–max band", ds)
    fig.suptitle(f"Which layers fine-tuning changes: matched-layer similarity\n({how})",
                 fontsize="medium")
    return fig


# The measure the lineage and within-model figures draw.
LINEAGE_MEASURE = "linear_cka"


def _mean_matched(da: xr.DataArray) -> xr.DataArray:
    """Mean over layers of each layer's similarity with the same layer of the other model."""
    matched, _ = _matched_layers(da)
    return quiet_mean(matched, "layer")


def _sweep_panel(ax: Axes, mean: xr.DataArray, x: str, by: str, labels: Mapping[Hashable, str]) -> None:
    """``mean`` (dims: ``by``, ``x``, seed) against ``x``: a line per method (along ``by``), seeds
    as a band; data-pruning selections in their colours of the data-pruning figures."""
    methods = coord_values(mean, by)
    colours = selection_colours(methods) if by == "selection" else distinct_colours(methods)
    for method in methods:
        plot_band(ax, mean[x].values, over_seeds(mean.sel({by: method})), color=colours[method],
                  marker="o", markersize=3, label=labels.get(str(method), str(method)))
    ax.grid(alpha=0.3)


def _layer_panels(ds: xr.Dataset, dim: str, title: str) -> list[tuple[str, Callable[[Axes], None]]]:
    """One panel: matched-layer CKA by layer, a line per (source, ``dim``) as in :func:`similarity`."""
    ds = crossed(ds)
    runs = run_lines(ds, [LINEAGE_MEASURE], dim)

    def draw(ax: Axes) -> None:
        _matched_panel(ax, ds[LINEAGE_MEASURE], runs)
        ax.set_xlabel("layer")

    return [(title, draw)]


def _lineage_prune(ds: xr.Dataset) -> list[tuple[str, Callable[[Axes], None]]]:
    """Dense -> pruned panels, one per rewind step: mean matched-layer CKA against the level, a line per method."""
    mean = _mean_matched(ds[LINEAGE_MEASURE])
    panels = []
    for rewind in coord_values(ds, "rewind"):
        def draw(ax: Axes, rewind: Hashable = rewind) -> None:
            _sweep_panel(ax, mean.sel({"rewind": rewind}), "level", "pruning", PRUNING_LABELS)
            levels = mean["level"].values
            # Every level ticked, with room around them (also for a study of one level).
            ax.set_xticks(levels)
            ax.set_xlim(levels.min() - 0.5, levels.max() + 0.5)
            ax.set_xlabel("pruning level n (keeps (1 − fraction)ⁿ of the weights)")

        panels.append((f"dense → pruned, rewound to step {rewind}", draw))
    return panels


def _lineage_distill(ds: xr.Dataset) -> list[tuple[str, Callable[[Axes], None]]]:
    """Teacher -> student panels, one per (temperature, alpha): mean matched-layer CKA against
    the kept fraction, a line per data-pruning method."""
    mean = _mean_matched(ds[LINEAGE_MEASURE])
    if "teacher" in mean.dims:  # only the trained teacher is a stored model to compare with
        mean = mean.sel({"teacher": "trained"})
    panels = []
    for temperature, alpha in product(coord_values(ds, "temperature"), coord_values(ds, "alpha")):
        panel = mean.sel({"temperature": temperature, "alpha": alpha})
        if not panel.notnull().any():
            continue

        def draw(ax: Axes, panel: xr.DataArray = panel) -> None:
            _sweep_panel(ax, panel, "fraction", "selection", {})
            log_axis(ax, "x", ticks=panel["fraction"].values)
            ax.set_xlabel("fraction of the training set kept (log scale)")

        panels.append((f"trained teacher → student (T = {temperature:g}, α = {alpha:g})", draw))
    return panels


# The lineage's edges in drawing order: the summary of each kind, and its panels.
LINEAGE: dict[str, Callable[[xr.Dataset], list[tuple[str, Callable[[Axes], None]]]]] = {
    "similarity": partial(_layer_panels, dim="finetuning", title="pretrained → fine-tuned"),
    "similarity_prune": _lineage_prune,
    "similarity_distill": _lineage_distill,
    "similarity_seeds": partial(_layer_panels, dim="finetuning", title="first seed ↔ second seed of the same run"),
}


def lineage(**summaries: xr.Dataset) -> Figure:
    """Cross-model similarity along the lineage: how much of each layer survives every edge.

    Takes the similarity summaries by name (those of :data:`LINEAGE` the study has);
    panels in a grid, those of an edge kind together: pretrained -> fine-tuned and seed <-> seed
    by layer; dense -> pruned (per rewind step) against the pruning level and teacher
    -> student (per temperature and alpha) against the kept fraction, averaged over
    layers. Each value is the linear CKA of a layer with the same layer of the other
    model; seeds as min–max bands.
    """
    # Every panel in reading order (a kind's panels together), laid out in a grid of at most
    # three columns, each with its own legend beneath it: a tall column of panels with the
    # legends beside them leaves the panels narrow.
    panels: list[tuple[str, str, Callable[[Axes], None] | None]] = []
    for name, build in LINEAGE.items():
        if name in summaries:
            built = build(summaries[name]) if LINEAGE_MEASURE in summaries[name] else []
            panels += [(name, title, draw) for title, draw in built] or [(name, "", None)]
    fig, axes = panel_grid(len(panels), (4.6, 4.6))
    if not panels:
        axes[0].set_axis_on()
        no_data(axes[0], "no similarity summaries")
    for ax, (name, title, draw) in zip(axes, panels):
        ax.set_axis_on()
        if draw is None:
            no_data(ax, f"{name}: no {SIMILARITY_LABELS[LINEAGE_MEASURE]}")
            continue
        draw(ax)
        ax.set_ylim(0.0, 1.05)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8, zorder=0)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("linear CKA, same layer" if name in ("similarity", "similarity_seeds")
                      else "linear CKA, mean over layers")
        legend(ax, below=True, fontsize="small")
    # The seed-pair panel compares one pair of seeds: it has no band and no seeds to count.
    seeded = [ds for name, ds in summaries.items() if name != "similarity_seeds"]
    if seeded:
        how = seeds_text("mean line, min–max band", *seeded)
        if "similarity_seeds" in summaries:
            how += "; seed pairs: one line each"
    elif summaries:
        how = "the first two seeds of each run"
    else:
        how = "no data"
    fig.suptitle("Cross-model similarity along the lineage: linear CKA of each layer with the same layer "
                 f"of the other model\n(1 = the same representation up to rotation and scale; {how})",
                 fontsize="medium")
    return fig


def similarity_within(ds: xr.Dataset) -> Figure:
    """Linear CKA between every two layers of each pretrained and fine-tuned model (its first seed).

    A row per pretraining source ("none": scratch), a column per model.
    """
    ds = crossed(ds)
    runs = run_lines(ds, [LINEAGE_MEASURE], "finetuning")
    cells = {}
    for where, label, _ in runs:
        da = ds[LINEAGE_MEASURE].sel(where)
        seed = next(s for s in coord_values(da, "seed") if bool(da.sel({"seed": s}).notnull().any()))
        cells[(where["source"], where["finetuning"])] = (f"{label} (seed {seed})", da.sel({"seed": seed}))
    # The pretrained model first, and no pretraining (scratch) last, as in the spectra figure.
    models = sorted(coord_values(ds, "finetuning"), key=lambda m: m != PRETRAINED)
    sources = sorted(coord_values(ds, "source"), key=lambda src: src == NO_SOURCE)
    fig = layer_heatmaps(cells, sources, models, xlabel="layer",
                         ylabel=lambda source: f"layer ({SOURCE_LABELS.get(str(source), source)})",
                         label="linear CKA")
    fig.suptitle("Linear CKA between the layers of each model (each model's first seed)")
    return fig
