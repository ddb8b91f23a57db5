"""Figures drawn from the tidy summary datasets under ``results/summary/``.

One function per figure; each takes summary datasets and returns a matplotlib
``Figure``. :func:`render` is the entry point a pipeline rule calls: it opens the
summaries, draws one figure and saves it in every requested format.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than
through ``pyplot``: that never opens a window and leaves the global pyplot state
(and whatever backend the caller chose) alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations_with_replacement, product
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow import storage

__all__ = [
    "FIGURES",
    "best_alpha",
    "best_over",
    "cka_heatmaps",
    "data_pruning",
    "ensembles",
    "final_value",
    "finetune_methods",
    "network_pruning",
    "render",
    "score_agreement",
    "score_correlations",
    "score_distributions",
    "training_curves",
    "wiseft",
]

LOSS_LABEL = "cross-entropy loss (nats)"
PRETRAIN_COLOUR = "black"
# "scratch" is not fine-tuned at all: it is the no-pretraining baseline.
FINETUNE_LABELS = {"scratch": "from scratch (baseline)"}
# Line styles and markers of the pretraining sources, in config order; the last is
# "none" (scratch) when present.
SOURCE_STYLES = ("-", "--", ":", "-.")
SOURCE_MARKERS = ("o", "s", "^", "D", "v", "P")
# Line style and legend text of the students of each teacher, in drawing order;
# "none" is the data_pruning summary (no distillation).
KD_STYLES = {
    "none": ("-", "no KD"),
    "trained": ("--", "KD, trained teacher"),
    "untrained": (":", "KD, untrained (random) teacher"),
}
OTHER_TEACHER_STYLE = "-."
# The hyperparameters of distillation chosen per point (maximised jointly).
KD_HYPERPARAMETERS = ("temperature", "alpha")
# What each per-example score is, for axis labels; higher = harder for all of them.
SCORE_LABELS = {
    "el2n": r"EL2N: $\|\mathrm{softmax}(f(x)) - \mathrm{onehot}(y)\|_2$",
    "grand": r"GraNd: $\|\nabla_\theta\, \ell(f(x), y)\|_2$",
    "forgetting": "forgetting events (1 → 0 accuracy transitions)",
    "prototypes": "distance to nearest k-means centroid",
    "random": "random score (baseline)",
}


# --------------------------------------------------------------------------- data


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
class _SeedStats:
    """Summary over the ``seed`` dim: centre line, error bar and band."""

    mean: xr.DataArray
    std: xr.DataArray
    low: xr.DataArray
    high: xr.DataArray


def _over_seeds(da: xr.DataArray) -> _SeedStats:
    """Mean, sample std (0 for a single seed) and min/max over seeds, NaNs skipped."""
    if "seed" not in da.dims:
        da = da.expand_dims("seed")
    count = da.count("seed")
    with warnings.catch_warnings():
        # All-NaN slices (runs not done) are expected and simply give NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        std = da.std("seed", ddof=1).where(count > 1, 0.0)
        return _SeedStats(
            mean=da.mean("seed"), std=std, low=da.min("seed"), high=da.max("seed")
        )


def _quiet_mean(da: xr.DataArray, dim: str) -> xr.DataArray:
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


def _choose(
    da: xr.DataArray, dims: Sequence[str]
) -> tuple[xr.DataArray, dict[str, xr.Variable], xr.DataArray]:
    """The seed-mean final values of ``da``, and :func:`_argbest` of them over ``dims``."""
    mean = _final(da)
    if "seed" in mean.dims:
        mean = _quiet_mean(mean, "seed")
    return (mean, *_argbest(mean, dims))


def best_over(da: xr.DataArray, dims: Sequence[str]) -> tuple[xr.DataArray, xr.Dataset]:
    """Best seed-mean final value of ``da`` over the combinations of ``dims``, and where it is.

    ``da`` is a metric where higher is better (e.g. ``test_acc``), per run: with an
    ``epoch`` dim its :func:`final_value` is taken; with a ``seed`` dim the mean over
    seeds (NaN skipped) is what is maximised, jointly over ``dims`` (e.g. temperature
    and alpha). Returns ``(best, where)``: ``best`` the maximum over the remaining
    dims, and ``where`` a Dataset with, for each of ``dims``, the coordinate value at
    the maximum. Both are NaN where no combination was run; ties go to the first
    combination in coordinate order.
    """
    mean, indices, found = _choose(da, dims)
    best = mean.isel(indices).where(found).drop_vars(list(dims), errors="ignore")
    where = xr.Dataset(
        {d: found.copy(data=mean[d].values[indices[d].values]).where(found) for d in dims}
    )
    return best, where


def _best_runs(da: xr.DataArray, dims: Sequence[str]) -> xr.DataArray:
    """Per-seed final values of ``da`` at the combination of ``dims`` :func:`best_over` picks."""
    _, indices, found = _choose(da, dims)
    return _final(da).isel(indices).where(found).drop_vars(list(dims), errors="ignore")


def _mean_scores(scores: xr.Dataset) -> xr.DataArray:
    """Each example's score averaged over repetitions (``init``), NaN padding skipped.

    An infinite score in any repetition (forgetting: never learned) stays infinite.
    """
    score = scores["score"]
    return _quiet_mean(score, "init") if "init" in score.dims else score


def _n_repetitions(scores: xr.Dataset, method: Hashable) -> int:
    """How many repetitions (``init`` rows that are not all NaN) a method has."""
    score = scores["score"].sel({"method": method})
    if "init" not in score.dims:
        return 1
    return int(score.notnull().any("sample").sum())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho over the examples both scored; NaN if either is constant there."""
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if a.size < 3 or np.unique(a).size < 2 or np.unique(b).size < 2:
        return float("nan")
    from scipy.stats import spearmanr  # here: scipy.stats costs every other figure 2 s to import

    return float(spearmanr(a, b).statistic)


