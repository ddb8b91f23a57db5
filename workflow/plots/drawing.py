"""Drawing helpers that the figures share: new figures, colours, seed bands and error
bars, legends and keys, annotated heatmaps, log axes.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than
through ``pyplot``: that never opens a window and leaves the global pyplot state
(and whatever backend the caller chose) alone.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.plots.summaries import SeedStats


def new_figure(
    nrows: int, ncols: int, panel_size: tuple[float, float]
) -> tuple[Figure, np.ndarray]:
    """A figure with an Agg canvas and a 2-D array of axes."""
    fig = Figure(
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def distinct_colours(names: Iterable[Hashable]) -> dict[Hashable, Any]:
    """One distinct colour per name, stable in the order given."""
    cmap = colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _finite(x: Any, stats: SeedStats) -> tuple[np.ndarray, ...]:
    """x, mean, std, low, high at the points where x and the mean exist.

    Dropping NaN points (holes, runs that stopped early, combinations not run)
    joins the line across a missing evaluation instead of leaving a gap or an
    invisible isolated point.
    """
    x, mean = np.asarray(x, dtype=float), stats.mean.values
    keep = np.isfinite(mean) & np.isfinite(x)
    arrays = (x, mean, stats.std.values, stats.low.values, stats.high.values)
    return tuple(a[keep] for a in arrays)


def plot_band(ax: Axes, x: Any, stats: SeedStats, **line: Any) -> None:
    """Mean as a line with a min–max band over seeds."""
    x, mean, _, low, high = _finite(x, stats)
    if x.size:
        (handle,) = ax.plot(x, mean, **line)
        ax.fill_between(x, low, high, color=handle.get_color(), alpha=0.2, lw=0)


def plot_errorbar(ax: Axes, x: Any, stats: SeedStats, **line: Any) -> bool:
    """Mean with std error bars over seeds, as markers joined by a line; whether any was drawn."""
    x, mean, std, _, _ = _finite(x, stats)
    if x.size:
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=3, **line)
    return bool(x.size)


def legend(ax: Axes, *, outside: bool = False, **kwargs: Any) -> None:
    """A legend (beside the figure if ``outside``), or a visible note when nothing was drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        no_data(ax)
    elif outside:
        # Below the panels, in a row: beside them it would collide with the suptitle.
        ax.figure.legend(
            handles, labels, loc="outside lower center", ncols=min(len(handles), 4), **kwargs
        )
    else:
        ax.legend(**kwargs)


def no_data(ax: Axes, text: str = "no data") -> None:
    """Say in the panel that there is nothing to show."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")


def key(
    fig: Figure, title: str, handles: Sequence[Line2D], loc: str, **kwargs: Any
) -> None:
    """A legend of handmade entries (colours or line styles) beside the axes."""
    if handles:
        fig.legend(handles=list(handles), loc=loc, title=title, fontsize="small",
                   title_fontsize="small", **kwargs)


def heatmap(
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


class _PlainLogFormatter(ticker.LogFormatter):
    """LogFormatter's choice of which ticks to label, as plain numbers (0.1, not 1e-01)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_axis(ax: Axes, which: str, ticks: Sequence[float] | None = None) -> None:
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
