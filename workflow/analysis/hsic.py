"""Debiased CKA: Song et al.'s unbiased HSIC estimator, averaged over minibatches of
consecutive samples of a :class:`Stream` (Nguyen et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from workflow.analysis.layer_blocks import Layers, Stream, check_finite


@dataclass(frozen=True)
class _KernelTerms:
    """What Song et al.'s unbiased HSIC needs of each layer's linear Gram ``K = X X^T``
    in a stack of minibatches, besides ``<K, L>``: the diagonal ``K_ii`` (``(nb, m, L)``),
    the row sums of ``K~`` (``K`` with a zero diagonal; ``(nb, m, L)``) and its total
    (``(nb, L)``).
    """

    diagonal: torch.Tensor
    rows: torch.Tensor
    total: torch.Tensor

    @classmethod
    def of_features(cls, x: torch.Tensor, segments: torch.Tensor) -> _KernelTerms:
        """From the features ``(nb, m, D)``, in O(m D) per minibatch: ``K~ 1 = X (X^T 1) - diag K``."""
        nb, m, width = x.shape

        def per_layer(features: torch.Tensor) -> torch.Tensor:  # (nb, m, D) -> (nb, m, L), as one 2-D product
            return (features.reshape(nb * m, width) @ segments).view(nb, m, -1)

        diagonal = per_layer(x * x)
        sums = x.sum(dim=1, keepdim=True)
        rows = per_layer(x * sums) - diagonal
        return cls(diagonal, rows, rows.sum(dim=1))

    @classmethod
    def of_grams(cls, grams: torch.Tensor) -> _KernelTerms:
        """From the Grams ``(nb, L, m, m)``, in O(m^2) per layer and minibatch."""
        diagonal = torch.diagonal(grams, dim1=2, dim2=3)
        rows = grams.sum(dim=3) - diagonal
        return cls(diagonal.transpose(1, 2), rows.transpose(1, 2), rows.sum(dim=2))


def _unbiased_hsic(frobenius: torch.Tensor, a: _KernelTerms, b: _KernelTerms, m: int) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of every pair of layers, summed over the minibatches.

    ``(<K~, L~> + 1^T K~ 1 1^T L~ 1 / ((m-1)(m-2)) - 2 / (m-2) 1^T K~ L~ 1) / (m (m-3))``,
    with ``<K~, L~> = <K, L> - sum_i K_ii L_ii``; ``frobenius`` holds ``<K, L>``,
    ``(nb, L_a, L_b)``.
    """
    terms = frobenius - a.diagonal.transpose(1, 2) @ b.diagonal
    terms += a.total[:, :, None] * b.total[:, None, :] / ((m - 1) * (m - 2))
    terms -= (2 / (m - 2)) * (a.rows.transpose(1, 2) @ b.rows)
    return terms.sum(dim=0) / (m * (m - 3))


def _own_hsic(frobenius: torch.Tensor, a: _KernelTerms, m: int) -> torch.Tensor:
    """The unbiased HSIC of every layer with itself, summed over the minibatches (``frobenius``: ``(nb, L)``)."""
    terms = frobenius - (a.diagonal * a.diagonal).sum(dim=1)
    terms += a.total * a.total / ((m - 1) * (m - 2))
    terms -= (2 / (m - 2)) * (a.rows * a.rows).sum(dim=1)
    return terms.sum(dim=0) / (m * (m - 3))


def _segments(layers: Layers) -> torch.Tensor:
    """The ``(D, L)`` 0/1 matrix that sums a layer's columns: per-layer sums as one product."""
    segments = torch.zeros(layers.width, len(layers.names), dtype=torch.float64)
    for i, columns in enumerate(layers.slices):
        segments[columns, i] = 1.0
    return segments


# A Gram of a layer narrower than this costs about as much as one this wide: writing
# the m x m output, not the multiply-adds, bounds it. And the feature form's one large
# product does about this many times more multiply-adds per second than the Grams'
# many small ones. Both measured on 2 cores, layers of 16 to 2048 units.
_GRAM_MIN_WIDTH = 64
_FEATURE_SPEED = 1.5


def _prefers_features(a: Layers, b: Layers, batch: int) -> bool:
    """Whether ``<K, L>`` is cheaper from the features than from the Grams (see :class:`MinibatchHsic`).

    Per minibatch, the features cost ``m D_a D_b``; the Grams ``m^2`` per unit (at
    least :data:`_GRAM_MIN_WIDTH` per layer) of each source, plus ``m^2`` per pair.
    """
    grams = [a] if b is a else [a, b]
    gram_cost = sum(max(w, _GRAM_MIN_WIDTH) for layers in grams for w in layers.widths)
    return a.width * b.width <= _FEATURE_SPEED * batch * (gram_cost + len(a.names) * len(b.names))