def score_correlations(scores: xr.Dataset) -> xr.DataArray:
    """Spearman rank correlation between every two methods' mean per-example scores.

    Dims ``(method_a, method_b)``; symmetric with 1 on the diagonal (NaN for a method
    whose scores are constant or missing). Each pair uses the examples both methods
    scored; +inf (never learned) ranks above every finite score.
    """
    means = _mean_scores(scores).transpose("method", "sample")
    methods = _values(scores, "method")
    rho = np.full((len(methods), len(methods)), np.nan)
    for i, j in combinations_with_replacement(range(len(methods)), 2):
        rho[i, j] = rho[j, i] = _spearman(means.values[i], means.values[j])
    # Exactly 1 rather than a rounded 0.9999999999999998.
    rho[np.diag_indices_from(rho)] = np.where(np.isnan(np.diag(rho)), np.nan, 1.0)
    return xr.DataArray(
        rho,
        dims=("method_a", "method_b"),
        coords={"method_a": methods, "method_b": methods},
        name="spearman",
    )


# Selections below pass a dict: ``sel(method=...)`` would be taken as sel's own
# ``method`` (inexact-match) argument, not as the "method" dim of the sweeps.


def _values(ds: xr.Dataset, dim: str) -> list[Hashable]:
    """Coordinate values along ``dim`` as plain Python objects (for labels and ``sel``)."""
    return ds[dim].values.tolist()


def _select(obj: Any, **indexers: Hashable) -> Any:
    """``sel`` that ignores dims ``obj`` lacks (a coordinate may or may not vary by method)."""
    return obj.sel({k: v for k, v in indexers.items() if k in obj.dims})


def _source_method_pairs(ds: xr.Dataset, var: str) -> list[tuple[Hashable, Hashable]]:
    """The (source, method) pairs of a fine-tuning summary that have values of ``var``.

    A summary holds every source x method combination; scratch exists only under
    source "none", and the other methods only under real sources.
    """
    present = ds[var].notnull().any([d for d in ds[var].dims if d not in ("source", "method")])
    return [(src, m) for src in _values(ds, "source") for m in _values(ds, "method")
            if bool(present.sel({"source": src, "method": m}))]


def _finetune_label(source: Hashable, method: Hashable, n_sources: int) -> str:
    """"from scratch (baseline)", "fine-tune: full", or "synthetic → full" with several sources."""
    if method in FINETUNE_LABELS:
        return FINETUNE_LABELS[str(method)]
    return f"{source} → {method}" if n_sources > 1 else f"fine-tune: {method}"


