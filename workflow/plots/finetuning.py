"""Figures of pretraining and fine-tuning: training curves, CKA heatmaps, accuracy per
fine-tuning method, WiSE-FT interpolation, ensembles and soups."""

from __future__ import annotations

from itertools import product
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.plots.drawing import (
    distinct_colours,
    heatmap,
    key,
    legend,
    log_axis,
    new_figure,
    no_data,
    plot_band,
)
from workflow.plots.summaries import coord_values, final_value, over_seeds, seeds_text


LOSS_LABEL = "cross-entropy loss (nats)"
PRETRAIN_COLOUR = "black"
# "scratch" is not fine-tuned at all: it is the no-pretraining baseline.
FINETUNE_LABELS = {"scratch": "from scratch (baseline)"}
# Line styles and markers of the pretraining sources, in config order; the last is
# "none" (scratch) when present.
SOURCE_STYLES = ("-", "--", ":", "-.")
SOURCE_MARKERS = ("o", "s", "^", "D", "v", "P")


def source_method_pairs(ds: xr.Dataset, var: str) -> list[tuple[Hashable, Hashable]]:
    """The (source, method) pairs of a fine-tuning summary that have values of ``var``.

    A summary holds every source x method combination; scratch exists only under
    source "none", and the other methods only under real sources.
    """
    present = ds[var].notnull().any([d for d in ds[var].dims if d not in ("source", "method")])
    return [(src, m) for src in coord_values(ds, "source") for m in coord_values(ds, "method")
            if bool(present.sel({"source": src, "method": m}))]


def finetune_label(source: Hashable, method: Hashable, n_sources: int) -> str:
    """"from scratch (baseline)", "fine-tune: full", or "synthetic → full" with several sources."""
    if method in FINETUNE_LABELS:
        return FINETUNE_LABELS[str(method)]
    return f"{source} → {method}" if n_sources > 1 else f"fine-tune: {method}"


def source_styles(sources: Sequence[Hashable]) -> dict[Hashable, tuple[str, str]]:
    """Line style and marker of each source (scratch's "none" included)."""
    return {src: (SOURCE_STYLES[i % len(SOURCE_STYLES)], SOURCE_MARKERS[i % len(SOURCE_MARKERS)])
            for i, src in enumerate(sources)}


