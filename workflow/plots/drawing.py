"""Drawing helpers that the figures share: new figures, colours, seed bands and error
bars, legends and keys, annotated heatmaps, log axes; and the labels and styles of
runs that several figure modules draw (sources, fine-tuning and pruning methods).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than
through ``pyplot``: that never opens a window and leaves the global pyplot state
(and whatever backend the caller chose) alone.
"""

from __future__ import annotations

from itertools import product
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colormaps, colors, font_manager, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.runs import NO_SOURCE
from workflow.summaries import SeedStats, coord_values


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


def panel_grid(n: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels in rows of at most three (four as two by two), the axes in
    reading order; the grid's spare cells are switched off."""
    ncols = 2 if n == 4 else min(3, max(1, n))
    fig, axes = new_figure(max(1, -(-n // ncols)), ncols, panel_size)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat)


# tab20 as tab10's ten colours (its even entries) and then their light shades: a palette that
# grows past ten names keeps the first ten colours it gave.
_PALETTE = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
_GREYS = {7, 17}  # tab10's grey and its light shade, in _PALETTE's order


def distinct_colours(names: Iterable[Hashable], *, grey: bool = True) -> dict[Hashable, Any]:
    """One distinct colour per name (up to 20, or 18 without grey), stable in the order
    given: tab10's, then their light shades; without ``grey``, for a figure that draws a
    reference in grey."""
    palette = [c for i, c in enumerate(_PALETTE) if grey or i not in _GREYS]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def selection_colours(names: Iterable[Hashable]) -> dict[Hashable, Any]:
    """The colour of each data-pruning selection (score and kept end): by its place among
    the names sorted, so a selection has one colour in every figure that draws the same set;
    no grey, which the figures keep for references."""
    return distinct_colours(sorted(set(names), key=str), grey=False)


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


def legend(ax: Axes, *, outside: bool = False, below: bool = False, **kwargs: Any) -> None:
    """A legend (beside the figure if ``outside``, beneath its own panel if ``below``), or a
    visible note when nothing was drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        no_data(ax)
    elif below:  # inside the panel, long entries would cover the lines
        spec = ax.get_subplotspec()
        cell = ax.figure.get_size_inches()[0] / (spec.get_gridspec().ncols if spec else 1)
        kwargs.setdefault("ncols", _columns_that_fit(cell, labels, kwargs.get("fontsize"), most=3))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, **kwargs)
    elif outside:
        # Below the panels, in rows: beside them it would collide with the suptitle.
        width = ax.figure.get_size_inches()[0]
        ncols = _columns_that_fit(width, labels, kwargs.get("fontsize"), most=4)
        ax.figure.legend(handles, labels, loc="outside lower center", ncols=ncols, **kwargs)
    else:
        ax.legend(**kwargs)


def _columns_that_fit(width: float, labels: Sequence[str], fontsize: Any, most: int) -> int:
    """How many columns of ``labels`` (1 to ``most``) a legend ``width`` inches wide holds: a
    wider one beneath a panel pushes the panels apart or into its neighbour's, and one
    beneath the figure runs off it."""
    em = font_manager.FontProperties(size=fontsize).get_size_in_points() / 72
    # a column: handle and pad (2.8 em) and the longest text (about 0.55 em a character);
    # 2 em between columns
    column = 2.8 + 0.55 * max(len(label) for label in labels)
    fit = max(n for n in range(1, most + 1) if n == 1 or (n * column + 2 * (n - 1)) * em < 0.95 * width)
    return min(fit, len(labels))


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


def key_below(fig: Figure, title: str, handles: Sequence[Line2D]) -> None:
    """:func:`key` beneath the panels, in as many columns (up to four) as the figure's width holds."""
    if handles:
        labels = [handle.get_label() for handle in handles]
        ncols = _columns_that_fit(fig.get_size_inches()[0], labels, "small", most=4)
        key(fig, title, handles, "outside lower center", ncols=ncols)


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
    log: bool = False,
) -> Any:
    """``values`` as an image with each cell annotated (``missing`` in NaN cells, if given);
    with ``log``, on a logarithmic colour scale, annotated to 3 significant digits."""
    if log:
        image = ax.imshow(values, norm=colors.LogNorm(vmin=vmin, vmax=vmax), cmap=cmap, aspect=aspect)
    else:
        image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect=aspect)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            text, colour = (plain_number(v, 3) if log else f"{v:.2f}"), text_colour(v)
        elif missing is not None:
            text, colour = missing, "dimgrey"
        else:
            continue
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return image


# The leading digits a log axis labels, densest first: the first whose closest two labels
# do not touch is used.
_LEADING_DIGITS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))


