"""Figures drawn from the tidy summary datasets under ``results/summary/``.

One function per figure; each takes summary datasets and returns a matplotlib
``Figure``. :func:`render` is the entry point a pipeline rule calls: it opens the
summaries, draws one figure and saves it in every requested format.

The figures live in one module per family (data_pruning, network_pruning,
finetuning); summaries and drawing hold the reductions and drawing they share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from matplotlib.figure import Figure

from workflow import storage
from workflow.plots.analysis import connectivity, similarity, spectra, weight_distance
from workflow.plots.data_pruning import (
    KD_STYLES,
    SCORE_LABELS,
    best_alpha,
    data_pruning,
    score_agreement,
    score_correlations,
    score_distributions,
)
from workflow.plots.finetuning import (
    FINETUNE_LABELS,
    cka_heatmaps,
    ensembles,
    finetune_methods,
    training_curves,
    wiseft,
)
from workflow.plots.network_pruning import PRUNING_LABELS, network_pruning
from workflow.plots.summaries import best_over, final_value

__all__ = [
    "FIGURES",
    "FINETUNE_LABELS",
    "KD_STYLES",
    "PRUNING_LABELS",
    "SCORE_LABELS",
    "best_alpha",
    "best_over",
    "cka_heatmaps",
    "connectivity",
    "data_pruning",
    "ensembles",
    "final_value",
    "finetune_methods",
    "network_pruning",
    "render",
    "score_agreement",
    "score_correlations",
    "score_distributions",
    "similarity",
    "spectra",
    "training_curves",
    "weight_distance",
    "wiseft",
]


FIGURES: dict[str, tuple[Callable[..., Figure], tuple[str, ...]]] = {
    "training_curves": (training_curves, ("pretrain", "finetune")),
    "data_pruning": (data_pruning, ("data_pruning", "distill")),
    "best_alpha": (best_alpha, ("distill",)),
    "network_pruning": (network_pruning, ("network_pruning",)),
    "cka": (cka_heatmaps, ("similarity",)),
    "score_distributions": (score_distributions, ("scores",)),
    "score_agreement": (score_agreement, ("scores",)),
    "finetune_methods": (finetune_methods, ("finetune",)),
    "wiseft": (wiseft, ("wiseft",)),
    "ensembles": (ensembles, ("ensemble",)),
    "similarity": (similarity, ("similarity",)),
    "spectra": (spectra, ("spectra",)),
    "connectivity": (connectivity, ("connectivity",)),
    "weight_distance": (weight_distance, ("finetune",)),
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
