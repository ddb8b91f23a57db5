"""Figures of the analyses: how similar each layer stays along the lineage (fine-tuning,
pruning, distillation, another seed) and within one model, NTK and Hessian spectra,
linear mode connectivity, and how far the weights travel."""

from __future__ import annotations

from functools import partial
from itertools import product
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.plots.drawing import distinct_colours, key, legend, log_axis, new_figure, no_data, plot_band
from workflow.plots.finetuning import PRETRAIN_COLOUR, finetune_label, layer_heatmaps, source_styles
from workflow.plots.network_pruning import PRUNING_LABELS
from workflow.plots.summaries import coord_values, over_seeds, quiet_mean, seeds_text
from workflow.runs import NO_SOURCE

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
# The ``model`` of the spectra summary that is the pretrained model of its source.
PRETRAINED = "pretrained"
SOURCE_LABELS = {NO_SOURCE: "no pretraining"}
# The two ends (alpha = 0, alpha = 1) of the connectivity pairs the study joins; a
# "ticket_k<step>" pair joins the dense model and the last IMP level of that rewind step.
PAIR_ENDS = {
    "probe_full": ("linear probe", "full fine-tuning"),
    "siblings": ("full fine-tuning", "a sibling (other seed)"),
}

# A line of a figure: its selection ({"source": ..., dim: ...}), legend text and style.
Run = tuple[dict[str, Hashable], str, dict[str, Any]]


def _present(ds: xr.Dataset, variables: Sequence[str], dim: str) -> list[tuple[Hashable, Hashable]]:
    """The (source, ``dim``) pairs that have a value of any of ``variables`` (those in ``ds``)."""
    present = [ds[v].notnull().any([d for d in ds[v].dims if d not in ("source", dim)])
               for v in variables if v in ds]
    return [(src, m) for src in coord_values(ds, "source") for m in coord_values(ds, dim)
            if any(bool(p.sel({"source": src, dim: m})) for p in present)]


def _runs(ds: xr.Dataset, variables: Sequence[str], dim: str) -> list[Run]:
    """One line per (source, method or model) with values, styled as in ``training_curves``.

    Colour: method ("pretrained" black); line style: source ("none": scratch).
    """
    sources = coord_values(ds, "source")
    # "none" (scratch) last, as training_curves orders the sources.
    styles = source_styles(sorted(sources, key=lambda src: src == NO_SOURCE))
    colours = {PRETRAINED: PRETRAIN_COLOUR,
               **distinct_colours(m for m in coord_values(ds, dim) if m != PRETRAINED)}
    n_sources = sum(src != NO_SOURCE for src in sources)
    runs = []
    for src, m in _present(ds, variables, dim):
        if m == PRETRAINED:
            label = f"pretrained: {src}" if n_sources > 1 else "pretrained"
        else:
            label = finetune_label(src, m, n_sources)
        runs.append(({"source": src, dim: m}, label, {"color": colours[m], "linestyle": styles[src][0]}))
    return runs


