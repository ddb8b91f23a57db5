"""Figures of pretraining and fine-tuning: training curves, CKA heatmaps, accuracy per
fine-tuning method, WiSE-FT interpolation, ensembles and soups, and how far the weights travel."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.plots.drawing import (
    PRETRAIN_COLOUR,
    SOURCE_LABELS,
    distinct_colours,
    dodge,
    finetune_colours,
    finetune_label,
    key,
    layer_heatmaps,
    legend,
    log_axis,
    new_figure,
    no_data,
    plot_band,
    present_pairs,
    run_lines,
    source_styles,
)
from workflow.runs import NO_SOURCE
from workflow.summaries import best_over, chosen_by, coord_values, crossed, final_value, over_seeds, seeds_text

LOSS_LABEL = "cross-entropy loss (nats)"


def training_curves(pretrain: xr.Dataset, finetune: xr.Dataset) -> Figure:
    """Train/test loss and accuracy against epoch for pretraining and each fine-tuning method."""
    finetune = crossed(finetune)
    sources = coord_values(pretrain, "source")
    styles = source_styles(list(dict.fromkeys(sources + coord_values(finetune, "source"))))
    runs: list[tuple[str, xr.Dataset, Any, str]] = [
        (f"pretrain: {src}" if len(sources) > 1 else "pretrain", pretrain.sel({"source": src}),
         PRETRAIN_COLOUR, styles[src][0])
        for src in sources
    ]
    colours = finetune_colours(coord_values(finetune, "finetuning"))
    runs += [
        (finetune_label(src, m, len(sources)), finetune.sel({"source": src, "finetuning": m}), colours[m], styles[src][0])
        for src, m in present_pairs(finetune, ["test_acc"], "finetuning")
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


def cka_heatmaps(ds: xr.Dataset) -> Figure:
    """Linear CKA between pretrained (y) and fine-tuned (x) layers: a row of heatmaps per source, one per method."""
    ds = crossed(ds)
    sources = coord_values(ds, "source")
    mean = over_seeds(ds["linear_cka"]).mean
    cells = {
        (source, method): (finetune_label(source, method, sum(src != NO_SOURCE for src in sources)),
                           mean.sel({"source": source, "finetuning": method}))
        for source, method in present_pairs(ds, ["linear_cka"], "finetuning")
    }
    fig = layer_heatmaps(cells, sources, coord_values(ds, "finetuning"), xlabel="fine-tuned layer",
                         ylabel=lambda source: f"pretrained layer ({source})", label="linear CKA")
    how = seeds_text("mean", ds)
    fig.suptitle(f"Linear CKA: pretrained vs fine-tuned representations ({how})")
    return fig


def finetune_methods(finetune: xr.Dataset) -> Figure:
    """Final test accuracy of each fine-tuning method from each source against the parameters it trains.

    Colour: method; marker: pretraining source ("no pretraining": scratch and the random-feature
    methods); methods offset slightly along the axis, so that equal counts stay visible.
    """
    finetune = crossed(finetune)
    fig, axes = new_figure(1, 1, (6.4, 4.4))
    ax = axes[0, 0]
    acc = 100.0 * final_value(finetune["test_acc"])
    methods, sources = coord_values(finetune, "finetuning"), coord_values(finetune, "source")
    colours, styles = finetune_colours(methods), source_styles(sources)
    pairs = present_pairs(finetune, ["test_acc"], "finetuning")
    for source, method in pairs:
        where = {"source": source, "finetuning": method}
        stats = over_seeds(acc.sel(where))
        count = over_seeds(finetune["trainable_params"].sel(where)).mean
        x, y, err = float(count), float(stats.mean), float(stats.std)
        if np.isfinite(x) and np.isfinite(y):
            # Colour (method) and marker (source) say which point is which: text beside them
            # would print over each other. Each method is shifted a little, as scratch and
            # full train the same parameters.
            x *= dodge(methods.index(method), len(methods), step=0.01)
            ax.errorbar([x], [y], yerr=[err], marker=styles[source][1], capsize=3, color=colours[method])
    log_axis(ax, "x")
    ax.set_xlabel("trainable parameters (log scale; methods offset slightly)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(which="both", alpha=0.3)
    if not pairs:
        no_data(ax)
    drawn = dict.fromkeys(m for _, m in pairs)
    key(fig, "finetuning", [Line2D([], [], color=colours[m], marker="o", linestyle="", label=str(m)) for m in drawn],
        "outside right upper")
    key(fig, "source", [Line2D([], [], color="grey", marker=styles[src][1], linestyle="",
                               label=SOURCE_LABELS.get(src, str(src)))
                        for src in dict.fromkeys(src for src, _ in pairs)], "outside right lower")
    fig.suptitle(f"Fine-tuning: accuracy per trainable parameter\n({seeds_text('mean ± std', finetune)})",
                 fontsize="medium")
    return fig


def wiseft(ds: xr.Dataset) -> Figure:
    """WiSE-FT: test accuracy of the interpolated weights against alpha, one panel per source, a line per method."""
    ds = crossed(ds)
    sources, methods = coord_values(ds, "source"), coord_values(ds, "finetuning")
    colours = finetune_colours(methods)
    by, how = chosen_by(ds)
    best, where = best_over(ds["test_acc"], ("alpha",), by=by)
    fig, axes = new_figure(1, len(sources), (5.2, 4.2))
    for ax, source in zip(axes[0], sources):
        for method in methods:
            stats = over_seeds(100.0 * ds["test_acc"].sel({"source": source, "finetuning": method}))
            plot_band(ax, ds["alpha"].values, stats, color=colours[method], marker="o", markersize=3,
                      label=f"linear probe → {method}")
            cell = {"source": source, "finetuning": method}
            if bool(where["alpha"].sel(cell).notnull()):  # the alpha chosen, and its test accuracy
                ax.plot(float(where["alpha"].sel(cell)), 100.0 * float(best.sel(cell)), marker="*", markersize=13,
                        color=colours[method], markeredgecolor="black", linestyle="none")
        ax.plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black", linestyle="none",
                label=f"α {how}")
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
    bars = {**ENSEMBLE_BARS, **({"greedy soup": "greedy_soup_acc"} if "greedy_soup_acc" in ds else {})}
    groups = [(src, kind) for src in coord_values(ds, "source") for kind in coord_values(ds, "kind")]
    fig, axes = new_figure(1, 1, (max(6.4, 1.6 * len(groups) + 2.0), 4.4))
    ax = axes[0, 0]
    colours = distinct_colours(bars)
    width = 0.8 / len(bars)
    members = 100.0 * ds["member_acc"]
    for i, (bar, var) in enumerate(bars.items()):
        if var is not None:
            values = 100.0 * ds[var]
        else:
            values = members.max("member") if bar == "best member" else members.mean("member")
        stats = over_seeds(values)
        means = [float(stats.mean.sel({"source": s, "kind": k})) for s, k in groups]
        stds = [float(stats.std.sel({"source": s, "kind": k})) for s, k in groups]
        x = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, color=colours[bar], label=bar)
    n = int(ds.sizes.get("member", 0))
    ax.set_xticks(np.arange(len(groups)), [f"{s}: {k}\n({n} members)" for s, k in groups])
    low = float(np.nanmin(members.values))
    ax.set_ylim(max(0.0, low - 5.0), None)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    legend(ax, fontsize="small")
    greedy = "; greedy soup: members chosen on validation" if "greedy soup" in bars else ""
    ax.set_title(f"Ensembles and soups from one pretrained checkpoint ({seeds_text('mean ± std', ds)}{greedy})",
                 fontsize="medium")
    return fig


def weight_distance(finetune: xr.Dataset) -> Figure:
    """How far fine-tuning moves the weights: relative distance from the start against epoch (log)."""
    finetune = crossed(finetune)
    fig, axes = new_figure(1, 1, (6.4, 5.0))
    ax = axes[0, 0]
    var = "relative_weight_distance"
    runs = run_lines(finetune, [var], "finetuning") if var in finetune else []
    # Epoch 0 is the start (distance 0), which a log axis cannot show.
    after = finetune.isel(epoch=finetune["epoch"].values >= 1)
    epochs = after["epoch"].values
    for where, label, style in runs:
        plot_band(ax, epochs, over_seeds(after[var].sel(where)), label=label, **style)
    if epochs.size:
        log_axis(ax, "x", ticks=epochs if epochs.size <= 8 else None)
    ax.set_xlabel("epoch (log scale)")
    ax.set_ylabel("relative weight distance\n‖θₜ − θ₀‖ / ‖θ₀‖")
    ax.grid(which="both", alpha=0.3)
    legend(ax, outside=True, fontsize="small")
    how = seeds_text("mean line, min–max band", finetune)
    fig.suptitle(f"How far fine-tuning moves the weights (all parameters)\n"
                 f"(θ₀: where the run started, scratch: its initialisation; {how})",
                 fontsize="medium")
    return fig


def random_teacher(ds: xr.Dataset) -> Figure:
    """Random teachers: the linear-probe accuracy of each student beside its frozen untrained
    teacher's, per starting noise, on the validation and test sets (bars: mean over seeds;
    error bars: std)."""
    splits = [split for split in ("val", "test") if f"probe_{split}_acc" in ds]
    fig, axes = new_figure(1, max(1, len(splits)), (4.6, 3.8))
    noises = coord_values(ds, "noise")
    x = np.arange(len(noises))
    colours = {"teacher": "0.6", "student": distinct_colours(["student"])["student"]}
    for ax, split in zip(axes[0], splits):
        for i, (who, var) in enumerate((("teacher", f"teacher_probe_{split}_acc"), ("student", f"probe_{split}_acc"))):
            stats = over_seeds(100.0 * ds[var])
            ax.bar(x + (i - 0.5) * 0.38, stats.mean.values, 0.38, yerr=stats.std.values, capsize=3,
                   color=colours[who], label=f"{who} (frozen, untrained)" if who == "teacher" else who)
        ax.set_xticks(x, [f"{n:g}" for n in noises])
        ax.set_xlabel("student's start: teacher + noise × an independent initialisation")
        ax.set_ylabel(f"{split} accuracy of a linear probe (%)")
        ax.set_title({"val": "validation", "test": "test"}[split], fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        legend(ax, below=True, fontsize="small")
    if not splits:
        no_data(axes[0, 0])
    fig.suptitle("Random teachers: students distilled without labels, probed beside their teachers\n"
                 f"({seeds_text('mean ± std', ds)}; ridge probe of the penultimate features)", fontsize="medium")
    return fig
