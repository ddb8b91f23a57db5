"""The covariance measures, linear CKA, SVCCA, PWCCA and Procrustes, from the
column sums and cross-products of the layers accumulated over a :class:`Stream`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal

import numpy as np
import torch

from workflow.analysis.cka import is_constant
from workflow.analysis.layer_blocks import Layers, Stream

CcaDims = Literal["refuse"] | int
# Principal variances below this fraction of the largest are rounding noise (dead or
# duplicated units): whitening them would turn noise into perfect correlations.
_NULL_VARIANCE = 1e-10


@dataclass(frozen=True)
class Options:
    batch: int
    bandwidth: float
    variance: float
    cca_dims: CcaDims


class _LayerMoments:
    """Centred second moments ``Xc^T Xc`` of one layer and what the measures derive from them."""

    def __init__(self, name: str, cov: np.ndarray, n: int, raw_sq: float) -> None:
        self.name, self.cov, self.n = name, cov, n
        self.trace = float(np.trace(cov))
        if is_constant(self.trace, raw_sq, n):
            raise ValueError(f"similarity: layer {name!r} is constant across samples (zero norm after centring)")

    @property
    def width(self) -> int:
        return len(self.cov)

    @cached_property
    def frobenius(self) -> float:
        return float(np.linalg.norm(self.cov))

    @cached_property
    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """Principal variances, largest first, and their directions; null directions dropped."""
        values, vectors = np.linalg.eigh(self.cov)
        values, vectors = values[::-1], vectors[:, ::-1]
        keep = values > _NULL_VARIANCE * values[0]
        return values[keep], vectors[:, keep]

    def cca_directions(self, measure: str, variance: float, cca_dims: CcaDims) -> tuple[np.ndarray, np.ndarray]:
        """The principal variances and directions that enter CCA.

        Refuses layers with too few samples: centred activations of ``d >= n - 1``
        units span every direction the samples allow, and every canonical
        correlation with anything would be 1 by construction. ``cca_dims=k`` first
        reduces each layer to its top ``k`` principal directions instead.
        """
        dims = self.width if cca_dims == "refuse" else min(self.width, cca_dims)
        if dims >= self.n - 1:
            fix = "use more samples" + ("" if cca_dims != "refuse" else " or set cca_dims=k (k < n - 1)")
            raise ValueError(
                f"{measure}: layer {self.name!r} has d={dims} {'units' if cca_dims == 'refuse' else 'dims'} "
                f"but only n={self.n} samples; CCA needs n > d + 1, else every canonical correlation is 1. "
                f"To reduce each layer to its top k principal directions, {fix}."
            )
        values, vectors = self.spectrum
        kept = min(len(values), dims)
        if variance < 1:
            explained = np.cumsum(values[:kept]) / values[:kept].sum()
            kept = min(kept, int(np.searchsorted(explained, variance)) + 1)
        return values[:kept], vectors[:, :kept]


class Moments:
    """Streamed column sums and cross-products of all layers of two sources.

    Accumulates ``X_a^T X_b`` of the concatenated layers of both sources (one GEMM
    per block) and each layer's own ``X^T X``, in float64, on shifted data (see
    :class:`Stream`). Memory is ``8 (D_a D_b + sum d^2)`` bytes, independent of the
    number of samples; within one source, ``X^T X`` alone holds everything.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream, self.same = stream, stream.b is stream.a
        a, b = stream.a, stream.b
        self.n = 0
        self.sum_a, self.sum_b = np.zeros(a.width), np.zeros(b.width)
        self.cross = np.zeros((a.width, b.width))
        self.own_a = [] if self.same else [np.zeros((w, w)) for w in a.widths]
        self.own_b = [] if self.same else [np.zeros((w, w)) for w in b.widths]

    @staticmethod
    def nbytes(a: Layers, b: Layers) -> int:
        if b is a:
            return 8 * a.width**2
        return 8 * (a.width * b.width + sum(w * w for w in a.widths) + sum(w * w for w in b.widths))

    def add(self, xa: np.ndarray, xb: np.ndarray) -> None:
        # torch's BLAS, in place on the numpy accumulators: several times faster here than numpy's
        ta, tb = torch.from_numpy(xa), torch.from_numpy(xb)
        self.n += len(xa)
        self.sum_a += xa.sum(axis=0)
        torch.from_numpy(self.cross).addmm_(ta.T, tb)
        if self.same:
            return
        self.sum_b += xb.sum(axis=0)
        for own, x, layers in ((self.own_a, ta, self.stream.a), (self.own_b, tb, self.stream.b)):
            for acc, columns in zip(own, layers.slices):
                features = x[:, columns].contiguous()
                torch.from_numpy(acc).addmm_(features.T, features)

    def layers(self, side: Literal["a", "b"]) -> list[_LayerMoments]:
        """Every layer of one side, centred: ``Xc^T Xc = S - s s^T / n``."""
        layers, sums, shift = (
            (self.stream.a, self.sum_a, self.stream.shift_a) if side == "a" or self.same
            else (self.stream.b, self.sum_b, self.stream.shift_b)
        )
        layers.check_finite(sums)
        own = self.own_a if side == "a" else self.own_b
        result = []
        for i, (name, columns) in enumerate(zip(layers.names, layers.slices)):
            shifted = self.cross[columns, columns] if self.same else own[i]
            s, m = sums[columns], shift[columns]
            # raw sum of squares, to tell a constant layer from a small one
            raw_sq = float(np.trace(shifted) + 2 * m @ s + self.n * m @ m)
            result.append(_LayerMoments(name, shifted - np.outer(s, s) / self.n, self.n, raw_sq))
        return result

    def cross_covariance(self, i: int, j: int) -> np.ndarray:
        """``Xc^T Yc`` of layer ``i`` of source a and layer ``j`` of source b."""
        rows, columns = self.stream.a.slices[i], self.stream.b.slices[j]
        sum_b = self.sum_a if self.same else self.sum_b
        return self.cross[rows, columns] - np.outer(self.sum_a[rows], sum_b[columns]) / self.n