def _run_key(fig: Figure, runs: Sequence[Run], title: str) -> None:
    """The colour and line style of every run, below the panels."""
    handles = [Line2D([], [], label=label, **style) for _, label, style in runs]
    key(fig, title, handles, "outside lower center", ncols=min(len(handles), 4) or 1)


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

    Rows: the measures present (procrustes is a distance, the others similarities);
    one line per (source, method), colour per method and line style per source.
    """
    measures = [m for m in SIMILARITY_LABELS if m in ds]
    runs = _runs(ds, measures, "method")
    fig, axes = new_figure(max(1, len(measures)), 1, (6.4, 2.3))
    for ax, measure in zip(axes[:, 0], measures):
        _matched_panel(ax, ds[measure], runs)
        distance = measure in DISTANCES
        ax.axhline(0.0 if distance else 1.0, color="grey", linestyle=":", linewidth=0.8, zorder=0)
        ax.set_ylabel("distance" if distance else "similarity")
        what = "distance, 0 = unchanged" if distance else "similarity, 1 = unchanged"
        ax.set_title(f"{SIMILARITY_LABELS[measure]} ({what})", fontsize="medium")
        if ax is not axes[-1, 0]:
            ax.sharex(axes[-1, 0])
            ax.tick_params(labelbottom=False)
    if not measures:
        no_data(axes[0, 0], "no similarity measures")
    axes[-1, 0].set_xlabel("layer (pretrained vs the same layer fine-tuned)")
    _run_key(fig, runs, "fine-tuning")
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


def _sweep_panel(ax: Axes, mean: xr.DataArray, x: str, labels: Mapping[Hashable, str]) -> None:
    """``mean`` (dims: method, ``x``, seed) against ``x``: a line per method, seeds as a band."""
    methods = coord_values(mean, "method")
    colours = distinct_colours(methods)
    for method in methods:
        plot_band(ax, mean[x].values, over_seeds(mean.sel({"method": method})), color=colours[method],
                  marker="o", markersize=3, label=labels.get(str(method), str(method)))
    ax.grid(alpha=0.3)


def _layer_panels(ds: xr.Dataset, dim: str, title: str) -> list[tuple[str, Callable[[Axes], None]]]:
    """One panel: matched-layer CKA by layer, a line per (source, ``dim``) as in :func:`similarity`."""
    runs = _runs(ds, [LINEAGE_MEASURE], dim)

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
            _sweep_panel(ax, mean.sel({"rewind": rewind}), "level", PRUNING_LABELS)
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
    panels = []
    for temperature, alpha in product(coord_values(ds, "temperature"), coord_values(ds, "alpha")):
        panel = mean.sel({"temperature": temperature, "alpha": alpha})
        if not panel.notnull().any():
            continue

        def draw(ax: Axes, panel: xr.DataArray = panel) -> None:
            _sweep_panel(ax, panel, "fraction", {})
            log_axis(ax, "x", ticks=panel["fraction"].values)
            ax.set_xlabel("fraction of the training set kept (log scale)")

        panels.append((f"trained teacher → student (T = {temperature:g}, α = {alpha:g})", draw))
    return panels


# The lineage's edges in drawing order: the summary of each kind, and its panels.
LINEAGE: dict[str, Callable[[xr.Dataset], list[tuple[str, Callable[[Axes], None]]]]] = {
    "similarity": partial(_layer_panels, dim="method", title="pretrained → fine-tuned"),
    "similarity_prune": _lineage_prune,
    "similarity_distill": _lineage_distill,
    "similarity_seeds": partial(_layer_panels, dim="model", title="first seed ↔ second seed of the same run"),
}


def lineage(**summaries: xr.Dataset) -> Figure:
    """Cross-model similarity along the lineage: how much of each layer survives every edge.

    Takes the similarity summaries by name (those of :data:`LINEAGE` the study has);
    a row of panels per edge kind present: pretrained -> fine-tuned and seed <-> seed
    by layer; dense -> pruned (per rewind step) against the pruning level and teacher
    -> student (per temperature and alpha) against the kept fraction, averaged over
    layers. Each value is the linear CKA of a layer with the same layer of the other
    model; seeds as min–max bands.
    """
    rows = [(name, build(summaries[name]) if LINEAGE_MEASURE in summaries[name] else [])
            for name, build in LINEAGE.items() if name in summaries]
    ncols = max([len(panels) for _, panels in rows] + [1])
    fig, axes = new_figure(max(1, len(rows)), ncols, (5.0, 3.3))
    for ax in axes.flat:
        ax.set_axis_off()
    if not rows:
        axes[0, 0].set_axis_on()
        no_data(axes[0, 0], "no similarity summaries")
    for i, (name, panels) in enumerate(rows):
        if not panels:
            axes[i, 0].set_axis_on()
            no_data(axes[i, 0], f"{name}: no {SIMILARITY_LABELS[LINEAGE_MEASURE]}")
        for j, (title, draw) in enumerate(panels):
            ax = axes[i, j]
            ax.set_axis_on()
            draw(ax)
            ax.set_ylim(0.0, 1.05)
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8, zorder=0)
            ax.set_title(title, fontsize="medium")
            ax.set_ylabel("linear CKA, same layer" if name in ("similarity", "similarity_seeds")
                          else "linear CKA, mean over layers")
        if panels:
            # Beside the row's last panel: the lines of a row share their methods.
            legend(axes[i, len(panels) - 1], fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    how = seeds_text("mean line, min–max band", *summaries.values()) if summaries else "no data"
    fig.suptitle("Cross-model similarity along the lineage: linear CKA of each layer with the same layer "
                 f"of the other model\n(1 = the same representation up to rotation and scale; {how})",
                 fontsize="medium")
    return fig


def similarity_within(ds: xr.Dataset) -> Figure:
    """Linear CKA between every two layers of each pretrained and fine-tuned model (its first seed).

    A row per pretraining source ("none": scratch), a column per model.
    """
    runs = _runs(ds, [LINEAGE_MEASURE], "model")
    cells = {}
    for where, label, _ in runs:
        da = ds[LINEAGE_MEASURE].sel(where)
        seed = next(s for s in coord_values(da, "seed") if bool(da.sel({"seed": s}).notnull().any()))
        cells[(where["source"], where["model"])] = (f"{label} (seed {seed})", da.sel({"seed": seed}))
    # The pretrained model first, and no pretraining (scratch) last, as in the spectra figure.
    models = sorted(coord_values(ds, "model"), key=lambda m: m != PRETRAINED)
    sources = sorted(coord_values(ds, "source"), key=lambda src: src == NO_SOURCE)
    fig = layer_heatmaps(cells, sources, models, xlabel="layer",
                         ylabel=lambda source: f"layer ({SOURCE_LABELS.get(str(source), source)})",
                         label="linear CKA")
    fig.suptitle("Linear CKA between the layers of each model (each model's first seed)")
    return fig


def _spectra_axes() -> tuple[Figure, dict[str, Axes]]:
    """NTK and Hessian spectra side by side, and a column of two bar panels on the right."""
    fig = Figure(figsize=(15.0, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplot_mosaic([["ntk", "hessian", "condition"], ["ntk", "hessian", "trace"]])
    return fig, axes


def _signed_log_axis(ax: Axes, values: np.ndarray) -> None:
    """Log y for positive ``values``; symlog (linear within the smallest decade) when some are ≤ 0."""
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0])
    if not nonzero.size:
        return
    if (finite > 0).all():
        log_axis(ax, "y")
        return
    # Linear over at most three decades below the largest magnitude.
    linthresh = 10.0 ** np.floor(np.log10(max(nonzero.min(), 1e-3 * nonzero.max())))
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhline(0.0, color="grey", linewidth=0.8, zorder=0)


def _bars(ax: Axes, runs: Sequence[Run], heights: np.ndarray, errors: np.ndarray) -> None:
    """One bar per run in its colour with its error bar (``errors``: 2 x runs, below and
    above) and its value written on top; "not run" where the height is NaN."""
    x = np.arange(len(runs))
    colours = [style["color"] for _, _, style in runs]
    ax.bar(x, heights, yerr=errors, capsize=3, color=colours, alpha=0.8)
    for i, height in enumerate(heights):
        if np.isfinite(height):
            top = height + errors[1, i] if height >= 0 else height - errors[0, i]
            ax.annotate(f"{height:.3g}", (i, top), textcoords="offset points", ha="center",
                        xytext=(0, 2 if height >= 0 else -2), va="bottom" if height >= 0 else "top",
                        fontsize="x-small")
        else:
            ax.text(i, 0.03, "not run", transform=ax.get_xaxis_transform(), rotation=90,
                    ha="center", va="bottom", fontsize="x-small", color="dimgrey")
    ax.set_xticks(x, [label for _, label, _ in runs])
    ax.set_xlim(-0.6, len(runs) - 0.4)  # runs not run at the ends keep their place
    ax.grid(axis="y", which="major", alpha=0.3)


def _ntk_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The NTK eigenvalues against their index, log–log."""
    if "ntk_eigenvalues" in ds:
        eigenvalues = ds["ntk_eigenvalues"]
        # Those below n·eps·λ₁ (0 and below included) are rounding noise, as for the
        # condition number, and would stretch the axis over many empty decades.
        floor = eigenvalues.max("eig") * eigenvalues.sizes["eig"] * np.finfo(np.float64).eps
        eigenvalues = eigenvalues.where(eigenvalues > floor)
        for where, label, style in runs:
            plot_band(ax, eigenvalues["eig"].values + 1, over_seeds(eigenvalues.sel(where)),
                      label=label, **style)
    if not ax.lines:
        no_data(ax)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("index (1 = largest, log scale)")
    ax.set_ylabel("NTK eigenvalue (log scale)")
    ax.set_title("NTK spectrum (rounding noise below n·ε·λ₁ not shown)", fontsize="medium")
    ax.grid(which="major", alpha=0.3)


