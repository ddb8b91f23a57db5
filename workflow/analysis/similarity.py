"""Representational similarity between layers, in float64.

Measures (``MEASURES``):

* ``linear_cka``: linear centred kernel alignment (Kornblith et al. 2019);
* ``rbf_cka``: CKA with Gaussian kernels of bandwidth ``bandwidth`` x the median
  pairwise distance (Kornblith et al.'s ``gram_rbf`` convention);
* ``debiased_cka``: CKA from the unbiased HSIC estimator (Song et al. 2012) averaged
  over minibatches of ``batch`` consecutive samples (Nguyen et al. 2021);
* ``svcca``: mean canonical correlation after keeping each layer's principal
  directions that hold ``variance`` of its variance (Raghu et al. 2017);
* ``pwcca``: canonical correlations weighted by how much of the layer's units each
  canonical variate accounts for (Morcos et al. 2018);
* ``procrustes``: squared orthogonal Procrustes distance of the centred,
  Frobenius-normalised representations, ``2 - 2 ||Xn^T Yn||_*`` (Ding et al. 2021).

Two ways in: functions of two in-memory ``(n, ...)`` arrays (numpy or torch; extra
dims are flattened) such as :func:`linear_cka`, and :func:`similarity_matrices`, every
layer of one activation store against every layer of another, streamed from Zarr in
blocks of samples. This module is the front door; the parts live beside it:
:mod:`~workflow.analysis.cka` (in-memory linear CKA), :mod:`~workflow.analysis.layer_blocks`
(reading layers in blocks), :mod:`~workflow.analysis.covariance` (the measures from
second moments) and :mod:`~workflow.analysis.hsic` (debiased CKA). Inputs are converted to float64 before any arithmetic: with a
large offset, float32 centring visibly changes the value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from workflow.analysis.cka import (
    Array,
    as_matrix,
    cka_matrix,
    layer_matrix,
    linear_cka,
    linear_cka_gram,
    unit_centred_gram,
)
from workflow.analysis.covariance import (
    FROM_COVARIANCES,
    CcaDims,
    Moments,
    Options,
    covariance_matrices,
)
from workflow.analysis.hsic import MinibatchHsic
from workflow.analysis.layer_blocks import Layers, Source, Stream, check_same_samples

# The in-memory linear CKA is part of this module's interface.
__all__ = [
    "MEASURES", "Array", "CcaDims", "Source", "as_matrix", "cka_matrix", "debiased_cka", "linear_cka",
    "linear_cka_gram", "procrustes_distance", "pwcca", "rbf_cka", "similarity_matrices", "svcca",
]

MEASURES = ("linear_cka", "rbf_cka", "debiased_cka", "svcca", "pwcca", "procrustes")


# --- RBF CKA: n x n kernels ------------------------------------------------------------------------


def _rbf_gram(x: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel ``exp(-|x_i - x_j|^2 / (2 sigma^2))``, ``sigma = bandwidth x median distance``.

    The median is over all n^2 squared distances, zeros on the diagonal included, as
    in Kornblith et al.'s ``gram_rbf``. Features are centred first: distances do not
    change, and the dot-product form of the distances loses no digits to an offset.
    """
    x = x - x.mean(axis=0)
    dots = x @ x.T
    norms = np.diag(dots)
    sq_distances = np.maximum(norms[:, None] + norms[None, :] - 2 * dots, 0.0)
    np.fill_diagonal(sq_distances, 0.0)
    median = np.median(sq_distances)
    if median == 0:
        raise ValueError("rbf_cka: the median pairwise distance is 0 (most samples coincide)")
    return np.exp(-sq_distances / (2 * bandwidth**2 * median))


