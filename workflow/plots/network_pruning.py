"""Figure of network pruning: test accuracy against weights remaining, per pruning
method and rewind step."""

from __future__ import annotations

from typing import Any, Hashable

import xarray as xr
from matplotlib.figure import Figure

from workflow.plots.drawing import (
    PRUNING_LABELS,
    distinct_colours,
    legend,
    log_axis,
    new_figure,
    plot_band,
)
from workflow.summaries import coord_values, final_value, over_seeds, seeds_text


def _select(obj: Any, **indexers: Hashable) -> Any:
    """``sel`` that ignores dims ``obj`` lacks (a coordinate may or may not vary by method)."""
    return obj.sel({k: v for k, v in indexers.items() if k in obj.dims})


def network_pruning(ds: xr.Dataset) -> Figure:
    """Final test accuracy against weights remaining, one line per pruning method, one
    panel per rewind step; seeds as min–max bands, the dense model as a dotted line."""
    rewinds = coord_values(ds, "rewind") if "rewind" in ds.dims else [None]
    fig, axes = new_figure(1, len(rewinds), (5.6, 4.4))
    acc = 100.0 * final_value(ds["test_acc"])
    methods = coord_values(ds, "pruning")
    colours = distinct_colours(methods)
    for ax, k in zip(axes[0], rewinds):
        panel = _select(acc, rewind=k)
        density = _select(ds["density"], rewind=k)
        for method in methods:
            # density is a variable over (method, level, seed), equal across seeds
            x = 100.0 * over_seeds(_select(density, pruning=method)).mean.values
            stats = over_seeds(panel.sel({"pruning": method}))
            plot_band(ax, x, stats, color=colours[method], marker="o", markersize=3,
                      label=PRUNING_LABELS.get(str(method), str(method)))
        if "level" in panel.dims and 0 in panel["level"]:
            dense = over_seeds(panel.sel(level=0)).mean.mean().item()
            ax.axhline(dense, color="0.4", ls=":", lw=1, label=f"dense ({dense:.1f} %)")
        log_axis(ax, "x")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%, log scale; sparser →)")
        ax.grid(which="both", alpha=0.3)
        if k is not None:
            ax.set_title(f"rewind to step {k}" + (" (original lottery ticket)" if k == 0 else ""),
                         fontsize="medium")
    axes[0, 0].set_ylabel("final test accuracy (%)")
    legend(axes[0, -1], fontsize="small")
    how = seeds_text("mean, band min–max", ds)
    fig.suptitle(f"Network pruning: test accuracy vs weights remaining ({how})")
    return fig
