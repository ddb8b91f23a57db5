"""Lazy vs rich learning: how far the weights move from their initialisation, and the
effective rank of weights and representations.

A lazy network stays close to its initialisation and keeps its random, high-rank
weights; a rich one moves further and learns low-rank structure ("How connectivity
structure shapes rich and lazy learning"). Two definitions of effective rank:

* ``entropy`` (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum(s)`` the
  normalised singular values and ``H`` the Shannon entropy;
* ``participation_ratio``: ``(sum s_i^2)^2 / sum s_i^4``.

Both are ``k`` for ``k`` equal singular values and 1 for a rank-one matrix, and are
invariant to scaling the matrix. All numerics are float64.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import torch
import xarray as xr

from workflow.analysis.cka import Array, as_matrix

State = Mapping[str, torch.Tensor]


def _split(key: str) -> tuple[str, str]:
    """A state-dict key as (layer, entry): ``"conv1.0.weight"`` -> ``("conv1.0", "weight")``.

    A key without a module (a bare ``nn.Linear``'s ``"weight"``) is its own layer.
    """
    layer, _, entry = key.rpartition(".")
    return layer or key, entry


def _singular_values(matrix: Array) -> np.ndarray:
    s = np.linalg.svd(as_matrix(matrix), compute_uv=False)
    if not s.any():
        raise ValueError("effective rank: the matrix is zero")
    return s


def entropy_effective_rank(matrix: Array) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the normalised singular values."""
    p = _singular_values(matrix)
    p = p[p > 0] / p.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(matrix: Array) -> float:
    """``(sum s^2)^2 / sum s^4`` of the singular values ``s``."""
    s = _singular_values(matrix)
    s2 = (s / s.max()) ** 2  # scaled first: the fourth powers must not overflow
    return float(s2.sum() ** 2 / np.sum(s2**2))


EFFECTIVE_RANKS: dict[str, Callable[[Array], float]] = {
    "entropy": entropy_effective_rank,
    "participation_ratio": participation_ratio,
}
"""The definitions of effective rank, by the name used in results."""


def weight_matrix(weight: Array) -> np.ndarray:
    """A weight tensor as ``(out, in * kernel...)``: a conv kernel flattened per output."""
    return as_matrix(weight)  # (out, ...) -> (out, -1)


def _ranks_dataset(matrices: Mapping[str, np.ndarray], dim: str) -> xr.Dataset:
    """Every definition of effective rank, and the largest rank possible, along ``dim``."""
    data = {
        name: (dim, np.array([rank(m) for m in matrices.values()], dtype=np.float64))
        for name, rank in EFFECTIVE_RANKS.items()
    }
    data["max_rank"] = (dim, np.array([min(m.shape) for m in matrices.values()], dtype=np.int64))
    return xr.Dataset(data, coords={dim: list(matrices)})


def weight_ranks(state: State) -> xr.Dataset:
    """Effective ranks of every weight matrix (a tensor named ``*.weight`` with 2 or more dims),
    along ``param``: its state-dict key, as network pruning's densities name it."""
    matrices = {
        key: weight_matrix(value)
        for key, value in state.items()
        if _split(key)[1] == "weight" and value.dim() >= 2
    }
    return _ranks_dataset(matrices, "param")


def representation_ranks(acts: Mapping[str, Array]) -> xr.Dataset:
    """Effective ranks of representations ``(n, ...)`` (as from ``record_activations``).

    Each is flattened to ``(n, units)`` and centred over the samples first, so a
    common offset does not count as a direction.
    """
    centred = {}
    for layer, x in acts.items():
        m = as_matrix(x)
        centred[layer] = m - m.mean(axis=0)
    return _ranks_dataset(centred, "layer")


BATCHNORM_STATISTICS = ("running_mean", "running_var")
"""State-dict entries that are statistics of the data, not weights."""


def _weight_names(state: State) -> list[str]:
    return [
        k for k, v in state.items()
        if v.is_floating_point() and _split(k)[1] not in BATCHNORM_STATISTICS
    ]


def distance_from_init(state: State, init: State, names: Iterable[str] | None = None) -> xr.Dataset:
    """``||theta - theta_0||`` and ``||theta - theta_0|| / ||theta_0||``, per layer and overall.

    ``names`` are the state-dict entries that count as weights; by default every
    floating tensor but BatchNorm's running statistics (which follow the data, not
    the optimiser). A layer is a module: its entries (weight, bias, ...) are
    pooled. Returns ``distance``, ``init_norm`` and ``relative_distance`` along dim
    ``layer``, and the same overall as ``total_*`` scalars; the per-layer squared
    distances sum to the total squared distance.
    """
    names = _weight_names(state) if names is None else list(names)
    missing = [k for k in names if k not in init or k not in state]
    if missing:
        raise KeyError(f"distance_from_init: entries missing from a state dict: {missing}")
    squares: dict[str, np.ndarray] = {}
    for key in names:
        theta, theta_0 = (as_matrix(s[key].reshape(1, -1)) for s in (state, init))
        layer = _split(key)[0]
        squares[layer] = squares.get(layer, 0) + np.array([np.sum((theta - theta_0) ** 2), np.sum(theta_0**2)])
    per_layer = np.array(list(squares.values()), dtype=np.float64).reshape(-1, 2)
    return _distance_dataset(per_layer, list(squares))


def _distance_dataset(squares: np.ndarray, layers: list[str]) -> xr.Dataset:
    """Distances from the squared distance and squared initial norm of each layer."""
    distance, init_norm = np.sqrt(squares).T
    total_distance, total_init_norm = np.sqrt(squares.sum(axis=0))
    return xr.Dataset(
        {
            "distance": ("layer", distance),
            "init_norm": ("layer", init_norm),
            "relative_distance": ("layer", _ratio(distance, init_norm)),
            "total_distance": ((), total_distance),
            "total_init_norm": ((), total_init_norm),
            "total_relative_distance": ((), _ratio(total_distance, total_init_norm)),
        },
        coords={"layer": layers},
    )


def _ratio(distance: np.ndarray, init_norm: np.ndarray) -> np.ndarray:
    """``distance / init_norm``; NaN where the initial norm is 0 (zero-initialised biases)."""
    return np.where(init_norm > 0, distance / np.where(init_norm > 0, init_norm, 1), np.nan)