def _rbf_matrix(a: Layers, b: Layers, bandwidth: float) -> np.ndarray:
    """RBF CKA of every pair: inner products of unit-norm centred kernels.

    Holds one n x n float64 kernel per layer of both sources at once (and one layer's
    activations at a time): memory grows as n^2, so keep the probe set to a few
    thousand samples for this measure.
    """

    def kernels(layers: Layers) -> np.ndarray:
        return np.stack([unit_centred_gram(_rbf_gram(layers.layer(i), bandwidth)).ravel()
                         for i in range(len(layers.names))])

    grams_a = kernels(a)
    return grams_a @ (grams_a if b is a else kernels(b)).T


# --- all pairs of layers of two sources ----------------------------------------------------------------


def similarity_matrices(
    store_a: Source,
    store_b: Source | None = None,
    *,
    measures: Sequence[str] = ("linear_cka", "debiased_cka"),
    chunk: int = 1024,
    batch: int = 256,
    bandwidth: float = 1.0,
    variance: float = 0.99,
    cca_dims: CcaDims = "refuse",
    max_bytes: int = 4 * 2**30,
) -> xr.Dataset:
    """Every measure between every layer of ``store_a`` and every layer of ``store_b``.

    A source is a Zarr store written from :func:`~workflow.analysis.activations.activations_dataset`
    (path or lazily opened dataset) or a mapping layer -> ``(n, ...)`` array; without
    ``store_b``, the layers of ``store_a`` against each other. Returns one float64
    variable per measure with dims ``(layer_a, layer_b)``.

    All measures but ``rbf_cka`` come from ONE streamed pass over blocks of ``chunk``
    samples of both sources (rounded down to a multiple of ``batch`` when
    ``debiased_cka`` is asked for). The covariance measures (linear CKA, SVCCA,
    PWCCA, Procrustes) accumulate cross-products whose memory grows with the layer
    widths, ``8 (D_a D_b + sum d^2)`` bytes, not with the samples; beyond
    ``max_bytes`` they are refused (use ``debiased_cka``, whose memory is
    ``8 batch^2`` per layer, or :func:`cka_matrix` for wide layers on small probe
    sets). ``debiased_cka`` averages over minibatches of ``batch`` consecutive
    samples, as an unshuffled DataLoader gives them (a last minibatch of fewer than 4
    samples is left out). ``rbf_cka`` holds an n x n kernel per layer (see
    :func:`_rbf_matrix`). SVCCA and PWCCA refuse layers with ``d >= n - 1`` unless
    ``cca_dims`` is an int (each layer then reduced to its top ``cca_dims``
    principal directions); when ``d_a + d_b > n - 1``, ``d_a + d_b - (n - 1)``
    canonical correlations are still 1 by construction, so keep ``n`` well above
    ``d_a + d_b``.
    """
    options = _check_options(measures, chunk, batch, bandwidth, variance, cca_dims)
    a = Layers.of(store_a)
    b = a if store_b is None or store_b is store_a else Layers.of(store_b)
    check_same_samples(a, b)
    values = _streamed_matrices(a, b, measures, chunk, options, max_bytes)
    if "rbf_cka" in measures:
        values["rbf_cka"] = _rbf_matrix(a, b, bandwidth)
    attrs = {
        "debiased_cka": {"batch": batch},
        "rbf_cka": {"bandwidth": bandwidth},
        "svcca": {"variance": variance, "cca_dims": cca_dims},
        "pwcca": {"cca_dims": cca_dims},
    }
    arrays = {}
    for measure in measures:
        arrays[measure] = layer_matrix(values[measure], a.names, b.names, measure)
        arrays[measure].attrs.update(attrs.get(measure, {}))
    return xr.Dataset(arrays, attrs={"samples": a.n})


