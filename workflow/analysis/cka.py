"""Linear CKA of in-memory representations, in float64: the feature form, the Gram
form for layers wider than the probe set, and every pair of layers of two mappings
(:func:`cka_matrix`). Also the small helpers the streamed measures share with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import xarray as xr

Array = np.ndarray | torch.Tensor
_EPS = np.finfo(np.float64).eps


def as_matrix(x: Array) -> np.ndarray:
    """``x`` as a float64 ``(n, -1)`` numpy matrix, converted before any arithmetic."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("a representation must have a sample dimension")
    if not np.all(np.isfinite(x)):
        raise ValueError("representation has non-finite values")
    return x.reshape(len(x), -1)


def is_constant(centred_sq: float, raw_sq: float, n: int) -> bool:
    """Whether a squared norm after centring is rounding noise of the raw squared norm.

    Centring a constant column leaves noise of order n * eps * |x|, which must not
    count as variation.
    """
    return centred_sq <= (n * _EPS) ** 2 * raw_sq


def _centre(x: np.ndarray) -> np.ndarray:
    """Column-centred ``x``, scaled to unit Frobenius norm.

    CKA is invariant to isotropic scaling, so the scaling changes nothing but keeps
    the fourth powers in the formula far from overflow and underflow.
    """
    centred = x - x.mean(axis=0)
    norm = np.linalg.norm(centred)
    if is_constant(norm**2, np.linalg.norm(x) ** 2, len(x)):
        raise ValueError("CKA: representation is constant across samples (zero norm after centring)")
    return centred / norm


def _check_rows(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(f"CKA: representations have different numbers of samples ({len(x)} and {len(y)})")


def linear_cka(x: Array, y: Array) -> float:
    """Linear CKA, feature form: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``."""
    x, y = as_matrix(x), as_matrix(y)
    _check_rows(x, y)
    xc, yc = _centre(x), _centre(y)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def unit_centred_gram(k: np.ndarray) -> np.ndarray:
    """``H K H`` (``H = I - 11^T / n``), scaled to unit Frobenius norm.

    The biased HSIC of two kernels is ``<HKH, HLH> / (n-1)^2``, so CKA is the inner
    product of the unit-norm centred Grams. ``HKH`` subtracts the row and column
    means and adds back the grand mean; written out to avoid two n^3 products.
    """
    kc = k - k.mean(axis=0) - k.mean(axis=1, keepdims=True) + k.mean()
    norm = np.linalg.norm(kc)
    if norm == 0:
        raise ValueError("CKA: kernel is constant across samples (zero norm after centring)")
    return kc / norm


def linear_cka_gram(x: Array, y: Array) -> float:
    """Linear CKA, Gram form: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, ``K = X X^T``.

    Computed independently of :func:`linear_cka` (uncentred features, centred
    kernels), to check it.
    """
    x, y = as_matrix(x), as_matrix(y)
    _check_rows(x, y)
    for z in (x, y):
        _centre(z)  # only to reject constants as linear_cka does; the value is not used
    return float(np.vdot(unit_centred_gram(x @ x.T), unit_centred_gram(y @ y.T)))


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
        xc = _centre(as_matrix(x))
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
    """Linear CKA between every layer of ``acts_a`` and every layer of ``acts_b``, in memory.

    Arrays with more than two dims (conv maps) are flattened to ``(n, -1)``. Each
    layer is centred once; wide layers (d > n) go through their n x n Gram matrix,
    so this suits wide conv layers on small probe sets, where the streamed
    :func:`similarity_matrices` would need d x d accumulators. Returns a DataArray
    named ``cka`` with dims ``(layer_a, layer_b)``.
    """
    centred_a = {name: _Centred.of(x) for name, x in acts_a.items()}
    centred_b = centred_a if acts_b is acts_a else {name: _Centred.of(x) for name, x in acts_b.items()}
    values = np.array(
        [[a.cross(b) / (a.norm * b.norm) for b in centred_b.values()] for a in centred_a.values()],
        dtype=np.float64,
    ).reshape(len(centred_a), len(centred_b))
    return layer_matrix(values, list(acts_a), list(acts_b), "cka")


def layer_matrix(values: np.ndarray, layers_a: list[str], layers_b: list[str], name: str) -> xr.DataArray:
    return xr.DataArray(
        values, dims=("layer_a", "layer_b"), coords={"layer_a": layers_a, "layer_b": layers_b}, name=name
    )
