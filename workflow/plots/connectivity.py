"""Figure of linear mode connectivity: test error along the line between two models."""

from __future__ import annotations

from typing import Hashable

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from workflow.plots.drawing import (
    SOURCE_LABELS,
    distinct_colours,
    legend,
    new_figure,
    no_data,
    plot_band,
)
from workflow.summaries import coord_values, crossed, over_seeds, seeds_text

# The two ends (alpha = 0, alpha = 1) of the connectivity pairs the study joins; a
# "ticket_k<step>" pair joins the dense model and the last IMP level of that rewind step.
PAIR_ENDS = {
    "probe_full": ("linear probe", "full fine-tuning"),
    "siblings": ("full fine-tuning", "a sibling (other seed)"),
}


def _ends(curve: xr.DataArray) -> tuple[float, float]:
    """``curve`` (dim ``alpha``) at alpha = 0 and alpha = 1 (NaN where missing)."""
    alpha = curve["alpha"].values
    return tuple(float(curve.isel(alpha=np.isclose(alpha, end)).mean(skipna=False)) for end in (0.0, 1.0))


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

    One line per pretraining source; the dashed line joins the two ends, so the
    barrier is how far the curve rises above it. Frankle et al.'s max minus the mean
    of the ends is given beside it in the legend.
    """
    ds = crossed(ds)
    pairs, sources = coord_values(ds, "ends"), coord_values(ds, "source")
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
            where = {"ends": pair, "source": source}
            stats = over_seeds(error.sel(where))
            if not stats.mean.notnull().any():
                continue
            label = SOURCE_LABELS.get(str(source), str(source))
            if "test_error_barrier" in ds:
                barrier = over_seeds(100.0 * ds["test_error_barrier"].sel(where)).mean
                if barrier.notnull():
                    label += f": barrier {float(barrier):.1f} pp"
                if "test_error_max_minus_mean_of_ends" in ds:
                    frankle = over_seeds(100.0 * ds["test_error_max_minus_mean_of_ends"].sel(where)).mean
                    if frankle.notnull():
                        label += f" (max − mean of ends {float(frankle):.1f})"
            plot_band(ax, ds["alpha"].values, stats, color=colours[source], marker="o",
                      markersize=2, label=label)
            ends = _ends(stats.mean)
            if np.isfinite(ends).all():
                ax.plot([0.0, 1.0], ends, color=colours[source], linestyle="--", linewidth=1.0)
        title, xlabel = _pair_text(pair)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        legend(ax, below=True, fontsize="small")
    how = seeds_text("mean line, min–max band", ds)
    fig.suptitle("Linear mode connectivity: weights (1 − α) θ_A + α θ_B\n"
                 "dashed: the straight line between the ends' errors; barrier: how far the curve rises above it\n"
                 f"(barriers: mean over seeds; curves: {how})", fontsize="medium")
    return fig