def _check_options(measures: Sequence[str], chunk: int, batch: int, bandwidth: float, variance: float,
                   cca_dims: CcaDims) -> Options:
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown or not measures:
        raise ValueError(f"similarity: unknown measures {unknown}; choose from {MEASURES}")
    if chunk < 1 or batch < 4:
        raise ValueError(f"similarity: need chunk >= 1 and batch >= 4 (got chunk={chunk}, batch={batch})")
    if not (bandwidth > 0 and 0 < variance <= 1):
        raise ValueError(f"similarity: need bandwidth > 0 and 0 < variance <= 1 (got {bandwidth}, {variance})")
    if cca_dims != "refuse" and (isinstance(cca_dims, bool) or not isinstance(cca_dims, int) or cca_dims < 1):
        raise ValueError(f"similarity: cca_dims must be 'refuse' or a positive int (got {cca_dims!r})")
    return Options(batch, bandwidth, variance, cca_dims)


def _streamed_matrices(a: Layers, b: Layers, measures: Sequence[str], chunk: int, options: Options,
                       max_bytes: int) -> dict[str, np.ndarray]:
    """The streamed measures, from one pass over the samples of both sources."""
    covariance = [measure for measure in measures if measure in FROM_COVARIANCES]
    debiased = "debiased_cka" in measures
    if not covariance and not debiased:
        return {}
    if covariance and Moments.nbytes(a, b) > max_bytes:
        raise ValueError(
            f"similarity: {covariance} would accumulate {Moments.nbytes(a, b) / 2**30:.1f} GiB of cross-products "
            f"for layers of {a.widths} and {b.widths} units (max_bytes={max_bytes}); use debiased_cka, "
            "cka_matrix on in-memory activations, or a larger max_bytes"
        )
    if debiased:
        chunk = max(options.batch, chunk - chunk % options.batch)
    stream = Stream(a, b, chunk)
    moments = Moments(stream) if covariance else None
    hsic = MinibatchHsic(stream, options.batch) if debiased else None
    accumulators = [accumulator for accumulator in (moments, hsic) if accumulator is not None]
    # Non-finite inputs are refused from the accumulated sums at the end (no extra pass
    # over every block); the inf - inf on the way there is not worth a warning.
    with np.errstate(invalid="ignore"):
        for xa, xb in stream:
            for accumulator in accumulators:
                accumulator.add(xa, xb)
    values = covariance_matrices(moments, covariance, options) if moments else {}
    if hsic:
        values["debiased_cka"] = hsic.cka()
    return values


# --- the measures of two in-memory representations ------------------------------------------------------


def _pairwise(measure: str, x: Array, y: Array, **options) -> float:
    """One measure between two representations, through :func:`similarity_matrices` in one block."""
    result = similarity_matrices({"x": x}, {"y": y}, measures=(measure,), chunk=max(len(x), 1), **options)
    return float(result[measure].item())


def rbf_cka(x: Array, y: Array, bandwidth: float = 1.0) -> float:
    """CKA with Gaussian kernels of width ``bandwidth`` x the median distance; O(n^2) memory."""
    return _pairwise("rbf_cka", x, y, bandwidth=bandwidth)


def debiased_cka(x: Array, y: Array, batch: int | None = None) -> float:
    """CKA from the unbiased HSIC, averaged over minibatches of ``batch`` consecutive samples.

    ``batch=None``: one batch of all samples, i.e. Kornblith et al.'s debiased CKA.
    """
    return _pairwise("debiased_cka", x, y, batch=batch or len(x))


def svcca(x: Array, y: Array, variance: float = 0.99, cca_dims: CcaDims = "refuse") -> float:
    """Mean canonical correlation of the principal directions that hold ``variance`` of each side."""
    return _pairwise("svcca", x, y, variance=variance, cca_dims=cca_dims)


def pwcca(x: Array, y: Array, cca_dims: CcaDims = "refuse") -> float:
    """Projection-weighted mean canonical correlation (Morcos et al. 2018)."""
    return _pairwise("pwcca", x, y, cca_dims=cca_dims)


def procrustes_distance(x: Array, y: Array) -> float:
    """Squared orthogonal Procrustes distance of centred, unit-norm ``x`` and ``y``: 0 to 2."""
    return _pairwise("procrustes", x, y)
