"""Figure of the spectra: NTK eigenvalues, top Hessian eigenvalues, NTK condition
number and Hessian trace of every pretrained and fine-tuned model."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workflow.plots.drawing import Run, log_axis, no_data, plain_number, plot_band, run_key, run_lines
from workflow.summaries import crossed, over_seeds, seeds_text


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
            ax.annotate(plain_number(height, 3), (i, top), textcoords="offset points", ha="center",
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


# Markers of the seeds' lines in the Hessian panel: a run's seeds share its colour and style.
SEED_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _hessian_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The top Hessian eigenvalues (by magnitude, so possibly negative) against their index,
    one line per seed: the i-th eigenvalues of two seeds may have opposite signs, and
    their mean would be a curvature neither model has."""
    if "hessian_eigenvalues" in ds:
        eigenvalues = ds["hessian_eigenvalues"]
        index = eigenvalues["hessian_eig"].values + 1
        seeds = eigenvalues["seed"].values if "seed" in eigenvalues.dims else [None]
        for where, label, style in runs:
            for i, seed in enumerate(seeds):
                values = eigenvalues.sel(where if seed is None else {**where, "seed": seed}).values
                if np.isfinite(values).any():
                    ax.plot(index, values, marker=SEED_MARKERS[i % len(SEED_MARKERS)], markersize=3,
                            linewidth=1.0, alpha=0.8, label=label if i == 0 else None, **style)
        _signed_log_axis(ax, eigenvalues.values)
    if not ax.lines:
        no_data(ax)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("index (1 = largest magnitude)")
    ax.set_ylabel("loss Hessian eigenvalue (symmetric log)" if ax.get_yscale() == "symlog"
                  else "loss Hessian eigenvalue")
    ax.set_title("Top Hessian eigenvalues by magnitude, a line per seed", fontsize="medium")
    ax.grid(which="major", alpha=0.3)


def _min_max_bars(ax: Axes, runs: Sequence[Run], da: xr.DataArray) -> np.ndarray:
    """Bars of the mean over seeds of ``da`` per run, error bars from the seeds' min to max; the means."""
    stats = [over_seeds(da.sel(where)) for where, _, _ in runs]
    means = np.array([float(s.mean) for s in stats])
    spread = np.array([means - [float(s.low) for s in stats], [float(s.high) for s in stats] - means])
    _bars(ax, runs, means, spread)
    return means + spread[1]


def _condition_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The NTK condition number per run (:func:`_min_max_bars`), log y in whole decades."""
    tops = _min_max_bars(ax, runs, ds["ntk_condition_number"])
    positive = [float(p.get_height()) for p in ax.patches if p.get_height() > 0]
    if not positive:
        no_data(ax)
        return
    ax.set_yscale("log")
    # Whole decades, with room above the highest bar for its value.
    ax.set_ylim(10.0 ** np.floor(np.log10(min(positive))), 10.0 ** np.ceil(np.log10(4 * float(np.nanmax(tops)))))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _trace_panel(ax: Axes, ds: xr.Dataset, runs: Sequence[Run]) -> None:
    """The Hessian trace per run (:func:`_min_max_bars`; each seed's Hutchinson standard
    error is in the summary, ``hessian_trace_stderr``)."""
    _min_max_bars(ax, runs, ds["hessian_trace"])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.margins(y=0.2)


def spectra(ds: xr.Dataset) -> Figure:
    """NTK eigenvalue spectrum, top Hessian eigenvalues, NTK condition number and Hessian
    trace of every pretrained and fine-tuned model."""
    ds = crossed(ds)
    fig, axes = _spectra_axes()
    variables = ("ntk_eigenvalues", "hessian_eigenvalues", "ntk_condition_number", "hessian_trace")
    runs = run_lines(ds, variables, "finetuning")
    _ntk_panel(axes["ntk"], ds, runs)
    _hessian_panel(axes["hessian"], ds, runs)
    bars = [("condition", _condition_panel, ("ntk_condition_number",), "NTK condition number"),
            ("trace", _trace_panel, ("hessian_trace",), "Hessian trace (Hutchinson)")]
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
    run_key(fig, runs, "model")
    how = seeds_text("NTK spectrum and bars: mean over seeds, band and error bars from min to max", ds)
    fig.suptitle(f"NTK and loss-Hessian spectra of pretrained and fine-tuned models\n({how}; "
                 "Hessian eigenvalues: every seed, never averaged)")
    return fig
