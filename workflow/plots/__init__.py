"""Figures drawn from the tidy summary datasets under ``results/summary/``.

One function per figure; each takes summary datasets (those :data:`FIGURES` names,
in order, and those of its :data:`OPTIONAL_SUMMARIES` a study has, by name) and
returns a matplotlib ``Figure``. :func:`render` is the entry point a pipeline rule
calls: it opens the summaries, draws one figure and saves it in every requested format.

The figures live in one module per family (finetuning, data_pruning,
network_pruning, similarity, spectra, connectivity); :mod:`workflow.plots.drawing`
holds the drawing, labels and styles they share, and :mod:`workflow.summaries` the
reductions (shared with the report, which draws nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

from matplotlib.figure import Figure

from workflow import storage
from workflow.plots.connectivity import connectivity
from workflow.plots.data_pruning import (
    KD_STYLES,
    SCORE_LABELS,
    best_alpha,
    data_pruning,
    score_agreement,
    score_correlations,
    score_distributions,
)
from workflow.plots.drawing import FINETUNE_LABELS, PRUNING_LABELS
from workflow.plots.finetuning import (
    cka_heatmaps,
    ensembles,
    finetune_methods,
    random_teacher,
    training_curves,
    weight_distance,
    wiseft,
)
from workflow.plots.network_pruning import network_pruning
from workflow.plots.similarity import LINEAGE, lineage, similarity, similarity_within
from workflow.plots.spectra import spectra
from workflow.plots.zoo import zoo, zoo_scores
from workflow.summaries import best_over, final_value, zoo_metrics, zoo_phases, zoo_rank_agreement

__all__ = [
    "FIGURES",
    "REPORT_CATEGORIES",
    "REPORT_CATEGORY",
    "FINETUNE_LABELS",
    "KD_STYLES",
    "PRUNING_LABELS",
    "SCORE_LABELS",
    "best_alpha",
    "best_over",
    "cka_heatmaps",
    "connectivity",
    "data_pruning",
    "drawable",
    "ensembles",
    "figure_summaries",
    "final_value",
    "finetune_methods",
    "lineage",
    "network_pruning",
    "random_teacher",
    "render",
    "score_agreement",
    "score_correlations",
    "score_distributions",
    "similarity",
    "similarity_within",
    "spectra",
    "training_curves",
    "weight_distance",
    "wiseft",
    "zoo",
    "zoo_metrics",
    "zoo_phases",
    "zoo_rank_agreement",
    "zoo_scores",
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
    "lineage": (lineage, ()),
    "similarity_within": (similarity_within, ("similarity_within",)),
    "zoo": (zoo, ("zoo",)),
    "zoo_scores": (zoo_scores, ("zoo",)),
    "random_teacher": (random_teacher, ("random_teacher",)),
}
# The question each figure answers: its category in Snakemake's report (rules/plot.smk).
REPORT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Pretraining and transfer": ("training_curves", "finetune_methods", "wiseft", "ensembles", "weight_distance",
                                 "random_teacher"),
    "Data pruning and distillation": ("data_pruning", "best_alpha", "score_distributions", "score_agreement"),
    "Network pruning": ("network_pruning",),
    "Analysis along the lineage": ("lineage", "cka", "similarity", "similarity_within", "spectra", "connectivity"),
    "Model zoo": ("zoo", "zoo_scores"),
}
REPORT_CATEGORY = {figure: category for category, figures in REPORT_CATEGORIES.items() for figure in figures}

# Summaries a figure also draws from, passed by name, when the study has them; such a
# figure is drawn when the study has at least one of them.
OPTIONAL_SUMMARIES: dict[str, tuple[str, ...]] = {"lineage": tuple(LINEAGE),
                                                  "zoo": ("connectivity_seed_pairs", "similarity_seed_pairs"),
                                                  "zoo_scores": ("manifold",)}


def figure_summaries(figure: str, available: Collection[str]) -> list[str]:
    """The summaries ``figure`` is drawn from in a study with the summaries ``available``:
    every one it needs, and those of its optional ones the study has."""
    needs = FIGURES[figure][1]
    return [*needs, *(name for name in OPTIONAL_SUMMARIES.get(figure, ()) if name in available)]


def drawable(figure: str, available: Collection[str]) -> bool:
    """Whether a study with the summaries ``available`` has what ``figure`` is drawn from."""
    names = figure_summaries(figure, available)
    return bool(names) and set(names) <= set(available)


def render(
    figure: str,
    summary_paths: Mapping[str, str | Path],
    outputs: Sequence[str | Path],
    dpi: int = 150,
) -> None:
    """Draw ``figure`` from the summary stores it needs and save it to every path in ``outputs``."""
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(sorted(FIGURES))}")
    draw, needs = FIGURES[figure]
    missing = [name for name in needs if name not in summary_paths]
    if missing:
        raise ValueError(f"figure {figure!r} needs summaries {list(needs)}; missing: {missing}")
    optional = [name for name in OPTIONAL_SUMMARIES.get(figure, ()) if name in summary_paths]
    if not drawable(figure, summary_paths):
        raise ValueError(f"figure {figure!r} needs one of the summaries {list(OPTIONAL_SUMMARIES[figure])}")
    fig = draw(*(storage.open_dataset(summary_paths[name]) for name in needs),
               **{name: storage.open_dataset(summary_paths[name]) for name in optional})
    try:
        for path in outputs:
            storage.save_figure(fig, path, dpi=dpi)
    finally:
        # Not registered with pyplot, so clearing is what frees its artists.
        fig.clear()