def _hessian_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The top Hessian eigenvalues (by magnitude, so possibly negative) against their index."""
    if "hessian_eigenvalues" in ds:
        eigenvalues = ds["hessian_eigenvalues"]
        for where, label, style in runs:
            plot_band(ax, eigenvalues["hessian_eig"].values + 1, over_seeds(eigenvalues.sel(where)),
                      marker="o", markersize=3, label=label, **style)
        _signed_log_axis(ax, eigenvalues.values)
    if not ax.lines:
        no_data(ax)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("index (1 = largest magnitude)")
    ax.set_ylabel("loss Hessian eigenvalue (symmetric log)" if ax.get_yscale() == "symlog"
                  else "loss Hessian eigenvalue")
    ax.set_title("Top Hessian eigenvalues (sharpness)", fontsize="medium")
    ax.grid(which="major", alpha=0.3)


def _condition_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The NTK condition number per run: mean over seeds, min–max error bars, log y in whole decades."""
    stats = [over_seeds(ds["ntk_condition_number"].sel(where)) for where, _, _ in runs]
    means = np.array([float(s.mean) for s in stats])
    spread = np.array([means - [float(s.low) for s in stats], [float(s.high) for s in stats] - means])
    _bars(ax, runs, means, spread)
    positive = means[means > 0]
    if not positive.size:
        no_data(ax)
        return
    ax.set_yscale("log")
    # Whole decades, with room above the highest bar for its value.
    top = float(np.nanmax(means + spread[1]))
    ax.set_ylim(10.0 ** np.floor(np.log10(positive.min())), 10.0 ** np.ceil(np.log10(4 * top)))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _trace_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The Hessian trace per run: mean over seeds, error bars the standard error of that mean."""
    means, errors = [], []
    for where, _, _ in runs:
        trace = ds["hessian_trace"].sel(where)
        means.append(float(over_seeds(trace).mean))
        # Hutchinson estimates of different seeds are independent.
        stderr = ds["hessian_trace_stderr"].sel(where).where(trace.notnull())
        errors.append(float(np.sqrt((stderr**2).sum()) / max(int(stderr.count()), 1)))
    _bars(ax, runs, np.array(means), np.array([errors, errors]))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.margins(y=0.2)


def spectra(ds: xr.Dataset) -> Figure:
    """NTK eigenvalue spectrum, top Hessian eigenvalues, NTK condition number and Hessian
    trace of every pretrained and fine-tuned model."""
    fig, axes = _spectra_axes()
    variables = ("ntk_eigenvalues", "hessian_eigenvalues", "ntk_condition_number", "hessian_trace")
    runs = _runs(ds, variables, "model")
    _ntk_panel(axes["ntk"], ds, runs)
    _hessian_panel(axes["hessian"], ds, runs)
    bars = [("condition", _condition_panel, ("ntk_condition_number",),
             "NTK condition number (bar: mean; error bar: min–max over seeds)"),
            ("trace", _trace_panel, ("hessian_trace", "hessian_trace_stderr"),
             "Hessian trace (Hutchinson; error bar: its standard error)")]
    for name, draw, needs, title in bars:
        ax = axes[name]
        if runs and all(var in ds for var in needs):
            draw(ax, ds, runs)
        else:
            no_data(ax)
        ax.set_ylabel(title.split(" (")[0])
        ax.set_title(title, fontsize="small")
    axes["condition"].tick_params(labelbottom=False)
    axes["trace"].tick_params(axis="x", labelrotation=30, labelsize="small")
    for label in axes["trace"].get_xticklabels():
        label.set_horizontalalignment("right")
    _run_key(fig, runs, "model")
    how = seeds_text("mean line, min–max band", ds)
    fig.suptitle(f"NTK and loss-Hessian spectra of pretrained and fine-tuned models ({how})")
    return fig


def _ends(curve: xr.DataArray) -> float:
    """Mean of ``curve`` (dim ``alpha``) at alpha = 0 and alpha = 1 (NaN if either is missing)."""
    alpha = curve["alpha"].values
    return float(curve.isel(alpha=np.isclose(alpha, 0.0) | np.isclose(alpha, 1.0)).mean(skipna=False))


def _pair_text(pair: Hashable) -> tuple[str, str]:
    """Panel title and alpha axis label of a connectivity pair: what the two ends are, where known."""
    name = str(pair)
    ends = PAIR_ENDS.get(name)
    if name.startswith("ticket_k") and name[len("ticket_k"):].isdigit():
        ends = ("dense", f"IMP ticket (rewind {name[len('ticket_k'):]})")
    elif ends is None and len(name.split("–")) == 2:
        ends = tuple(end.strip() for end in name.split("–"))
    if ends is None:
        return name, "α  (0: θ_A, 1: θ_B)"
    return f"{ends[0]} ↔ {ends[1]}", f"α  (0: {ends[0]}, 1: {ends[1]})"


def connectivity(ds: xr.Dataset) -> Figure:
    """Linear mode connectivity: test error along the line between two models, one panel per pair.

    One line per pretraining source; the dashed line is the mean of the two ends, so
    the barrier is how far the curve rises above it.
    """
    pairs, sources = coord_values(ds, "pair"), coord_values(ds, "source")
    colours = distinct_colours(sources)
    # At most three panels a row.
    fig, axes = new_figure(max(1, -(-len(pairs) // 3)), min(max(1, len(pairs)), 3), (4.6, 3.6))
    panels = list(axes.flat)
    for ax in panels[len(pairs):]:
        ax.set_axis_off()
    if not pairs:
        no_data(panels[0])
    error = 100.0 * ds["test_error"]
    for ax, pair in zip(panels, pairs):
        for source in sources:
            where = {"pair": pair, "source": source}
            stats = over_seeds(error.sel(where))
            if not stats.mean.notnull().any():
                continue
            label = SOURCE_LABELS.get(str(source), str(source))
            if "test_error_barrier" in ds:
                barrier = over_seeds(100.0 * ds["test_error_barrier"].sel(where)).mean
                if barrier.notnull():
                    label += f": barrier {float(barrier):.1f} pp"
                if "test_error_barrier_linear" in ds:
                    above = over_seeds(100.0 * ds["test_error_barrier_linear"].sel(where)).mean
                    if above.notnull():
                        label += f", above the line {float(above):.1f}"
            plot_band(ax, ds["alpha"].values, stats, color=colours[source], marker="o",
                      markersize=2, label=label)
            ends = _ends(stats.mean)
            if np.isfinite(ends):
                ax.axhline(ends, color=colours[source], linestyle="--", linewidth=1.0)
        title, xlabel = _pair_text(pair)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        legend(ax, fontsize="small")
    how = seeds_text("mean line, min–max band", ds)
    fig.suptitle("Linear mode connectivity: weights (1 − α) θ_A + α θ_B\n"
                 "dashed: mean error of the two ends; barrier: how far the curve peaks above it\n"
                 f"(barriers: mean over seeds; curves: {how})", fontsize="medium")
    return fig


def weight_distance(finetune: xr.Dataset) -> Figure:
    """How far fine-tuning moves the weights: relative distance from the start against epoch (log)."""
    fig, axes = new_figure(1, 1, (6.4, 4.4))
    ax = axes[0, 0]
    var = "relative_weight_distance"
    runs = _runs(finetune, [var], "method") if var in finetune else []
    # Epoch 0 is the start (distance 0), which a log axis cannot show.
    after = finetune.isel(epoch=finetune["epoch"].values >= 1)
    epochs = after["epoch"].values
    for where, label, style in runs:
        plot_band(ax, epochs, over_seeds(after[var].sel(where)), label=label, **style)
    if epochs.size:
        log_axis(ax, "x", ticks=epochs if epochs.size <= 8 else None)
    ax.set_xlabel("epoch (log scale)")
    ax.set_ylabel("relative weight distance  ‖θₜ − θ₀‖ / ‖θ₀‖")
    ax.grid(which="both", alpha=0.3)
    legend(ax, outside=True)
    how = seeds_text("mean line, min–max band", finetune)
    ax.set_title(f"How far fine-tuning moves the weights (all parameters)\n"
                 f"(θ₀: where the run started, scratch: its initialisation; {how})",
                 fontsize="medium")
    return fig