def _source_styles(sources: Sequence[Hashable]) -> dict[Hashable, tuple[str, str]]:
    """Line style and marker of each source (scratch's "none" included)."""
    return {src: (SOURCE_STYLES[i % len(SOURCE_STYLES)], SOURCE_MARKERS[i % len(SOURCE_MARKERS)])
            for i, src in enumerate(sources)}


def _seeds_text(how: str, *datasets: xr.Dataset) -> str:
    """How the seeds were summarised, for titles: ``how`` over n seeds, or "single seed"."""
    n = max(int(ds.sizes.get("seed", 1)) for ds in datasets)
    return f"{how} over {n} seeds" if n > 1 else "single seed"


# ---------------------------------------------------------------------- drawing


def _new_figure(
    nrows: int, ncols: int, panel_size: tuple[float, float]
) -> tuple[Figure, np.ndarray]:
    """A figure with an Agg canvas and a 2-D array of axes."""
    fig = Figure(
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colours(names: Iterable[Hashable]) -> dict[Hashable, Any]:
    """One distinct colour per name, stable in the order given."""
    cmap = colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _finite(x: Any, stats: _SeedStats) -> tuple[np.ndarray, ...]:
    """x, mean, std, low, high at the points where x and the mean exist.

    Dropping NaN points (holes, runs that stopped early, combinations not run)
    joins the line across a missing evaluation instead of leaving a gap or an
    invisible isolated point.
    """
    x, mean = np.asarray(x, dtype=float), stats.mean.values
    keep = np.isfinite(mean) & np.isfinite(x)
    arrays = (x, mean, stats.std.values, stats.low.values, stats.high.values)
    return tuple(a[keep] for a in arrays)


def _plot_band(ax: Axes, x: Any, stats: _SeedStats, **line: Any) -> None:
    """Mean as a line with a min–max band over seeds."""
    x, mean, _, low, high = _finite(x, stats)
    if x.size:
        (handle,) = ax.plot(x, mean, **line)
        ax.fill_between(x, low, high, color=handle.get_color(), alpha=0.2, lw=0)


def _plot_errorbar(ax: Axes, x: Any, stats: _SeedStats, **line: Any) -> bool:
    """Mean with std error bars over seeds, as markers joined by a line; whether any was drawn."""
    x, mean, std, _, _ = _finite(x, stats)
    if x.size:
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=3, **line)
    return bool(x.size)


def _legend(ax: Axes, *, outside: bool = False, **kwargs: Any) -> None:
    """A legend (beside the figure if ``outside``), or a visible note when nothing was drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        _no_data(ax)
    elif outside:
        # Below the panels, in a row: beside them it would collide with the suptitle.
        ax.figure.legend(
            handles, labels, loc="outside lower center", ncols=min(len(handles), 4), **kwargs
        )
    else:
        ax.legend(**kwargs)


def _no_data(ax: Axes, text: str = "no data") -> None:
    """Say in the panel that there is nothing to show."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")


def _key(
    fig: Figure, title: str, handles: Sequence[Line2D], loc: str, **kwargs: Any
) -> None:
    """A legend of handmade entries (colours or line styles) beside the axes."""
    if handles:
        fig.legend(handles=list(handles), loc=loc, title=title, fontsize="small",
                   title_fontsize="small", **kwargs)


def _method_key(fig: Figure, methods: Iterable[Hashable], colours: Mapping[Hashable, Any]) -> None:
    """The colour of each method, beside the axes (top right)."""
    handles = [Line2D([], [], color=colours[m], marker="o", markersize=4, label=str(m))
               for m in methods]
    _key(fig, "method", handles, "outside right upper")


def _kd_style(teacher: str) -> tuple[str, str]:
    """Line style and legend text for the students of ``teacher`` ("none": no KD)."""
    return KD_STYLES.get(teacher, (OTHER_TEACHER_STYLE, f"KD, {teacher} teacher"))


def _dodge(i: int, n: int, step: float = 0.008) -> float:
    """Factor that shifts the i-th of n lines a little along a log axis, so ties stay visible."""
    return 10.0 ** (step * (i - (n - 1) / 2))


def _heatmap(
    ax: Axes,
    values: np.ndarray,
    *,
    cmap: Any,
    vmin: float,
    vmax: float,
    fontsize: float,
    text_colour: Callable[[float], str],
    aspect: str = "auto",
    missing: str | None = None,
) -> Any:
    """``values`` as an image with each cell annotated (``missing`` in NaN cells, if given)."""
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect=aspect)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            text, colour = f"{v:.2f}", text_colour(v)
        elif missing is not None:
            text, colour = missing, "dimgrey"
        else:
            continue
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return image


