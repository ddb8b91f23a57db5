"""Relative representations (Moschella et al. 2023, "Relative representations enable
zero-shot latent space communication").

An example's relative representation is its cosine similarity to the embeddings of
a fixed set of anchor examples, the same inputs for every model:
``r(x)_j = cos(e(x), e(a_j))``. It is unchanged by rotations, reflections and
isotropic rescaling of the latent space, which is what lets a classifier trained
on one model's relative representations read another's ("zero-shot stitching").
All numerics are float64.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from workflow.runtime import eval_mode, model_device
from workflow.analysis.cka import Array, as_matrix, linear_cka


def _labels(y: Array) -> np.ndarray:
    return np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)


def choose_anchors(labels: Array, num_anchors: int, seed: int, class_balanced: bool = False) -> np.ndarray:
    """Indices of ``num_anchors`` distinct examples among ``len(labels)``, drawn by ``seed``.

    With ``class_balanced`` the classes' counts differ by at most one (as far as
    the classes' sizes allow). Returned sorted, so the anchors' order (the
    relative representation's dims) is the order of the dataset.
    """
    labels = _labels(labels)
    if not 0 < num_anchors <= len(labels):
        raise ValueError(f"choose_anchors: cannot choose {num_anchors} anchors among {len(labels)} examples")
    order = np.random.default_rng(seed).permutation(len(labels))
    if class_balanced:
        # Take the first of every class (in the random order), then the second, ...
        rank = np.empty(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            members = order[labels[order] == c]
            rank[members] = np.arange(len(members))
        order = order[np.argsort(rank[order], kind="stable")]
    return np.sort(order[:num_anchors])


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"relative_representation: {what} has a zero embedding (its cosine is undefined)")
    return x / norms


def relative_representation(embeddings: Array, anchors: Array) -> np.ndarray:
    """``(n, k)`` cosine similarities of ``n`` embeddings to ``k`` anchor embeddings.

    Both are flattened to ``(n, d)`` and ``(k, d)``, in the same latent space.
    """
    e, a = as_matrix(embeddings), as_matrix(anchors)
    if e.shape[1] != a.shape[1]:
        raise ValueError(f"relative_representation: embeddings have {e.shape[1]} dims, anchors {a.shape[1]}")
    return _unit_rows(e, "embeddings") @ _unit_rows(a, "anchors").T


def row_cosine(x: Array, y: Array) -> float:
    """The mean cosine similarity of matching rows of two ``(n, d)`` representations."""
    x, y = as_matrix(x), as_matrix(y)
    if x.shape != y.shape:
        raise ValueError(f"row_cosine: shapes {x.shape} and {y.shape} differ")
    return float(np.mean(np.sum(_unit_rows(x, "x") * _unit_rows(y, "y"), axis=1)))


SIMILARITIES = {"row_cosine": row_cosine, "linear_cka": linear_cka}
"""Similarity measures of two representations of the same samples."""


def compare_spaces(embeddings_a: Array, anchors_a: Array, embeddings_b: Array, anchors_b: Array) -> xr.DataArray:
    """Similarity of two models' representations of the same samples, absolute and relative.

    ``embeddings_*`` are each model's embeddings of the same samples, ``anchors_*``
    its embeddings of the same anchor inputs. Returns dims ``(space, measure)``:
    ``space`` is ``absolute`` or ``relative``, ``measure`` a name in
    :data:`SIMILARITIES`. Row cosine of absolute embeddings needs equal widths; it
    is NaN otherwise.
    """
    spaces = {
        "absolute": (as_matrix(embeddings_a), as_matrix(embeddings_b)),
        "relative": (relative_representation(embeddings_a, anchors_a),
                     relative_representation(embeddings_b, anchors_b)),
    }
    values = [[_similarity(measure, x, y) for measure in SIMILARITIES] for x, y in spaces.values()]
    return xr.DataArray(np.array(values, dtype=np.float64), dims=("space", "measure"),
                        coords={"space": list(spaces), "measure": list(SIMILARITIES)}, name="similarity")


def _similarity(measure: str, x: np.ndarray, y: np.ndarray) -> float:
    if measure == "row_cosine" and x.shape != y.shape:
        return float("nan")
    return SIMILARITIES[measure](x, y)


def fit_ridge_head(features: Array, labels: Array, num_classes: int,
                   ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier by closed-form ridge regression onto one-hot targets.

    Minimises ``||X W + b - Y||^2 + ridge * ||W||^2`` (the bias unpenalised) and
    returns ``(W, b)`` with shapes ``(d, num_classes)`` and ``(num_classes,)``.
    Deterministic, and exact up to rounding.
    """
    x = as_matrix(features)
    y = np.eye(num_classes)[_labels(labels)]
    # Centring removes the bias from the problem; it is then fitted exactly.
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    weight = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


def ridge_accuracy(head: tuple[np.ndarray, np.ndarray], features: Array, labels: Array) -> float:
    """The accuracy on ``features`` of a head ``(W, b)`` of :func:`fit_ridge_head`."""
    weight, bias = head
    predictions = (as_matrix(features) @ weight + bias).argmax(axis=1)
    return float(np.mean(predictions == _labels(labels)))


def zero_shot_stitching(train_a: Array, y_train: Array, test_a: Array, test_b: Array, y_test: Array,
                        num_classes: int, ridge: float = 1e-3) -> xr.Dataset:
    """Classify model B's test representations with a head trained on model A's only.

    A ridge head (:func:`fit_ridge_head`) is fitted on ``train_a``, A's
    representations of the training data; B is never trained on. Returns scalar
    variables ``accuracy_a`` (A's head on A's test representations, for
    reference) and ``accuracy_stitched`` (A's head on B's). Give relative
    representations for the method; absolute ones give the baseline it beats.
    """
    head = fit_ridge_head(train_a, y_train, num_classes, ridge)
    return xr.Dataset(
        {"accuracy_a": ((), ridge_accuracy(head, test_a, y_test)),
         "accuracy_stitched": ((), ridge_accuracy(head, test_b, y_test))},
        attrs={"ridge": ridge},
    )


@torch.no_grad()
def head_inputs(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The inputs of ``model.head`` on ``x`` (the latent space the head decodes), as float64.

    Read by a forward pre-hook, so it works for any model with a ``head``,
    whatever comes before it (flattening, pooling). Eval mode, in batches;
    every module's mode is restored and the hook removed afterwards.
    """
    recorded: list[np.ndarray] = []

    def hook(module: nn.Module, inputs: tuple) -> None:
        recorded.append(inputs[0].detach().to("cpu", torch.float64).numpy())

    device = model_device(model)
    handle = model.head.register_forward_pre_hook(hook)
    try:
        with eval_mode(model):
            for xb in x.split(batch_size):
                model(xb.to(device))
    finally:
        handle.remove()
    return np.concatenate(recorded).reshape(len(x), -1)
