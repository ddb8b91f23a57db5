"""Figures of data pruning, distillation and per-example scores: test error against
data kept with and without KD, the best KD weight, score histograms and agreement."""

from __future__ import annotations

from itertools import combinations_with_replacement
from typing import Any, Hashable, Iterable, Mapping

import numpy as np
import xarray as xr
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from workflow.plots.drawing import (
    distinct_colours,
    dodge,
    heatmap,
    key,
    key_below,
    log_axis,
    new_figure,
    no_data,
    plot_errorbar,
    selection_colours,
)
from workflow.summaries import (
    best_over,
    best_runs,
    chosen_by,
    coord_values,
    final_value,
    over_seeds,
    quiet_mean,
    seeds_text,
)


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


def _mean_scores(scores: xr.Dataset) -> xr.DataArray:
    """Each example's score averaged over repetitions (``init``), NaN padding skipped.

    An infinite score in any repetition (forgetting: never learned) stays infinite.
    """
    score = scores["score"]
    return quiet_mean(score, "init") if "init" in score.dims else score


def _n_repetitions(scores: xr.Dataset, method: Hashable) -> int:
    """How many repetitions (``init`` rows that are not all NaN) a method has."""
    score = scores["score"].sel({"scoring": method})
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
    means = _mean_scores(scores).transpose("scoring", "sample")
    methods = coord_values(scores, "scoring")
    rho = np.full((len(methods), len(methods)), np.nan)
    for i, j in combinations_with_replacement(range(len(methods)), 2):
        rho[i, j] = rho[j, i] = _spearman(means.values[i], means.values[j])
    # Exactly 1 rather than a rounded 0.9999999999999998.
    rho[np.diag_indices_from(rho)] = np.where(np.isnan(np.diag(rho)), np.nan, 1.0)
    return xr.DataArray(
        rho,
        dims=("scoring_a", "scoring_b"),
        coords={"scoring_a": methods, "scoring_b": methods},
        name="spearman",
    )


def _method_key(fig: Figure, methods: Iterable[Hashable], colours: Mapping[Hashable, Any],
                below: bool = False) -> None:
    """The colour of each method, beside the axes (top right) or, ``below``, beneath them in rows."""
    handles = [Line2D([], [], color=colours[m], marker="o", markersize=4, label=str(m))
               for m in methods]
    if below:
        key_below(fig, "method", handles)
    else:
        key(fig, "method", handles, "outside right upper")


def _kd_style(teacher: str) -> tuple[str, str]:
    """Line style and legend text for the students of ``teacher`` ("none": no KD)."""
    return KD_STYLES.get(teacher, (OTHER_TEACHER_STYLE, f"KD, {teacher} teacher"))


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


def _pruning_curves(
    pruned: xr.Dataset, distill: xr.Dataset
) -> list[tuple[str, xr.DataArray]]:
    """Final test accuracy per (method, fraction, seed) for each line style.

    First the students without KD ("none"), then one entry per teacher, each at the
    (temperature, alpha) with the best seed-mean final validation accuracy per point
    (:func:`~workflow.summaries.chosen_by`).
    """
    curves = [("none", final_value(pruned["test_acc"]))]
    order = list(KD_STYLES)
    teachers = sorted(
        coord_values(distill, "teacher"), key=lambda t: order.index(t) if t in order else len(order)
    )
    by, _ = chosen_by(distill)
    for teacher in teachers:
        acc = distill["test_acc"].sel({"teacher": teacher}, drop=True)
        curves.append((str(teacher), best_runs(acc, KD_HYPERPARAMETERS, by.sel({"teacher": teacher}, drop=True))))
    return curves


def _scoring(ds: xr.Dataset, selection: Hashable) -> str:
    """The score a subset was chosen by: the ``scoring`` coordinate along ``selection``
    where the summary has it, else its label's first part (el2n-hard -> el2n)."""
    if "scoring" in ds.coords and selection in ds["selection"].values:
        return str(ds["scoring"].sel({"selection": selection}).item())
    return str(selection).split("-")[0]