_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def plain_number(x: float, digits: int | None = None) -> str:
    """300, 0.05; 3×10⁶ and 2×10⁻⁵ where plain digits would run long (not 3e+06); rounded
    to ``digits`` significant digits when given (1640, not 1.64e+03)."""
    if digits is not None and np.isfinite(x):
        x = float(f"{x:.{digits}g}")
    if not np.isfinite(x) or x == 0 or 1e-4 <= abs(x) < 1e6:
        return f"{x:g}"
    exponent = int(np.floor(np.log10(abs(x))))
    mantissa = f"{x / 10.0 ** exponent:.3g}"
    power = f"10{str(exponent).translate(_SUPERSCRIPTS)}"
    return power if mantissa == "1" else f"{mantissa}×{power}"


class _PlainLogFormatter(ticker.LogFormatter):
    """Tick labels of a log axis as plain numbers (0.1, not 1e-01), as many as the axis has
    room for: every tick, or those with leading digit 1-2-3-5, 1-2-5, 1-3 or 1 (LogFormatter's
    own choice, 2-3-4-6, prints 300 into 400 on a narrow panel). The room is judged at the
    default tick-label size."""

    _leading: tuple[int, ...] | None = None

    def set_locs(self, locs: Any = None) -> None:
        super().set_locs(locs)
        self._leading = self._leading_digits()  # once per drawing of the axis, not per tick

    def __call__(self, x: float, pos: int | None = None) -> str:
        if x > 0 and self._leading is not None:
            show = round(x / 10.0 ** np.floor(np.log10(x))) in self._leading
        else:
            show = bool(super().__call__(x, pos))
        return plain_number(x) if show else ""

    def _leading_digits(self) -> tuple[int, ...] | None:
        """The densest set of :data:`_LEADING_DIGITS` whose labels fit; None if even the
        decades alone would not."""
        low, high = sorted(abs(v) for v in self.axis.get_view_interval())
        if not low > 0 or high <= low:
            return None
        ax = self.axis.axes
        width, height = ax.figure.get_size_inches()
        box = ax.get_position()
        horizontal = self.axis.axis_name == "x"
        inches_per_decade = (box.width * width if horizontal else box.height * height) / np.log10(high / low)
        size = matplotlib.rcParams[f"{self.axis.axis_name}tick.labelsize"]
        font = font_manager.FontProperties(size=size).get_size_in_points() / 72
        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        for leading in _LEADING_DIGITS:
            ticks = [d * 10.0 ** k for k in decades for d in leading if low <= d * 10.0 ** k <= high]
            # a label's extent along the axis: its width for x (about 0.6 em a character), else its height
            longest = max((len(plain_number(t)) for t in ticks), default=1)
            room = (0.6 * font * longest if horizontal else font) + 0.08
            ratios = list(leading) + [10]
            closest = min(np.log10(b / a) for a, b in zip(ratios, ratios[1:]))
            if closest * inches_per_decade > room:
                return leading
        return None


def dodge(i: int, n: int, step: float = 0.008) -> float:
    """Factor that shifts the i-th of n lines a little along a log axis, so ties stay visible."""
    return 10.0 ** (step * (i - (n - 1) / 2))


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
    # The ticks labelled depend on the axis' room for them (see _PlainLogFormatter).
    for set_formatter in (axis.set_major_formatter, axis.set_minor_formatter):
        set_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1.2)))
    # Minor ticks are shorter, so their labels sit closer to the axis than the
    # major ones; the same distance keeps 100 level with 90.
    rc = matplotlib.rcParams
    major_pad = rc[f"{which}tick.major.pad"] + rc[f"{which}tick.major.size"]
    axis.set_tick_params(which="minor", pad=major_pad - rc[f"{which}tick.minor.size"])


# --- labels and styles of runs, shared by the figure modules ---------------------------

# The colour of pretrained models in every figure that shows them beside fine-tuned ones.
PRETRAIN_COLOUR = "black"

# Every fine-tuning method keeps its colour (tab10, by place in this order, grey skipped) in
# every figure and study, whichever methods a summary holds; a method not listed takes
# the colours after these.
FINETUNE_ORDER = ("full", "linear_probe", "lora", "scratch", "eva", "stats", "bn_only", "bn_head")