def training_curves(pretrain: xr.Dataset, finetune: xr.Dataset) -> Figure:
    """Train/test loss and accuracy against epoch for pretraining and each fine-tuning method."""
    sources = coord_values(pretrain, "source")
    styles = source_styles(list(dict.fromkeys(sources + coord_values(finetune, "source"))))
    runs: list[tuple[str, xr.Dataset, Any, str]] = [
        (f"pretrain: {src}" if len(sources) > 1 else "pretrain", pretrain.sel({"source": src}),
         PRETRAIN_COLOUR, styles[src][0])
        for src in sources
    ]
    colours = distinct_colours(coord_values(finetune, "method"))
    runs += [
        (finetune_label(src, m, len(sources)), finetune.sel({"source": src, "method": m}), colours[m], styles[src][0])
        for src, m in source_method_pairs(finetune, "test_acc")
    ]

    fig, axes = new_figure(2, 2, (4.6, 3.2))
    panels = [("loss", LOSS_LABEL, 1.0), ("acc", "accuracy (%)", 100.0)]
    for row, (metric, ylabel, scale) in enumerate(panels):
        for col, split in enumerate(("train", "test")):
            ax = axes[row, col]
            for label, ds, colour, style in runs:
                stats = over_seeds(ds[f"{split}_{metric}"] * scale)
                plot_band(ax, ds["epoch"].values, stats, color=colour, linestyle=style, label=label)
            ax.set_title(f"{split} {'loss' if metric == 'loss' else 'accuracy'}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    legend(axes[0, 0], outside=True)
    how = seeds_text("mean line, min–max band", pretrain, finetune)
    fig.suptitle(f"Training curves: pretraining and fine-tuning ({how})")
    return fig


def layer_heatmaps(
    cells: Mapping[tuple[Hashable, Hashable], tuple[str, xr.DataArray]],
    rows: Sequence[Hashable],
    columns: Sequence[Hashable],
    *,
    xlabel: str,
    ylabel: Callable[[Hashable], str],
    label: str,
) -> Figure:
    """Annotated layer x layer heatmaps on [0, 1]: a row per source, a column per method or model.

    ``cells``: (row, column) -> (panel title, values with dims ``layer_a``, ``layer_b``);
    the other panels are left blank. ``ylabel(row)`` labels the first panel drawn in a
    row; ``label`` is the colour bar's.
    """
    if not cells:
        fig, axes = new_figure(1, 1, (4.0, 3.0))
        no_data(axes[0, 0])
        return fig
    first = next(iter(cells.values()))[1]
    n_a, n_b = first.sizes["layer_a"], first.sizes["layer_b"]
    # Cells big enough for their annotation; shrink text only for many layers.
    cell = 0.55 if max(n_a, n_b) <= 8 else 0.45
    fig, axes = new_figure(
        len(rows), len(columns), (max(3.2, cell * n_b + 1.4), max(3.0, cell * n_a + 1.2))
    )
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    fontsize = 8 if max(n_a, n_b) <= 8 else 6
    image, labelled = None, set()
    for (i, row), (j, column) in product(enumerate(rows), enumerate(columns)):
        ax = axes[i, j]
        if (row, column) not in cells:
            ax.set_axis_off()
            continue
        title, values = cells[(row, column)]
        # Dark text on the bright end of viridis, light text elsewhere.
        image = heatmap(ax, values.transpose("layer_a", "layer_b").values, cmap=cmap, vmin=0.0, vmax=1.0,
                        fontsize=fontsize, text_colour=lambda v: "black" if v > 0.6 else "white")
        ax.set_xticks(range(values.sizes["layer_b"]), [str(v) for v in values["layer_b"].values],
                      rotation=45, ha="right")
        ax.set_yticks(range(values.sizes["layer_a"]), [str(v) for v in values["layer_a"].values])
        ax.set_xlabel(xlabel)
        if row not in labelled:  # the first panel of the row that is drawn
            ax.set_ylabel(ylabel(row))
            labelled.add(row)
        ax.set_title(title)
    fig.colorbar(image, ax=axes.ravel().tolist(), label=label, shrink=0.9)
    return fig


def cka_heatmaps(ds: xr.Dataset) -> Figure:
    """Linear CKA between pretrained (y) and fine-tuned (x) layers: a row of heatmaps per source, one per method."""
    sources = coord_values(ds, "source")
    mean = over_seeds(ds["linear_cka"]).mean
    cells = {
        (source, method): (finetune_label(source, method, len(sources)),
                           mean.sel({"source": source, "method": method}))
        for source, method in source_method_pairs(ds, "linear_cka")
    }
    fig = layer_heatmaps(cells, sources, coord_values(ds, "method"), xlabel="fine-tuned layer",
                         ylabel=lambda source: f"pretrained layer ({source})", label="linear CKA")
    how = seeds_text("mean", ds)
    fig.suptitle(f"Linear CKA: pretrained vs fine-tuned representations ({how})")
    return fig


def finetune_methods(finetune: xr.Dataset) -> Figure:
    """Final test accuracy of each fine-tuning method from each source against the parameters it trains.

    Colour: method; marker: pretraining source ("none": scratch).
    """
    fig, axes = new_figure(1, 1, (6.4, 4.4))
    ax = axes[0, 0]
    acc = 100.0 * final_value(finetune["test_acc"])
    methods, sources = coord_values(finetune, "method"), coord_values(finetune, "source")
    colours, styles = distinct_colours(methods), source_styles(sources)
    pairs = source_method_pairs(finetune, "test_acc")
    for source, method in pairs:
        where = {"source": source, "method": method}
        stats = over_seeds(acc.sel(where))
        count = over_seeds(finetune["trainable_params"].sel(where)).mean
        x, y, err = float(count), float(stats.mean), float(stats.std)
        if np.isfinite(x) and np.isfinite(y):
            ax.errorbar([x], [y], yerr=[err], marker=styles[source][1], capsize=3, color=colours[method])
            ax.annotate(str(method), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    log_axis(ax, "x")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(which="both", alpha=0.3)
    if not pairs:
        no_data(ax)
    drawn = dict.fromkeys(m for _, m in pairs)
    key(fig, "method", [Line2D([], [], color=colours[m], marker="o", linestyle="", label=str(m)) for m in drawn],
        "outside right upper")
    key(fig, "source", [Line2D([], [], color="grey", marker=styles[src][1], linestyle="", label=str(src))
                        for src in dict.fromkeys(src for src, _ in pairs)], "outside right lower")
    fig.suptitle(f"Fine-tuning: accuracy per trainable parameter\n({seeds_text('mean ± std', finetune)})",
                 fontsize="medium")
    return fig


def wiseft(ds: xr.Dataset) -> Figure:
    """WiSE-FT: test accuracy of the interpolated weights against alpha, one panel per source, a line per method."""
    sources, methods = coord_values(ds, "source"), coord_values(ds, "method")
    colours = distinct_colours(methods)
    fig, axes = new_figure(1, len(sources), (5.2, 4.2))
    for ax, source in zip(axes[0], sources):
        for method in methods:
            stats = over_seeds(100.0 * ds["test_acc"].sel({"source": source, "method": method}))
            plot_band(ax, ds["alpha"].values, stats, color=colours[method], marker="o", markersize=3,
                      label=f"linear probe → {method}")
        ax.set_xlabel("α  (0: linear probe, 1: fine-tuned)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"pretrained on {source}", fontsize="medium")
        ax.grid(alpha=0.3)
        legend(ax, fontsize="small")
    fig.suptitle(f"WiSE-FT: weights (1 − α) θ₀ + α θ₁ ({seeds_text('mean, band min–max', ds)})")
    return fig


ENSEMBLE_BARS = {"best member": None, "mean member": None, "ensemble": "ensemble_acc", "uniform soup": "soup_acc"}


def ensembles(ds: xr.Dataset) -> Figure:
    """Single models against their ensemble and their uniform soup, per source and kind of ensemble."""
    groups = [(src, kind) for src in coord_values(ds, "source") for kind in coord_values(ds, "kind")]
    fig, axes = new_figure(1, 1, (max(6.4, 1.6 * len(groups) + 2.0), 4.4))
    ax = axes[0, 0]
    colours = distinct_colours(ENSEMBLE_BARS)
    width = 0.8 / len(ENSEMBLE_BARS)
    members = 100.0 * ds["member_acc"]
    for i, (bar, var) in enumerate(ENSEMBLE_BARS.items()):
        if var is not None:
            values = 100.0 * ds[var]
        else:
            values = members.max("member") if bar == "best member" else members.mean("member")
        stats = over_seeds(values)
        means = [float(stats.mean.sel({"source": s, "kind": k})) for s, k in groups]
        stds = [float(stats.std.sel({"source": s, "kind": k})) for s, k in groups]
        x = np.arange(len(groups)) + (i - (len(ENSEMBLE_BARS) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, color=colours[bar], label=bar)
    n = int(ds.sizes.get("member", 0))
    ax.set_xticks(np.arange(len(groups)), [f"{s}: {k}\n({n} members)" for s, k in groups])
    low = float(np.nanmin(members.values))
    ax.set_ylim(max(0.0, low - 5.0), None)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    legend(ax, fontsize="small")
    ax.set_title(f"Ensembles and soups from one pretrained checkpoint ({seeds_text('mean ± std', ds)})",
                 fontsize="medium")
    return fig