def _linear_cka_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: Options) -> float:
    return float(np.linalg.norm(cross) ** 2 / (a.frobenius * b.frobenius))


def _procrustes_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: Options) -> float:
    nuclear = np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt(a.trace * b.trace)
    # 2 - 2 ||.||_* is a squared distance: rounding must not make it negative
    return float(max(2.0 - 2.0 * nuclear, 0.0))


def _canonical(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
               cross: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlations and the singular vectors of the whitened cross-covariance.

    With principal variances ``l`` and directions ``V`` of each side, the whitened
    cross-covariance is ``(V_a / sqrt(l_a))^T Xc^T Yc (V_b / sqrt(l_b))``; its
    singular values are the canonical correlations.
    """
    (values_a, vectors_a), (values_b, vectors_b) = a, b
    whitened = (vectors_a / np.sqrt(values_a)).T @ cross @ (vectors_b / np.sqrt(values_b))
    u, rho, vt = np.linalg.svd(whitened, full_matrices=False)
    return np.minimum(rho, 1.0), u, vt.T


def _svcca_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: Options) -> float:
    rho, _, _ = _canonical(*(layer.cca_directions("svcca", options.variance, options.cca_dims) for layer in (a, b)),
                           cross)
    return float(rho.mean())


def _pwcca_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: Options) -> float:
    """PWCCA: ``sum_i alpha_i rho_i / sum_i alpha_i``, ``alpha_i = sum_j |<h_i, x_j>|``.

    ``h_i = Xc w_i`` is the i-th unit-norm canonical variate and ``x_j`` the j-th
    centred unit; ``Xc^T h_i = V sqrt(l) u_i``, so no pass over the data is needed.
    The weights come from the side with fewer CCA directions (as in Morcos et al.'s
    code), which has one variate per correlation.
    """
    dirs_a, dirs_b = (layer.cca_directions("pwcca", 1.0, options.cca_dims) for layer in (a, b))
    rho, u, v = _canonical(dirs_a, dirs_b, cross)
    (values, vectors), singular = (dirs_a, u) if len(dirs_a[0]) <= len(dirs_b[0]) else (dirs_b, v)
    weights = np.abs((vectors * np.sqrt(values)) @ singular).sum(axis=0)
    return float(weights @ rho / weights.sum())


FROM_COVARIANCES: dict[str, Callable[[_LayerMoments, _LayerMoments, np.ndarray, Options], float]] = {
    "linear_cka": _linear_cka_from,
    "svcca": _svcca_from,
    "pwcca": _pwcca_from,
    "procrustes": _procrustes_from,
}


def covariance_matrices(moments: Moments, measures: list[str], options: Options) -> dict[str, np.ndarray]:
    layers_a = moments.layers("a")
    layers_b = layers_a if moments.same else moments.layers("b")
    values = {measure: np.empty((len(layers_a), len(layers_b))) for measure in measures}
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            cross = moments.cross_covariance(i, j)
            for measure in measures:
                values[measure][i, j] = FROM_COVARIANCES[measure](a, b, cross, options)
    return values