class MinibatchHsic:
    """Sums over minibatches of the unbiased HSIC of every pair of layers.

    Each block of the stream is split into minibatches of ``batch`` consecutive
    samples (blocks are a multiple of ``batch`` long, so minibatches never straddle
    blocks). A final minibatch of fewer than 4 samples, where the estimator is
    undefined, is left out.

    ``<K, L>`` of two layers' Grams is computed in whichever form is cheaper for the
    layer widths: from the Grams (each layer's ``m x m`` Gram formed once per
    minibatch, all pairs from one product; O(m^2 (D_a + D_b + L_a L_b))) or from the
    features (``||X^T Y||_F^2``, all pairs from one ``X_a^T X_b`` per minibatch;
    O(m D_a D_b)); narrow layers favour the second. The rest of the estimator comes
    from the same Grams or features (:class:`_KernelTerms`), so no U-centred Gram is
    ever formed. Arithmetic is torch float64, on torch's threads.
    """

    # Largest products held at once, in float64 entries (64 MiB).
    _PRODUCT_ENTRIES = 2**23

    def __init__(self, stream: Stream, batch: int) -> None:
        self.stream, self.batch, self.same = stream, batch, stream.b is stream.a
        a, b = stream.a, stream.b
        self.segments_a = _segments(a)
        self.segments_b = self.segments_a if self.same else _segments(b)
        self.feature_form = _prefers_features(a, b, batch)
        self.cross = torch.zeros(len(a.names), len(b.names), dtype=torch.float64)
        self.own_a = torch.zeros(len(a.names), dtype=torch.float64)
        self.own_b = torch.zeros(len(b.names), dtype=torch.float64)

    def add(self, xa: np.ndarray, xb: np.ndarray) -> None:
        whole = len(xa) - len(xa) % self.batch
        for start, stop, m in ((0, whole, self.batch), (whole, len(xa), len(xa) - whole)):
            if m >= 4 and stop > start:
                # views of the stream's buffers: used before the next block overwrites them
                ya, yb = (torch.from_numpy(x[start:stop]).view(-1, m, x.shape[1]) for x in (xa, xb))
                for cross, own_a, own_b, terms_a, terms_b in self._groups(ya, yb):
                    self.cross += _unbiased_hsic(cross, terms_a, terms_b, m)
                    self.own_a += _own_hsic(own_a, terms_a, m)
                    self.own_b += _own_hsic(own_b, terms_b, m)

    def _groups(self, xa: torch.Tensor, xb: torch.Tensor) -> Iterator[tuple]:
        """Per group of minibatches ``(nb, m, D)`` of both sources: ``<K_i, L_j>`` of every
        pair, ``<K_i, K_i>`` and ``<L_j, L_j>`` of every layer, and the kernel terms of each side.

        Groups are as large as keeps the products under :attr:`_PRODUCT_ENTRIES` entries.
        """
        a, b = self.stream.a, self.stream.b
        m = xa.shape[1]
        per_minibatch = a.width * b.width if self.feature_form else m * m * (len(a.names) + len(b.names))
        step = max(1, self._PRODUCT_ENTRIES // per_minibatch)
        for k in range(0, len(xa), step):
            form = self._from_features if self.feature_form else self._from_grams
            yield form(xa[k : k + step], xb[k : k + step])

    def _from_features(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple:
        """``<K_i, L_j> = ||X_i^T Y_j||_F^2``: all pairs from one ``X^T Y`` per minibatch."""
        a, b = self.stream.a, self.stream.b
        cross = self.segments_a.T @ (xa.transpose(1, 2) @ xb).square_() @ self.segments_b
        terms_a = _KernelTerms.of_features(xa, self.segments_a)
        if self.same:
            own = torch.diagonal(cross, dim1=1, dim2=2)
            return cross, own, own, terms_a, terms_a
        return (cross, self._own_from_features(xa, a), self._own_from_features(xb, b), terms_a,
                _KernelTerms.of_features(xb, self.segments_b))

    @staticmethod
    def _own_from_features(x: torch.Tensor, layers: Layers) -> torch.Tensor:
        return torch.stack([
            (x[:, :, columns].transpose(1, 2) @ x[:, :, columns]).square_().sum(dim=(1, 2))
            for columns in layers.slices
        ], dim=1)

    def _from_grams(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple:
        """``<K_i, L_j>`` from each layer's ``m x m`` Gram, all pairs from one product per minibatch."""
        grams_a = self._grams(xa, self.stream.a)
        grams_b = grams_a if self.same else self._grams(xb, self.stream.b)
        flat_a, flat_b = (grams.flatten(start_dim=2) for grams in (grams_a, grams_b))
        return (flat_a @ flat_b.transpose(1, 2), flat_a.square().sum(dim=2), flat_b.square().sum(dim=2),
                _KernelTerms.of_grams(grams_a), _KernelTerms.of_grams(grams_b))

    @staticmethod
    def _grams(x: torch.Tensor, layers: Layers) -> torch.Tensor:
        """Each layer's Gram in each minibatch: ``(nb, L, m, m)``."""
        nb, m, _ = x.shape
        grams = torch.empty(nb, len(layers.names), m, m, dtype=torch.float64)
        for i, columns in enumerate(layers.slices):
            features = x[:, :, columns].contiguous()  # a strided slice would slow the product down
            torch.bmm(features, features.transpose(1, 2), out=grams[:, i])
        return grams

    def cka(self) -> np.ndarray:
        own_a, own_b, cross = (t.numpy() for t in (self.own_a, self.own_b, self.cross))
        for own, layers in ((own_a, self.stream.a), (own_b, self.stream.b)):
            check_finite(np.isfinite(own), layers.names)
            if np.any(own <= 0):
                bad = [name for name, h in zip(layers.names, own) if h <= 0]
                raise ValueError(
                    f"debiased_cka: the unbiased HSIC of layers {bad} with themselves is not positive "
                    "(constant layers, or minibatches too small)"
                )
        return cross / np.sqrt(np.outer(own_a, own_b))
