"""The vocabulary of the summaries: every dimension a summary may have, and the long
name and unit of every variable. Written down once, here; :func:`workflow.jobs.collect`
applies it to every summary it writes.

Two rules keep the summaries safe to query with xarray:

* no dimension or coordinate is named like an argument of ``.sel``, ``.isel``,
  ``.interp`` or ``.reindex`` (``method``, ``tolerance``, ``drop``, ...): keyword
  selection such as ``ds.sel(finetuning="full")`` must always mean the dimension;
* no summary is mostly empty: axes that do not cross (scratch has no source) are one
  stacked dimension, ``model`` or ``pair``, whose labels are the runs' ids without their
  seed, with the crossed-out axes as coordinates along it (:data:`STACKED`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from workflow.runs import NO_SOURCE, parse, run_id

# What every dimension of a summary means (its ``long_name``), and the coordinates some have.
DIMENSIONS: dict[str, str] = {
    "model": "a trained model: its run id without the seed folder (pretrain/<source>, finetune/<source>/<method>, "
             "finetune/scratch)",
    "stage": "the training stage of the model",
    "source": f"the pretraining task ({NO_SOURCE!r}: no pretraining)",
    "finetuning": f"the fine-tuning method ({NO_SOURCE!r}: a pretrained model, not fine-tuned)",
    "seed": "seed of the initialisation and data order",
    "epoch": "training epoch (0: before training)",
    "scoring": "how training examples are scored for data pruning (el2n, grand, forgetting, prototypes, random)",
    "selection": "how a data-pruning subset is chosen: a score and which end is kept (el2n-hard), or at random",
    "fraction": "fraction of the training examples kept",
    "keep": "which end of the scores a data-pruning subset keeps (hard: the highest; easy: the lowest; none: random)",
    "offset": "fraction of the most extreme scores a data-pruning subset skips before keeping the next ones",
    "teacher": "distillation teacher (trained: a run of the study; untrained: a random initialisation)",
    "temperature": "distillation temperature T",
    "alpha": "a mixing weight in [0, 1]: of the distillation term (distill), or the position on the line "
             "(1 - alpha) A + alpha B between two models' weights (wiseft, connectivity)",
    "pruning": "network-pruning method",
    "rewind": "optimiser step the pruned runs rewind to",
    "level": "IMP level (0: the dense run)",
    "param": "a parameter tensor, by its state-dict name",
    "layer": "a named layer of the model, whose output is recorded",
    "layer_a": "a named layer of the first model",
    "layer_b": "a named layer of the second model",
    "kind": "ensemble kind (seeds: independent runs; sse: snapshot cycles in sequence; starsse: cycles each "
            "from the fine-tuned model)",
    "member": "ensemble member (0: the study's full fine-tuning run)",
    "pair": "two models joined by a line in weight space: <ends>/<source>",
    "ends": "which two models a connectivity pair joins (probe_full: linear probe and full fine-tuning; "
            "siblings: full fine-tuning and another seed's; ticket_k<step>: the dense model and the last IMP level)",
    "space": "representation space (absolute: the head's inputs; relative: their cosines to the anchors)",
    "measure": "similarity measure",
    "init": "independent repetition of a score (initialisation, training run or k-means seed)",
    "sample": "training example, by its index in the task",
    "eig": "NTK eigenvalue index (0: the largest)",
    "hessian_eig": "Hessian eigenvalue index by magnitude (0: the largest)",
    "anchor_index": "anchor of the relative representations",
    "width": "a zoo model's width (its architecture's channels or units per layer)",
    "size": "the training examples a zoo model trains on (the first N of the task's)",
    "lr": "a zoo model's learning rate (the temperature axis)",
    "other_seed": "the seed of the second model of a pair that differs only in its seed",
    "class_label": "a class of the target task, by its index",
    "subspace_dim": "dimension of the random affine subspaces of input space searched for a class",
    "noise": "how far a random teacher's student starts from it: theta_S = theta_T + noise * an independent "
             "initialisation (0: at the teacher)",
}

# Dimensions along which runs differ in length by nature: runs stop at different epochs
# (FLOPs-matched training), and scores repeat a different number of times; NaN pads them.
RAGGED = ("epoch", "init")

# Stacked dimensions: the coordinates along each, read from its labels (:func:`label_coords`).
STACKED: dict[str, tuple[str, ...]] = {
    "model": ("stage", "source", "finetuning"),
    "pair": ("ends", "source"),
    "selection": ("scoring", "keep", "offset"),  # random has neither keep rule nor offset
}

# Arguments of xarray's selection methods: never a dimension or coordinate name.
SELECTION_ARGUMENTS = frozenset({
    "indexers", "method", "tolerance", "drop", "missing_dims", "coords", "assume_sorted", "kwargs",
    "method_non_numeric", "copy", "fill_value",
})

FRACTION = "fraction (0 to 1)"  # the one unit of accuracies and errors in every store

# Variables by exact name: (long_name, units, kind); kind "int" or "bool" is stored as such.
VARIABLES: dict[str, tuple[str, str, str]] = {
    "trainable_params": ("parameters the run trained", "count", "int"),
    "kept_size": ("training examples per epoch", "count", "int"),
    "density": ("fraction of prunable weights kept", FRACTION, "float"),
    "layer_density": ("fraction of each tensor's weights kept", FRACTION, "float"),
    "weight_distance": ("distance of the weights from their start, ||theta - theta_0||", "parameter units", "float"),
    "relative_weight_distance": ("||theta - theta_0|| / ||theta_0||", "1", "float"),
    "diverged_epoch": ("epoch in which the run's loss became NaN or infinite (NaN: never)", "epoch", "float"),
    "diverged_step": ("optimiser step at which the run's loss became NaN or infinite (NaN: never)", "step", "float"),
    "score": ("score of each training example (high: hard)", "score units", "float"),
    "label": ("class of each training example", "class index", "int"),
    "member_acc": ("test accuracy of each member", FRACTION, "float"),
    "member_loss": ("test cross-entropy of each member", "nats", "float"),
    "ensemble_acc": ("test accuracy of the ensemble (mean of the members' probabilities)", FRACTION, "float"),
    "ensemble_loss": ("test cross-entropy of the ensemble", "nats", "float"),
    "soup_acc": ("test accuracy of the uniform soup (mean of the members' weights)", FRACTION, "float"),
    "soup_loss": ("test cross-entropy of the uniform soup", "nats", "float"),
    "member_val_acc": ("validation accuracy of each member", FRACTION, "float"),
    "greedy_soup_acc": ("test accuracy of the greedy soup (members added in order of validation accuracy while "
                        "the soup's validation accuracy rises)", FRACTION, "float"),
    "greedy_soup_loss": ("test cross-entropy of the greedy soup", "nats", "float"),
    "greedy_soup_val_acc": ("validation accuracy of the greedy soup", FRACTION, "float"),
    "greedy_soup_member": ("whether the greedy soup holds the member", "bool", "bool"),
    "linear_cka": ("linear CKA", "1", "float"),
    "debiased_cka": ("debiased (minibatch) linear CKA", "1", "float"),
    "rbf_cka": ("CKA with Gaussian kernels", "1", "float"),
    "svcca": ("SVCCA: mean canonical correlation", "1", "float"),
    "pwcca": ("PWCCA: projection-weighted mean canonical correlation", "1", "float"),
    "procrustes": ("squared orthogonal Procrustes distance (0: identical up to rotation)", "1", "float"),
    "similarity": ("similarity of the two models' test representations", "1", "float"),
    "stitched_acc": ("test accuracy of a ridge classifier fitted on the first model's training representations, "
                     "applied to the second's", FRACTION, "float"),
    "classifier_acc_a": ("test accuracy of the same ridge classifier on the first model's own representations",
                         FRACTION, "float"),
    "model_acc_a": ("test accuracy of the first model with its own head", FRACTION, "float"),
    "model_acc_b": ("test accuracy of the second model with its own head", FRACTION, "float"),
    "anchor": ("index of each anchor among the training examples", "example index", "int"),
    "stable": ("test-error barrier below the threshold (stable_below)", "bool", "bool"),
    "ntk_eigenvalues": ("eigenvalues of the empirical NTK (traced over outputs)", "squared output units", "float"),
    "ntk_condition_number": ("NTK condition number over the eigenvalues above rounding", "1", "float"),
    "ntk_rank": ("NTK eigenvalues above rounding", "count", "int"),
    "ntk_alignment": ("kernel-target alignment of the NTK", "1", "float"),
    "ntk_alignment_centered": ("centred kernel-target alignment of the NTK", "1", "float"),
    "hessian_eigenvalues": ("top eigenvalues of the training loss's Hessian, by magnitude", "nats per squared "
                            "parameter unit", "float"),
    "hessian_trace": ("trace of the training loss's Hessian (Hutchinson)", "nats per squared parameter unit", "float"),
    "hessian_trace_stderr": ("standard error of the Hutchinson trace", "nats per squared parameter unit", "float"),
    "init_hidden_covariance": ("hidden-covariance score of each hidden layer at initialisation, on one minibatch "
                               "(high: units uncorrelated)", "1", "float"),
    "init_ntk_condition_number": ("NTK condition number at initialisation, on one minibatch", "1", "float"),
    "init_ntk_alignment": ("centred kernel-target alignment of the NTK at initialisation, on one minibatch", "1",
                           "float"),
    "hessian_top_eigenvalue": ("largest eigenvalue (by magnitude) of the training loss's Hessian",
                               "nats per squared parameter unit", "float"),
    "barrier": ("mean test-error barrier on the straight line to each other seed of the zoo cell", FRACTION,
                "float"),
    "aligned_barrier": ("mean test-error barrier to each other seed of the zoo cell, its units aligned to this "
                        "model's", FRACTION, "float"),
    "cka": ("mean linear CKA of matched layers to each other seed of the zoo cell", "1", "float"),
    "aligned_unit_correlation": ("mean correlation of each of the first model's units with the second model's "
                                 "unit matched to it, per block", "1", "float"),
    "input_dim": ("dimension of the model's input space", "dimensions", "int"),
    "success_rate": ("fraction of random affine subspaces through random inputs within which the search reached "
                     "the class at the threshold probability", FRACTION, "float"),
    "class_manifold_dimension": ("effective dimension of the class's high-confidence region: the input's "
                                 "dimension minus the smallest subspace dimension reaching it in at least half "
                                 "the trials (Fort et al.)", "dimensions", "float"),
}

ALIGNED = "aligned_"  # prefixes a connectivity measure taken after aligning the units (analysis.alignment)

# Variables by pattern, for families of names: (regex, long_name with {groups}, units, kind).
PATTERNS: tuple[tuple[str, str, str, str], ...] = (
    (r"(train|val|test)_acc", "{0} accuracy", FRACTION, "float"),
    (r"(train|val|test)_loss", "{0} cross-entropy", "nats", "float"),
    (r"(train|test)_error", "{0} error (1 - accuracy)", FRACTION, "float"),
    (r"(train|test)_error_barrier", "{0} error's rise above the line between the ends", FRACTION, "float"),
    (r"(train|test)_loss_barrier", "{0} cross-entropy's rise above the line between the ends", "nats", "float"),
    (r"(train|test)_error_max_minus_mean_of_ends", "{0} error's maximum minus the mean of the ends (Frankle et al.)",
     FRACTION, "float"),
    (r"(train|test)_loss_max_minus_mean_of_ends", "{0} cross-entropy's maximum minus the mean of the ends",
     "nats", "float"),
    (r"(weight|representation)_entropy", "entropy effective rank of each {0}", "1", "float"),
    (r"(weight|representation)_participation_ratio", "participation ratio of each {0}'s singular values", "1",
     "float"),
    (r"(weight|representation)_max_rank", "largest rank each {0} can have", "count", "int"),
    (r"probe_(train|val|test)_acc", "{0} accuracy of a linear probe (ridge, fitted on the training set) of the "
     "random teacher's student's penultimate features", FRACTION, "float"),
    (r"teacher_probe_(train|val|test)_acc", "{0} accuracy of a linear probe (ridge, fitted on the training set) of "
     "the frozen random teacher's penultimate features", FRACTION, "float"),
)


def variable_info(name: str) -> tuple[str, str, str]:
    """``(long_name, units, kind)`` of a summary variable; a name the vocabulary lacks is an error."""
    if name in VARIABLES:
        return VARIABLES[name]
    if name.startswith(ALIGNED) and name not in VARIABLES:  # the same measure after aligning units
        long_name, units, kind = variable_info(name.removeprefix(ALIGNED))
        return f"{long_name}, the second model's units aligned to the first's", units, kind
    for pattern, long_name, units, kind in PATTERNS:
        if (m := re.fullmatch(pattern, name)) is not None:
            return long_name.format(*m.groups()), units, kind
    raise KeyError(f"summary variable {name!r} is not in the vocabulary of workflow.axes: add its long name and unit")


def model_label(run: str) -> str:
    """A run's label on the ``model`` axis: its id without the seed folder."""
    return "/".join(part for part in run.split("/") if not re.fullmatch(r"s\d+", part))


def model_coords(run: str | Mapping[str, Any], *, seed: bool = True) -> dict[str, Any]:
    """A pretrained or fine-tuned run's coordinates on the ``model`` axis (and its seed), from
    its id or its parsed id."""
    if isinstance(run, str):
        r = parse(run)
    else:
        r, run = run, run_id(run["stage"], **{k: v for k, v in run.items() if k != "stage"})
    finetuning = r["method"] if r["stage"] != "pretrain" else NO_SOURCE
    coords: dict[str, Any] = {"model": model_label(run), "stage": r["stage"], "source": r.get("source", NO_SOURCE),
                              "finetuning": finetuning}
    return {**coords, "seed": r["seed"]} if seed else coords


def pair_coords(ends: str, source: str) -> dict[str, Any]:
    """A connectivity pair's coordinates on the ``pair`` axis."""
    return {"pair": f"{ends}/{source}", "ends": ends, "source": source}