def _bins(values: np.ndarray) -> Any:
    """Histogram bins: one per value for values on a coarse regular grid, else 10–50 bins.

    Counts (forgetting events), and their means over a few runs (multiples of 1/k),
    get a bin centred on each possible value rather than bins that straddle them.
    """
    distinct = np.unique(values)
    if 1 < distinct.size <= 80:
        step = np.diff(distinct).min()
        n_steps = (distinct[-1] - distinct[0]) / step
        on_grid = np.allclose((distinct - distinct[0]) / step,
                              np.round((distinct - distinct[0]) / step), atol=1e-6)
        if on_grid and n_steps <= 80:
            return distinct[0] + step * (np.arange(round(n_steps) + 2) - 0.5)
    return int(np.clip(len(np.histogram_bin_edges(values, "auto")) - 1, 10, 50))


class _PlainLogFormatter(ticker.LogFormatter):
    """LogFormatter's choice of which ticks to label, as plain numbers (0.1, not 1e-01)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _log_axis(ax: Axes, which: str, ticks: Sequence[float] | None = None) -> None:
    """Log scale with plain-number tick labels (30, 50 rather than 3×10¹).

    With ``ticks`` only those are labelled (the measured points); otherwise the
    in-between ticks are labelled only as far as the axis has room for them.
    """
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    if ticks is not None:
        axis.set_major_locator(ticker.FixedLocator(ticks))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
        return
    # Label every minor tick within ~one decade, a subset up to three, none beyond.
    for set_formatter in (axis.set_major_formatter, axis.set_minor_formatter):
        set_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.2)))
    # Minor ticks are shorter, so their labels sit closer to the axis than the
    # major ones; the same distance keeps 100 level with 90.
    rc = matplotlib.rcParams
    major_pad = rc[f"{which}tick.major.pad"] + rc[f"{which}tick.major.size"]
    axis.set_tick_params(which="minor", pad=major_pad - rc[f"{which}tick.minor.size"])


# ---------------------------------------------------------------------- figures


def training_curves(pretrain: xr.Dataset, finetune: xr.Dataset) -> Figure:
    """Train/test loss and accuracy against epoch for pretraining and each fine-tuning method."""
    sources = _values(pretrain, "source")
    styles = _source_styles(list(dict.fromkeys(sources + _values(finetune, "source"))))
    runs: list[tuple[str, xr.Dataset, Any, str]] = [
        (f"pretrain: {src}" if len(sources) > 1 else "pretrain", pretrain.sel({"source": src}),
         PRETRAIN_COLOUR, styles[src][0])
        for src in sources
    ]
    colours = _colours(_values(finetune, "method"))
    runs += [
        (_finetune_label(src, m, len(sources)), finetune.sel({"source": src, "method": m}), colours[m], styles[src][0])
        for src, m in _source_method_pairs(finetune, "test_acc")
    ]

    fig, axes = _new_figure(2, 2, (4.6, 3.2))
    panels = [("loss", LOSS_LABEL, 1.0), ("acc", "accuracy (%)", 100.0)]
    for row, (metric, ylabel, scale) in enumerate(panels):
        for col, split in enumerate(("train", "test")):
            ax = axes[row, col]
            for label, ds, colour, style in runs:
                stats = _over_seeds(ds[f"{split}_{metric}"] * scale)
                _plot_band(ax, ds["epoch"].values, stats, color=colour, linestyle=style, label=label)
            ax.set_title(f"{split} {'loss' if metric == 'loss' else 'accuracy'}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    _legend(axes[0, 0], outside=True)
    how = _seeds_text("mean line, min–max band", pretrain, finetune)
    fig.suptitle(f"Training curves: pretraining and fine-tuning ({how})")
    return fig


def _pruning_curves(
    pruned: xr.Dataset, distill: xr.Dataset
) -> list[tuple[str, xr.DataArray]]:
    """Final test accuracy per (method, fraction, seed) for each line style.

    First the students without KD ("none"), then one entry per teacher, each at the
    (temperature, alpha) with the best seed-mean final test accuracy per point.
    """
    curves = [("none", final_value(pruned["test_acc"]))]
    order = list(KD_STYLES)
    teachers = sorted(
        _values(distill, "teacher"), key=lambda t: order.index(t) if t in order else len(order)
    )
    for teacher in teachers:
        acc = distill["test_acc"].sel({"teacher": teacher}, drop=True)
        curves.append((str(teacher), _best_runs(acc, KD_HYPERPARAMETERS)))
    return curves


def data_pruning(pruned: xr.Dataset, distill: xr.Dataset) -> Figure:
    """Final test error against training data kept, per pruning method, without and with KD.

    Solid: no distillation; dashed: KD from the trained teacher; dotted: KD from
    a frozen untrained teacher. Each KD point is at the temperature and alpha with
    the best mean final test accuracy over seeds for that (method, fraction, teacher).
    """
    fig, axes = _new_figure(1, 1, (7.0, 4.8))
    ax = axes[0, 0]
    methods = list(dict.fromkeys(_values(pruned, "method") + _values(distill, "method")))
    colours = _colours(methods)
    drawn_methods: set[Hashable] = set()
    styles: list[Line2D] = []
    for teacher, acc in _pruning_curves(pruned, distill):
        linestyle, label = _kd_style(teacher)
        x = 100.0 * acc["fraction"].values
        drawn = False
        for method in _values(acc, "method"):
            stats = _over_seeds(100.0 * (1.0 - acc.sel({"method": method})))
            # Each method a little to the side, so that error bars do not hide each other.
            dodge = _dodge(methods.index(method), len(methods))
            if _plot_errorbar(ax, x * dodge, stats, color=colours[method],
                              linestyle=linestyle, label=f"{method}, {label}"):
                drawn = True
                drawn_methods.add(method)
        if drawn:
            styles.append(Line2D([], [], color="dimgrey", linestyle=linestyle, label=label))
    if not styles:
        _no_data(ax)
    _method_key(fig, [m for m in methods if m in drawn_methods], colours)
    # The choice is on test accuracy, as the KD-on-pruned-data paper reports its
    # best alpha: the KD points are an optimistic estimate, and the key says so.
    kd_note = ("KD: temperature T and weight α chosen per point "
               "for the best mean final test accuracy")
    _key(fig, f"line style ({kd_note})" if len(styles) > 1 else "line style", styles,
         "outside lower center", ncols=len(styles) or 1)
    # Log-log, as in data-pruning scaling laws; ticks at the fractions actually kept.
    fractions = np.union1d(pruned["fraction"].values, distill["fraction"].values)
    _log_axis(ax, "x", ticks=100.0 * fractions)
    _log_axis(ax, "y")
    ax.set_xlabel("training examples kept (%; methods offset slightly)")
    ax.set_ylabel("final test error (%)")
    ax.grid(which="both", alpha=0.3)
    how = _seeds_text("mean ± std", pruned, distill)
    ax.set_title(f"Data pruning with and without distillation\n{how}")
    return fig


def best_alpha(distill: xr.Dataset) -> Figure:
    """Best distillation weight alpha (trained teacher) against kept fraction, per method."""
    fig, axes = _new_figure(1, 1, (6.0, 4.2))
    ax = axes[0, 0]
    teacher = "trained"
    methods = _values(distill, "method")
    colours = _colours(methods)
    drawn: list[Hashable] = []
    if teacher in _values(distill, "teacher"):
        acc = distill["test_acc"].sel({"teacher": teacher}, drop=True)
        _, where = best_over(acc, KD_HYPERPARAMETERS)
        x = 100.0 * distill["fraction"].values
        for i, method in enumerate(methods):
            y = where["alpha"].sel({"method": method}).values.astype(float)
            keep = np.isfinite(y)
            if keep.any():
                ax.plot(x[keep] * _dodge(i, len(methods)), y[keep], marker="o",
                        markersize=5, color=colours[method], label=str(method))
                drawn.append(method)
    if not drawn:
        _no_data(ax, f"no data for the {teacher} teacher")
    alphas = [float(a) for a in _values(distill, "alpha")]
    for a in alphas:
        ax.axhline(a, color="grey", linestyle=":", linewidth=0.8, zorder=0)
    _method_key(fig, drawn, colours)
    _log_axis(ax, "x", ticks=100.0 * distill["fraction"].values)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_locator(ticker.MultipleLocator(0.25))
    ax.set_xlabel("training examples kept (%; methods offset slightly)")
    ax.set_ylabel("best KD weight α (dotted: values swept)")
    ax.grid(axis="x", which="major", alpha=0.3)
    how = _seeds_text("mean", distill)
    note = (f"only α = {alphas[0]:g} was swept: nothing to choose" if len(alphas) == 1
            else f"best final test accuracy ({how}) over α and T")
    ax.set_title(f"Best KD weight α per kept fraction ({teacher} teacher)\n{note}",
                 fontsize="medium")
    return fig


PRUNING_LABELS = {
    "imp": "IMP",
    "reinit": "IMP mask, re-initialised",
    "random": "random mask, same layer densities",
    "oneshot": "one-shot magnitude",
    "scratch": "IMP mask from scratch, FLOPs-matched",
}


def network_pruning(ds: xr.Dataset) -> Figure:
    """Final test accuracy against weights remaining, one line per pruning method, one
    panel per rewind step; seeds as min–max bands, the dense model as a dotted line."""
    rewinds = _values(ds, "rewind") if "rewind" in ds.dims else [None]
    fig, axes = _new_figure(1, len(rewinds), (5.6, 4.4))
    acc = 100.0 * final_value(ds["test_acc"])
    methods = _values(ds, "method")
    colours = _colours(methods)
    for ax, k in zip(axes[0], rewinds):
        panel = _select(acc, rewind=k)
        density = _select(ds["density"], rewind=k)
        for method in methods:
            # density is a variable over (method, level, seed), equal across seeds
            x = 100.0 * _over_seeds(_select(density, method=method)).mean.values
            stats = _over_seeds(panel.sel({"method": method}))
            _plot_band(ax, x, stats, color=colours[method], marker="o", markersize=3,
                       label=PRUNING_LABELS.get(str(method), str(method)))
        if "level" in panel.dims and 0 in panel["level"]:
            dense = _over_seeds(panel.sel(level=0)).mean.mean().item()
            ax.axhline(dense, color="0.4", ls=":", lw=1, label=f"dense ({dense:.1f} %)")
        _log_axis(ax, "x")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%, log scale; sparser →)")
        ax.grid(which="both", alpha=0.3)
        if k is not None:
            ax.set_title(f"rewind to step {k}" + (" (original lottery ticket)" if k == 0 else ""),
                         fontsize="medium")
    axes[0, 0].set_ylabel("final test accuracy (%)")
    _legend(axes[0, -1], fontsize="small")
    how = _seeds_text("mean, band min–max", ds)
    fig.suptitle(f"Network pruning: test accuracy vs weights remaining ({how})")
    return fig


def cka_heatmaps(ds: xr.Dataset) -> Figure:
    """Linear CKA between pretrained (y) and fine-tuned (x) layers: a row of heatmaps per source, one per method."""
    sources, methods = _values(ds, "source"), _values(ds, "method")
    pairs = set(_source_method_pairs(ds, "cka"))
    n_a, n_b = ds.sizes["layer_a"], ds.sizes["layer_b"]
    # Cells big enough for their annotation; shrink text only for many layers.
    cell = 0.55 if max(n_a, n_b) <= 8 else 0.45
    fig, axes = _new_figure(
        len(sources), len(methods), (max(3.2, cell * n_b + 1.4), max(3.0, cell * n_a + 1.2))
    )
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    fontsize = 8 if max(n_a, n_b) <= 8 else 6
    image = None
    for (row, source), (col, method) in product(enumerate(sources), enumerate(methods)):
        ax = axes[row, col]
        if (source, method) not in pairs:
            ax.set_axis_off()
            continue
        mean = _over_seeds(ds["cka"].sel({"source": source, "method": method})).mean
        values = mean.transpose("layer_a", "layer_b").values
        # Dark text on the bright end of viridis, light text elsewhere.
        image = _heatmap(ax, values, cmap=cmap, vmin=0.0, vmax=1.0, fontsize=fontsize,
                         text_colour=lambda v: "black" if v > 0.6 else "white")
        ax.set_xticks(
            range(n_b), [str(v) for v in ds["layer_b"].values], rotation=45, ha="right"
        )
        ax.set_yticks(range(n_a), [str(v) for v in ds["layer_a"].values])
        ax.set_xlabel("fine-tuned layer")
        ax.set_ylabel(f"pretrained layer ({source})" if col == 0 else "")
        ax.set_title(_finetune_label(source, method, len(sources)))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="linear CKA", shrink=0.9)
    how = _seeds_text("mean", ds)
    fig.suptitle(f"Linear CKA: pretrained vs fine-tuned representations ({how})")
    return fig


def score_distributions(scores: xr.Dataset) -> Figure:
    """Histogram of each example's mean score (over repetitions), one panel per scoring method."""
    methods = _values(scores, "method")
    means = _mean_scores(scores)
    colours = _colours(methods)
    ncols = max(1, min(3, len(methods)))
    nrows = max(1, -(-len(methods) // ncols))
    fig, axes = _new_figure(nrows, ncols, (3.9, 3.0))
    for ax in axes.flat[len(methods):]:
        ax.set_axis_off()
    for ax, method in zip(axes.flat, methods):
        values = means.sel({"method": method}).values
        scored = values[~np.isnan(values)]
        finite = scored[np.isfinite(scored)]
        if finite.size:
            ax.hist(finite, bins=_bins(finite), color=colours[method])
        n_inf = scored.size - finite.size
        if n_inf:
            meaning = "never learned" if method == "forgetting" else "infinite score"
            ax.text(0.97, 0.95, f"{n_inf} of {scored.size} {meaning}\n(score = ∞, not shown)",
                    transform=ax.transAxes, ha="right", va="top", fontsize="small",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgrey"})
        elif not finite.size:
            _no_data(ax)
        n = _n_repetitions(scores, method)
        ax.set_title(f"{method} ({f'mean over {n} runs' if n > 1 else f'{n} run'})",
                     fontsize="medium")
        ax.set_xlabel(SCORE_LABELS.get(str(method), f"{method} score"))
        ax.set_ylabel("examples")
        ax.grid(alpha=0.3)
    n_examples = int(scores.sizes.get("sample", 0))
    fig.suptitle(f"Per-example pruning scores ({n_examples} training examples; "
                 "keeping \"hard\" keeps the highest)")
    return fig


def score_agreement(scores: xr.Dataset) -> Figure:
    """Heatmap of the Spearman rank correlation between methods' mean per-example scores."""
    rho = score_correlations(scores)
    methods = [str(m) for m in rho["method_a"].values]
    n = len(methods)
    fig, axes = _new_figure(1, 1, (max(4.2, 0.8 * n + 2.4), max(3.4, 0.8 * n + 1.6)))
    ax = axes[0, 0]
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    # Light text on the saturated ends of the colormap, dark in its pale middle.
    image = _heatmap(ax, rho.values, cmap=cmap, vmin=-1.0, vmax=1.0, aspect="equal",
                     fontsize=9 if n <= 8 else 7, missing="n/a",
                     text_colour=lambda v: "white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(n), methods, rotation=45, ha="right")
    ax.set_yticks(range(n), methods)
    fig.colorbar(image, ax=ax, label="Spearman ρ", shrink=0.9)
    n_examples = int(scores.sizes.get("sample", 0))
    ax.set_title(f"Agreement between scoring methods\nrank correlation of mean scores "
                 f"({n_examples} examples)", fontsize="medium")
    return fig


def finetune_methods(finetune: xr.Dataset) -> Figure:
    """Final test accuracy of each fine-tuning method from each source against the parameters it trains.

    Colour: method; marker: pretraining source ("none": scratch).
    """
    fig, axes = _new_figure(1, 1, (6.4, 4.4))
    ax = axes[0, 0]
    acc = 100.0 * final_value(finetune["test_acc"])
    methods, sources = _values(finetune, "method"), _values(finetune, "source")
    colours, styles = _colours(methods), _source_styles(sources)
    pairs = _source_method_pairs(finetune, "test_acc")
    for source, method in pairs:
        where = {"source": source, "method": method}
        stats = _over_seeds(acc.sel(where))
        count = _over_seeds(finetune["trainable_params"].sel(where)).mean
        x, y, err = float(count), float(stats.mean), float(stats.std)
        if np.isfinite(x) and np.isfinite(y):
            ax.errorbar([x], [y], yerr=[err], marker=styles[source][1], capsize=3, color=colours[method])
            ax.annotate(str(method), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    _log_axis(ax, "x")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(which="both", alpha=0.3)
    if not pairs:
        _no_data(ax)
    drawn = dict.fromkeys(m for _, m in pairs)
    _key(fig, "method", [Line2D([], [], color=colours[m], marker="o", linestyle="", label=str(m)) for m in drawn],
         "outside right upper")
    _key(fig, "source", [Line2D([], [], color="grey", marker=styles[src][1], linestyle="", label=str(src))
                         for src in dict.fromkeys(src for src, _ in pairs)], "outside right lower")
    fig.suptitle(f"Fine-tuning: accuracy per trainable parameter\n({_seeds_text('mean ± std', finetune)})",
                 fontsize="medium")
    return fig


def wiseft(ds: xr.Dataset) -> Figure:
    """WiSE-FT: test accuracy of the interpolated weights against alpha, one panel per source, a line per method."""
    sources, methods = _values(ds, "source"), _values(ds, "method")
    colours = _colours(methods)
    fig, axes = _new_figure(1, len(sources), (5.2, 4.2))
    for ax, source in zip(axes[0], sources):
        for method in methods:
            stats = _over_seeds(100.0 * ds["test_acc"].sel({"source": source, "method": method}))
            _plot_band(ax, ds["alpha"].values, stats, color=colours[method], marker="o", markersize=3,
                       label=f"linear probe → {method}")
        ax.set_xlabel("α  (0: linear probe, 1: fine-tuned)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"pretrained on {source}", fontsize="medium")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize="small")
    fig.suptitle(f"WiSE-FT: weights (1 − α) θ₀ + α θ₁ ({_seeds_text('mean, band min–max', ds)})")
    return fig


ENSEMBLE_BARS = {"best member": None, "mean member": None, "ensemble": "ensemble_acc", "uniform soup": "soup_acc"}


def ensembles(ds: xr.Dataset) -> Figure:
    """Single models against their ensemble and their uniform soup, per source and kind of ensemble."""
    groups = [(src, kind) for src in _values(ds, "source") for kind in _values(ds, "kind")]
    fig, axes = _new_figure(1, 1, (max(6.4, 1.6 * len(groups) + 2.0), 4.4))
    ax = axes[0, 0]
    colours = _colours(ENSEMBLE_BARS)
    width = 0.8 / len(ENSEMBLE_BARS)
    members = 100.0 * ds["member_acc"]
    for i, (bar, var) in enumerate(ENSEMBLE_BARS.items()):
        if var is not None:
            values = 100.0 * ds[var]
        else:
            values = members.max("member") if bar == "best member" else members.mean("member")
        stats = _over_seeds(values)
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
    _legend(ax, fontsize="small")
    ax.set_title(f"Ensembles and soups from one pretrained checkpoint ({_seeds_text('mean ± std', ds)})",
                 fontsize="medium")
    return fig


# ------------------------------------------------------------------------ entry

FIGURES: dict[str, tuple[Callable[..., Figure], tuple[str, ...]]] = {
    "training_curves": (training_curves, ("pretrain", "finetune")),
    "data_pruning": (data_pruning, ("data_pruning", "distill")),
    "best_alpha": (best_alpha, ("distill",)),
    "network_pruning": (network_pruning, ("network_pruning",)),
    "cka": (cka_heatmaps, ("cka",)),
    "score_distributions": (score_distributions, ("scores",)),
    "score_agreement": (score_agreement, ("scores",)),
    "finetune_methods": (finetune_methods, ("finetune",)),
    "wiseft": (wiseft, ("wiseft",)),
    "ensembles": (ensembles, ("ensemble",)),
}


def render(
    figure: str,
    summary_paths: Mapping[str, str | Path],
    outputs: Sequence[str | Path],
) -> None:
    """Draw ``figure`` from the summary stores it needs and save it to every path in ``outputs``."""
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(sorted(FIGURES))}")
    draw, needs = FIGURES[figure]
    missing = [name for name in needs if name not in summary_paths]
    if missing:
        raise ValueError(f"figure {figure!r} needs summaries {list(needs)}; missing: {missing}")
    fig = draw(*(storage.open_dataset(summary_paths[name]) for name in needs))
    try:
        for path in outputs:
            storage.save_figure(fig, path)
    finally:
        # Not registered with pyplot, so clearing is what frees its artists.
        fig.clear()
