"""The model zoo's figures: its phase diagram (each metric over the load (training-set
size) x temperature (learning rate) plane, one row per width, and each cell's phase), and
its training-free scores against trained accuracy."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.figure import Figure

from workflow.plots.drawing import distinct_colours, heatmap, legend, new_figure
from workflow.summaries import (ZOO_AXES, ZOO_PHASES, final_value, zoo_init_scores, zoo_manifold, zoo_metrics,
                                zoo_phases, zoo_rank_agreement)

# What each panel draws: (label, scale, colour map, log colour scale).
PANELS = {
    "test_acc": ("test accuracy (%)", 100.0, "viridis", False),
    "hessian_trace": ("Hessian trace", 1.0, "magma", True),  # spans orders of magnitude
    "barrier": ("test-error barrier to other seeds (points)", 100.0, "magma", False),
    "aligned_barrier": ("the barrier, units aligned (points)", 100.0, "magma", False),
    "cka": ("linear CKA to other seeds (matched layers)", 1.0, "viridis", False),
}
PHASE_CODES = {"I": 0, "II": 1, "III": 2, "IV-A": 3, "IV-B": 4}


def zoo(ds: xr.Dataset, connectivity_seed_pairs: xr.Dataset | None = None,
        similarity_seed_pairs: xr.Dataset | None = None) -> Figure:
    """Rows: widths; columns: each metric's seed mean over size (rows of a panel) x learning
    rate (its columns), on one colour scale per metric, then the phases where the seed
    pairs were analysed."""
    cells = zoo_metrics(ds, connectivity_seed_pairs, similarity_seed_pairs)
    panels = [name for name in PANELS if name in cells]
    found = zoo_phases(cells, ds.attrs.get("phases") or ZOO_PHASES)
    widths, sizes, lrs = (cells[d].values.tolist() for d in ("width", "size", "lr"))
    ncols = len(panels) + (found is not None)
    fig, axes = new_figure(len(widths), ncols, (2.2 + 0.45 * len(lrs), 0.9 + 0.4 * len(sizes)))
    for j, name in enumerate(panels):
        label, scale, cmap, log = PANELS[name]
        means = scale * cells[name].mean("seed").transpose("width", "size", "lr")
        vmin, vmax = float(means.min()), float(means.max())
        log = log and vmin > 0
        label = label + " (log colour)" if log else label
        middle = np.sqrt(vmin * vmax) if log else (vmin + vmax) / 2
        for i, width in enumerate(widths):
            ax = axes[i, j]
            image = heatmap(ax, means.sel(width=width).values, cmap=cmap, vmin=vmin, vmax=vmax, fontsize=6,
                            text_colour=lambda v, mid=middle: "white" if v < mid else "black",
                            missing="-", log=log)
            if i == 0:
                ax.set_title(label, fontsize="small")
        fig.colorbar(image, ax=axes[:, j], shrink=0.6)
    if found is not None:
        phase, said = found
        codes = xr.apply_ufunc(np.vectorize(lambda p: PHASE_CODES.get(p, np.nan), otypes=[float]), phase)
        for i, width in enumerate(widths):
            ax = axes[i, -1]
            ax.imshow(codes.sel(width=width).transpose("size", "lr").values, cmap="Pastel1", vmin=0, vmax=8,
                      aspect="auto")
            for (r, c), p in np.ndenumerate(phase.sel(width=width).transpose("size", "lr").values):
                ax.text(c, r, p or "-", ha="center", va="center", fontsize=7)
            if i == 0:
                ax.set_title("phase", fontsize="small")
    for i, width in enumerate(widths):
        for ax in axes[i]:
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize="x-small")
            ax.set_yticks(range(len(sizes)), [str(n) for n in sizes], fontsize="x-small")
        axes[i, 0].set_ylabel(f"width {width}\ntraining examples", fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("learning rate", fontsize="small")
    title = f"Model zoo: load x temperature, mean over {ds.sizes['seed']} seeds"
    fig.suptitle(title + (f"\nphases: {found[1]}" if found is not None else ""), fontsize="medium")
    return fig


def _decades(values: np.ndarray) -> float:
    """How many decades the magnitudes of the finite non-zero ``values`` span (0 for none)."""
    magnitude = np.abs(values[np.isfinite(values) & (values != 0)])
    return float(np.log10(magnitude.max() / magnitude.min())) if magnitude.size else 0.0


def zoo_scores(ds: xr.Dataset, manifold: xr.Dataset | None = None) -> Figure:
    """Each training-free score of the initialisations (and, where measured, the trained
    models' class-manifold dimension) against final test accuracy, a point per model coloured
    by width; each panel titled with the rank agreement over every model and within each
    training-set size and learning rate (:func:`workflow.summaries.zoo_rank_agreement`)."""
    accuracy = 100 * final_value(ds["test_acc"])
    panels = dict(zoo_init_scores(ds))
    if manifold is not None:
        measured = zoo_manifold(ds, manifold)
        panels["class-manifold dimension (trained)"] = measured["class_manifold_dimension"]
    fig, axes = new_figure(1, len(panels), (3.2, 3.0))
    colours = distinct_colours(ds["width"].values.tolist())
    for ax, (label, score) in zip(axes[0], panels.items()):
        acc = accuracy.sel({d: score[d] for d in ZOO_AXES})
        for width, colour in colours.items():
            ax.scatter(score.sel(width=width).values.ravel(), acc.sel(width=width).values.ravel(), s=6,
                       color=colour, alpha=0.7, label=f"width {width}")
        if label == "NTK condition number":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # decades only: the minor labels collide
        elif label.startswith("hidden covariance") and _decades(score.values) > 2:
            # about -units for uncorrelated units, down to -1e5 per near-zero eigenvalue: decades
            # apart (on a linear axis when they are not, where symlog's labels would collide)
            ax.set_xscale("symlog")
        ranks = zoo_rank_agreement(score, acc)
        ax.set_title(f"{label}\nτ {ranks['kendall_tau']:.2f}, ρ {ranks['spearman_rho']:.2f}; "
                     f"τ within size, lr {ranks['kendall_tau_within']:.2f}", fontsize="small")
        ax.set_xlabel(label, fontsize="small")
    axes[0, 0].set_ylabel("final test accuracy (%)")
    legend(axes[0, -1], outside=True, fontsize="x-small")
    title = "Model zoo: training-free scores at initialisation against trained accuracy"
    fig.suptitle(title + (", and the class-manifold dimension" if manifold is not None else ""), fontsize="medium")
    return fig