def finetune_colours(methods: Iterable[Hashable]) -> dict[Hashable, Any]:
    """The colour of each fine-tuning method: fixed for those of :data:`FINETUNE_ORDER`,
    the next ones in turn for the others (pretrained models are drawn in black)."""
    methods = list(methods)
    order = list(FINETUNE_ORDER) + [m for m in methods if m not in FINETUNE_ORDER]
    palette = distinct_colours(order, grey=False)
    return {m: palette[m] for m in methods}


# "scratch" is not fine-tuned at all: it is the no-pretraining baseline.
FINETUNE_LABELS = {"scratch": "from scratch (baseline)"}

# The legend text of a source, where it is not its own name.
SOURCE_LABELS = {NO_SOURCE: "no pretraining"}

# The legend text of each network-pruning method.
PRUNING_LABELS = {
    "imp": "IMP",
    "reinit": "IMP mask, re-initialised",
    "random": "random mask, same layer densities",
    "oneshot": "one-shot magnitude",
    "scratch": "IMP mask from scratch, FLOPs-matched",
    "erk": "random mask, ERK layer densities",
}

# Line styles and markers of the pretraining sources, in config order; the last is
# "none" (scratch) when present.
SOURCE_STYLES = ("-", "--", ":", "-.")
SOURCE_MARKERS = ("o", "s", "^", "D", "v", "P")

# The ``finetuning`` of a pretrained model (not fine-tuned) in the analyses' summaries.
PRETRAINED = NO_SOURCE

# A line of a figure: its selection ({"source": ..., dim: ...}), legend text and style.
Run = tuple[dict[str, Hashable], str, dict[str, Any]]


def finetune_label(source: Hashable, method: Hashable, n_sources: int) -> str:
    """"from scratch (baseline)", "fine-tune: full", or "synthetic → full" with several sources;
    a method trained from no source (random features) "random init → bn_only"."""
    if method in FINETUNE_LABELS:
        return FINETUNE_LABELS[str(method)]
    if source == NO_SOURCE:
        return f"random init → {method}"
    return f"{source} → {method}" if n_sources > 1 else f"fine-tune: {method}"


def source_styles(sources: Sequence[Hashable]) -> dict[Hashable, tuple[str, str]]:
    """Line style and marker of each source (scratch's "none" included)."""
    return {src: (SOURCE_STYLES[i % len(SOURCE_STYLES)], SOURCE_MARKERS[i % len(SOURCE_MARKERS)])
            for i, src in enumerate(sources)}


def present_pairs(ds: xr.Dataset, variables: Sequence[str], dim: str) -> list[tuple[Hashable, Hashable]]:
    """The (source, ``dim``) pairs that have a value of any of ``variables`` (those in ``ds``).

    A summary holds every source x method combination; scratch exists only under
    source "none", and the other methods only under real sources.
    """
    present = [ds[v].notnull().any([d for d in ds[v].dims if d not in ("source", dim)])
               for v in variables if v in ds]
    return [(src, m) for src in coord_values(ds, "source") for m in coord_values(ds, dim)
            if any(bool(p.sel({"source": src, dim: m})) for p in present)]


def run_lines(ds: xr.Dataset, variables: Sequence[str], dim: str) -> list[Run]:
    """One line per (source, method or model) with values, styled as in ``training_curves``.

    Colour: method ("pretrained" black); line style: source ("none": scratch).
    """
    sources = coord_values(ds, "source")
    # "none" (scratch) last, as training_curves orders the sources.
    styles = source_styles(sorted(sources, key=lambda src: src == NO_SOURCE))
    colours = {PRETRAINED: PRETRAIN_COLOUR,
               **finetune_colours(m for m in coord_values(ds, dim) if m != PRETRAINED)}
    n_sources = sum(src != NO_SOURCE for src in sources)
    runs = []
    for src, m in present_pairs(ds, variables, dim):
        if m == PRETRAINED:
            label = f"pretrained: {src}" if n_sources > 1 else "pretrained"
        else:
            label = finetune_label(src, m, n_sources)
        runs.append(({"source": src, dim: m}, label, {"color": colours[m], "linestyle": styles[src][0]}))
    return runs


def run_key(fig: Figure, runs: Sequence[Run], title: str) -> None:
    """The colour and line style of every run, below the panels."""
    handles = [Line2D([], [], label=label, **style) for _, label, style in runs]
    key_below(fig, title, handles)


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
