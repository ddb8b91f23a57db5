"""Linear centred kernel alignment (CKA; Kornblith et al. 2019), in float64.

Representations are ``(n, d)`` arrays (numpy or torch): ``n`` examples, in the same
order for both representations, and ``d`` units. All numerics are float64: with a
large offset, float32 centring visibly changes the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import xarray as xr

Array = np.ndarray | torch.Tensor


def _as_matrix(x: Array) -> np.ndarray:
    """``x`` as a float64 ``(n, -1)`` numpy matrix, converted before any arithmetic."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("CKA: a representation must have a sample dimension")
    if not np.all(np.isfinite(x)):
        raise ValueError("CKA: representation has non-finite values")
    return x.reshape(len(x), -1)


def _centre(x: np.ndarray) -> np.ndarray:
    """Column-centred ``x``, scaled to unit Frobenius norm.

    CKA is invariant to isotropic scaling, so the scaling changes nothing but keeps
    the fourth powers in the formula far from overflow and underflow.
    """
    centred = x - x.mean(axis=0)
    norm = np.linalg.norm(centred)
    # Centring a constant column leaves rounding noise of order n * eps * |x|,
    # which must not count as variation.
    if norm <= len(x) * np.finfo(np.float64).eps * np.linalg.norm(x):
        raise ValueError("CKA: representation is constant across samples (zero norm after centring)")
    return centred / norm


def _check_rows(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(f"CKA: representations have different numbers of samples ({len(x)} and {len(y)})")


def linear_cka(x: Array, y: Array) -> float:
    """Linear CKA, feature form: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``."""
    x, y = _as_matrix(x), _as_matrix(y)
    _check_rows(x, y)
    xc, yc = _centre(x), _centre(y)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def _hsic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC of two Gram matrices, ``trace(H K H L) / (n-1)^2`` with ``H = I - 11^T / n``."""
    # H K H subtracts the row and column means of K and adds back its grand mean;
    # written out to avoid two n^3 products with H.
    kc = k - k.mean(axis=0) - k.mean(axis=1, keepdims=True) + k.mean()
    return float(np.sum(kc * l)) / (len(k) - 1) ** 2


def linear_cka_gram(x: Array, y: Array) -> float:
    """Linear CKA, Gram form: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, ``K = X X^T``.

    Computed independently of :func:`linear_cka` (uncentred features, centred
    kernels), to check it.
    """
    x, y = _as_matrix(x), _as_matrix(y)
    _check_rows(x, y)
    for z in (x, y):
        _centre(z)  # only to reject constants as linear_cka does; the value is not used
    k, l = x @ x.T, y @ y.T
    return float(_hsic(k, l) / np.sqrt(_hsic(k, k) * _hsic(l, l)))


@dataclass(frozen=True)
class _Centred:
    """A centred representation ``Xc``, kept in whichever form makes products cheap.

    ``matrix`` is ``Xc`` itself (n, d) when d <= n, else its Gram matrix
    ``Xc Xc^T`` (n, n); ``norm`` is ``||Xc^T Xc||_F = ||Xc Xc^T||_F``.
    """

    matrix: np.ndarray
    is_gram: bool
    norm: float

    @classmethod
    def of(cls, x: Array) -> _Centred:
        xc = _centre(_as_matrix(x))
        n, d = xc.shape
        if d > n:
            gram = xc @ xc.T
            return cls(gram, True, float(np.linalg.norm(gram)))
        return cls(xc, False, float(np.linalg.norm(xc.T @ xc)))

    def cross(self, other: _Centred) -> float:
        """``||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>_F``, by the cheaper product."""
        _check_rows(self.matrix, other.matrix)
        if self.is_gram and other.is_gram:
            return float(np.vdot(self.matrix, other.matrix))
        if self.is_gram:
            return float(np.vdot(other.matrix, self.matrix @ other.matrix))
        if other.is_gram:
            return other.cross(self)
        return float(np.linalg.norm(other.matrix.T @ self.matrix) ** 2)


def cka_matrix(acts_a: Mapping[str, Array], acts_b: Mapping[str, Array]) -> xr.DataArray:
    """Linear CKA between every layer of ``acts_a`` and every layer of ``acts_b``.

    Arrays with more than two dims (conv maps) are flattened to ``(n, -1)``. Each
    layer is centred once; wide layers (d > n) go through their n x n Gram matrix.
    Returns a DataArray named ``cka`` with dims ``(layer_a, layer_b)``.
    """
    centred_a = {name: _Centred.of(x) for name, x in acts_a.items()}
    centred_b = centred_a if acts_b is acts_a else {name: _Centred.of(x) for name, x in acts_b.items()}
    values = np.array(
        [[a.cross(b) / (a.norm * b.norm) for b in centred_b.values()] for a in centred_a.values()],
        dtype=np.float64,
    ).reshape(len(centred_a), len(centred_b))
    return xr.DataArray(
        values,
        dims=("layer_a", "layer_b"),
        coords={"layer_a": list(acts_a), "layer_b": list(acts_b)},
        name="cka",
    )
