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
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workflow import storage

__all__ = [
    "FIGURES",
    "cka_heatmaps",
    "data_pruning",
    "final_value",
    "network_pruning",
    "render",
    "training_curves",
]

LOSS_LABEL = "cross-entropy loss (nats)"
PRETRAIN_COLOUR = "black"
# "scratch" is not fine-tuned at all: it is the no-pretraining baseline.
FINETUNE_LABELS = {"scratch": "from scratch (baseline)"}


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


# Selections below pass a dict: ``sel(method=...)`` would be taken as sel's own
# ``method`` (inexact-match) argument, not as the "method" dim of the sweeps.


def _values(ds: xr.Dataset, dim: str) -> list[Hashable]:
    """Coordinate values along ``dim`` as plain Python objects (for labels and ``sel``)."""
    return ds[dim].values.tolist()


def _select(obj: Any, **indexers: Hashable) -> Any:
    """``sel`` that ignores dims ``obj`` lacks (a coordinate may or may not vary by method)."""
    return obj.sel({k: v for k, v in indexers.items() if k in obj.dims})


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


def _plot_errorbar(ax: Axes, x: Any, stats: _SeedStats, **line: Any) -> None:
    """Mean with std error bars over seeds, as markers joined by a line."""
    x, mean, std, _, _ = _finite(x, stats)
    if x.size:
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=3, **line)


def _legend(ax: Axes, *, outside: bool = False, **kwargs: Any) -> None:
    """A legend (beside the figure if ``outside``), or a visible note when nothing was drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    elif outside:
        # Below the panels, in a row: beside them it would collide with the suptitle.
        ax.figure.legend(
            handles, labels, loc="outside lower center", ncols=min(len(handles), 4), **kwargs
        )
    else:
        ax.legend(**kwargs)


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
    runs: list[tuple[str, xr.Dataset, Any]] = [("pretrain", pretrain, PRETRAIN_COLOUR)]
    methods = _values(finetune, "method")
    colours = _colours(methods)
    runs += [
        (FINETUNE_LABELS.get(m, f"fine-tune: {m}"), finetune.sel({"method": m}), colours[m])
        for m in methods
    ]

    fig, axes = _new_figure(2, 2, (4.6, 3.2))
    panels = [("loss", LOSS_LABEL, 1.0), ("acc", "accuracy (%)", 100.0)]
    for row, (metric, ylabel, scale) in enumerate(panels):
        for col, split in enumerate(("train", "test")):
            ax = axes[row, col]
            for label, ds, colour in runs:
                stats = _over_seeds(ds[f"{split}_{metric}"] * scale)
                _plot_band(ax, ds["epoch"].values, stats, color=colour, label=label)
            ax.set_title(f"{split} {'loss' if metric == 'loss' else 'accuracy'}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    _legend(axes[0, 0], outside=True)
    how = _seeds_text("mean line, min–max band", pretrain, finetune)
    fig.suptitle(f"Training curves: pretraining and fine-tuning ({how})")
    return fig


def data_pruning(ds: xr.Dataset) -> Figure:
    """Final test error against training data kept, per pruning method, with and without KD."""
    fig, axes = _new_figure(1, 1, (6.0, 4.4))
    ax = axes[0, 0]
    error = 100.0 * (1.0 - final_value(ds["test_acc"]))
    methods = _values(ds, "method")
    colours = _colours(methods)
    x = 100.0 * ds["fraction"].values
    for method in methods:
        for kd in _values(ds, "kd"):
            stats = _over_seeds(error.sel({"method": method, "kd": kd}))
            _plot_errorbar(
                ax, x, stats, color=colours[method], linestyle="--" if kd else "-",
                label=f"{method} + KD" if kd else str(method),
            )
    # Log-log, as in data-pruning scaling laws; ticks at the fractions actually kept.
    _log_axis(ax, "x", ticks=x)
    _log_axis(ax, "y")
    ax.set_xlabel("training examples kept (%)")
    ax.set_ylabel("final test error (%)")
    ax.grid(which="both", alpha=0.3)
    _legend(ax, title="method (dashed: with KD)", fontsize="small")
    ax.set_title(f"Data pruning: test error vs data kept ({_seeds_text('mean ± std', ds)})")
    return fig


def network_pruning(ds: xr.Dataset) -> Figure:
    """Final test accuracy against percentage of weights remaining, one line per pruning method."""
    fig, axes = _new_figure(1, 1, (6.0, 4.4))
    ax = axes[0, 0]
    acc = 100.0 * final_value(ds["test_acc"])
    methods = _values(ds, "method")
    colours = _colours(methods)
    for method in methods:
        # density is a coordinate along level, or (as collected from per-run stores)
        # a variable over (method, level, seed) that is equal across seeds.
        x = 100.0 * _over_seeds(_select(ds["density"], method=method)).mean.values
        stats = _over_seeds(acc.sel({"method": method}))
        _plot_errorbar(ax, x, stats, color=colours[method], label=str(method))
    _log_axis(ax, "x")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%, log scale; sparser →)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(which="both", alpha=0.3)
    _legend(ax, title="method", fontsize="small")
    how = _seeds_text("mean ± std", ds)
    ax.set_title(f"Network pruning: test accuracy vs weights remaining ({how})")
    return fig


def cka_heatmaps(ds: xr.Dataset) -> Figure:
    """Linear CKA between pretrained (y) and fine-tuned (x) layers, one heatmap per method."""
    methods = _values(ds, "method")
    n_a, n_b = ds.sizes["layer_a"], ds.sizes["layer_b"]
    # Cells big enough for their annotation; shrink text only for many layers.
    cell = 0.55 if max(n_a, n_b) <= 8 else 0.45
    fig, axes = _new_figure(
        1, len(methods), (max(3.2, cell * n_b + 1.4), max(3.0, cell * n_a + 1.2))
    )
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    fontsize = 8 if max(n_a, n_b) <= 8 else 6
    image = None
    for ax, method in zip(axes[0], methods):
        mean = _over_seeds(ds["cka"].sel({"method": method})).mean
        values = mean.transpose("layer_a", "layer_b").values
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                # Dark text on the bright end of viridis, light text elsewhere.
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(
            range(n_b), [str(v) for v in ds["layer_b"].values], rotation=45, ha="right"
        )
        ax.set_yticks(range(n_a), [str(v) for v in ds["layer_a"].values])
        ax.set_xlabel("fine-tuned layer")
        ax.set_title(f"fine-tune: {method}")
    axes[0, 0].set_ylabel("pretrained layer")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="linear CKA", shrink=0.9)
    how = _seeds_text("mean", ds)
    fig.suptitle(f"Linear CKA: pretrained vs fine-tuned representations ({how})")
    return fig


# ------------------------------------------------------------------------ entry

FIGURES: dict[str, tuple[Callable[..., Figure], tuple[str, ...]]] = {
    "training_curves": (training_curves, ("pretrain", "finetune")),
    "data_pruning": (data_pruning, ("data_pruning",)),
    "network_pruning": (network_pruning, ("network_pruning",)),
    "cka": (cka_heatmaps, ("cka",)),
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