def data_pruning(pruned: xr.Dataset, distill: xr.Dataset) -> Figure:
    """Final test error against training data kept, one panel per score (its selections:
    the end kept, offsets), without and with KD, on one shared scale.

    Solid: no distillation; dashed: KD from the trained teacher; dotted: KD from
    a frozen untrained teacher. Each KD point is at the temperature and alpha with
    the best mean final validation accuracy over seeds for that (method, fraction,
    teacher), and shows its test error. Every other panel repeats random subsets
    without KD as a grey reference line.
    """
    methods = list(dict.fromkeys(coord_values(pruned, "selection") + coord_values(distill, "selection")))
    where = {m: pruned if m in pruned["selection"].values else distill for m in methods}
    scorings = list(dict.fromkeys(_scoring(where[m], m) for m in methods))
    ncols = min(3, len(scorings))
    nrows = -(-len(scorings) // ncols)
    fig, axes = new_figure(nrows, ncols, (4.4, 3.8))
    panel = {scoring: ax for scoring, ax in zip(scorings, axes.flat)}
    for ax in list(axes.flat)[len(scorings):]:
        ax.set_axis_off()
    colours = selection_colours(methods)  # no grey: grey is the random reference
    drawn_methods: set[Hashable] = set()
    styles: list[Line2D] = []
    curves = _pruning_curves(pruned, distill)
    for teacher, acc in curves:
        linestyle, label = _kd_style(teacher)
        x = 100.0 * acc["fraction"].values
        drawn = False
        for method in coord_values(acc, "selection"):
            stats = over_seeds(100.0 * (1.0 - acc.sel({"selection": method})))
            # Each method a little to the side, so that error bars do not hide each other.
            shift = dodge(methods.index(method), len(methods))
            if plot_errorbar(panel[_scoring(where[method], method)], x * shift, stats, color=colours[method],
                             linestyle=linestyle, label=f"{method}, {label}"):
                drawn = True
                drawn_methods.add(method)
        if drawn:
            styles.append(Line2D([], [], color="dimgrey", linestyle=linestyle, label=label))
    reference = curves[0][1]
    if "random" in reference["selection"].values:
        random = over_seeds(100.0 * (1.0 - reference.sel({"selection": "random"})))
        x, mean = 100.0 * reference["fraction"].values, random.mean.values
        keep = np.isfinite(mean)
        for scoring, ax in panel.items():
            if scoring != "random" and keep.any():
                ax.plot(x[keep], mean[keep], color="0.6", linewidth=1.0, marker=".", zorder=0,
                        label="_random, no KD")
    if not styles:
        no_data(axes[0, 0])
    _method_key(fig, [m for m in methods if m in drawn_methods], colours)
    # The choice is made on validation, where the task has a validation set; the key says
    # on which split it was made.
    kd_note = f"KD: temperature T and weight α per point, {chosen_by(distill)[1]}"
    reference_note = "; grey: random subsets, no KD" if len(scorings) > 1 and "random" in scorings else ""
    key_below(fig, (f"line style ({kd_note})" if len(styles) > 1 else "line style") + reference_note, styles)
    # Log-log, as in data-pruning scaling laws; ticks at the fractions actually kept; one
    # error scale for every panel, so that the scores compare at a glance.
    fractions = np.union1d(pruned["fraction"].values, distill["fraction"].values)
    errors = [y for ax in panel.values() for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float)]
    errors = [y for y in errors if np.isfinite(y) and y > 0]
    for scoring, ax in panel.items():
        log_axis(ax, "x", ticks=100.0 * fractions)
        ax.set_xlim(100.0 * fractions.min() / 1.25, 100.0 * fractions.max() * 1.25)
        log_axis(ax, "y")
        if errors:
            ax.set_ylim(min(errors) / 1.15, max(errors) * 1.15)
        ax.grid(which="both", alpha=0.3)
        ax.set_title(scoring, fontsize="medium")
    for ax in axes[-1]:
        ax.set_xlabel("training examples kept (%; methods offset slightly)")
    for ax in axes[:, 0]:
        ax.set_ylabel("final test error (%)")
    how = seeds_text("mean ± std", pruned, distill)
    fig.suptitle(f"Data pruning with and without distillation, a panel per score\n{how}")
    return fig


def best_alpha(distill: xr.Dataset) -> Figure:
    """Best distillation weight alpha (trained teacher) against kept fraction, per method."""
    fig, axes = new_figure(1, 1, (6.0, 4.2))
    ax = axes[0, 0]
    teacher = "trained"
    methods = coord_values(distill, "selection")
    colours = selection_colours(methods)
    drawn: list[Hashable] = []
    if teacher in coord_values(distill, "teacher"):
        acc = distill["test_acc"].sel({"teacher": teacher}, drop=True)
        by, _ = chosen_by(distill)
        _, where = best_over(acc, KD_HYPERPARAMETERS, by.sel({"teacher": teacher}, drop=True))
        x = 100.0 * distill["fraction"].values
        for i, method in enumerate(methods):
            y = where["alpha"].sel({"selection": method}).values.astype(float)
            keep = np.isfinite(y)
            if keep.any():
                ax.plot(x[keep] * dodge(i, len(methods)), y[keep], marker="o",
                        markersize=5, color=colours[method], label=str(method))
                drawn.append(method)
    if not drawn:
        no_data(ax, f"no data for the {teacher} teacher")
    alphas = [float(a) for a in coord_values(distill, "alpha")]
    for a in alphas:
        ax.axhline(a, color="grey", linestyle=":", linewidth=0.8, zorder=0)
    # beneath: beside the axes it would run into the two-line title
    _method_key(fig, drawn, colours, below=True)
    log_axis(ax, "x", ticks=100.0 * distill["fraction"].values)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_locator(ticker.MultipleLocator(0.25))
    ax.set_xlabel("training examples kept (%; methods offset slightly)")
    ax.set_ylabel("best KD weight α\n(dotted: the values swept)")
    ax.grid(axis="x", which="major", alpha=0.3)
    how = seeds_text("mean", distill)
    note = (f"only α = {alphas[0]:g} was swept: nothing to choose" if len(alphas) == 1
            else f"the best final accuracy ({how}) over α and T, {chosen_by(distill)[1]}")
    fig.suptitle(f"Best KD weight α per kept fraction ({teacher} teacher)\n{note}",
                 fontsize="medium")
    return fig


def score_distributions(scores: xr.Dataset) -> Figure:
    """Histogram of each example's mean score (over repetitions), one panel per scoring method."""
    methods = coord_values(scores, "scoring")
    means = _mean_scores(scores)
    colours = distinct_colours(methods)
    ncols = max(1, min(3, len(methods)))
    nrows = max(1, -(-len(methods) // ncols))
    fig, axes = new_figure(nrows, ncols, (3.9, 3.0))
    for ax in axes.flat[len(methods):]:
        ax.set_axis_off()
    for ax, method in zip(axes.flat, methods):
        values = means.sel({"scoring": method}).values
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
            no_data(ax)
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
    methods = [str(m) for m in rho["scoring_a"].values]
    n = len(methods)
    fig, axes = new_figure(1, 1, (max(4.2, 0.8 * n + 2.4), max(3.4, 0.8 * n + 1.6)))
    ax = axes[0, 0]
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    # Light text on the saturated ends of the colormap, dark in its pale middle.
    image = heatmap(ax, rho.values, cmap=cmap, vmin=-1.0, vmax=1.0, aspect="equal",
                    fontsize=9 if n <= 8 else 7, missing="n/a",
                    text_colour=lambda v: "white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(n), methods, rotation=45, ha="right")
    ax.set_yticks(range(n), methods)
    fig.colorbar(image, ax=ax, label="Spearman ρ", shrink=0.9)
    n_examples = int(scores.sizes.get("sample", 0))
    ax.set_title(f"Agreement between scoring methods\nrank correlation of mean scores "
                 f"({n_examples} examples)", fontsize="medium")
    return fig
