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
blocks of samples. Inputs are converted to float64 before any arithmetic: with a
large offset, float32 centring visibly changes the value.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from workflow import storage

Array = np.ndarray | torch.Tensor
Source = str | os.PathLike | xr.Dataset | Mapping[str, Array]
CcaDims = Literal["refuse"] | int

MEASURES = ("linear_cka", "rbf_cka", "debiased_cka", "svcca", "pwcca", "procrustes")
_EPS = np.finfo(np.float64).eps
# Principal variances below this fraction of the largest are rounding noise (dead or
# duplicated units): whitening them would turn noise into perfect correlations.
_NULL_VARIANCE = 1e-10
_READERS = min(8, os.cpu_count() or 1)


# --- in-memory linear CKA (feature form, and Gram form for wide layers) --------------------------


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


def _is_constant(centred_sq: float, raw_sq: float, n: int) -> bool:
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
    if _is_constant(norm**2, np.linalg.norm(x) ** 2, len(x)):
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


def _unit_centred_gram(k: np.ndarray) -> np.ndarray:
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
    return float(np.vdot(_unit_centred_gram(x @ x.T), _unit_centred_gram(y @ y.T)))


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
    return _matrix(values, list(acts_a), list(acts_b), "cka")


def _matrix(values: np.ndarray, layers_a: list[str], layers_b: list[str], name: str) -> xr.DataArray:
    return xr.DataArray(
        values, dims=("layer_a", "layer_b"), coords={"layer_a": layers_a, "layer_b": layers_b}, name=name
    )


# --- sources: the layers of a store or of a mapping, read in blocks of samples -------------------


class _Layers:
    """The layers of one source, each a ``(sample, unit)`` matrix read in row blocks.

    A store is opened lazily, so a block reads only the Zarr chunks it covers.
    """

    def __init__(self, names: list[str], widths: list[int], n: int,
                 fetch: Callable[[str, int, int], np.ndarray], samples: np.ndarray | None = None) -> None:
        if not names:
            raise ValueError("similarity: a source has no layers")
        self.names, self.widths, self.n, self.samples = names, widths, n, samples
        self._fetch = fetch
        ends = np.cumsum(widths)
        self.slices = [slice(int(end - width), int(end)) for end, width in zip(ends, widths)]
        self.width = int(ends[-1])

    @classmethod
    def of(cls, source: Source) -> _Layers:
        if isinstance(source, (str, os.PathLike)):
            source = storage.open_dataset(source, load=False)
        if isinstance(source, xr.Dataset):
            return cls._of_dataset(source)
        return cls._of_mapping(source)

    @classmethod
    def _of_dataset(cls, ds: xr.Dataset) -> _Layers:
        names = list(ds.attrs.get("layers", [name for name, var in ds.data_vars.items() if "sample" in var.dims]))
        arrays = {}
        for name in names:
            if ds[name].ndim != 2 or "sample" not in ds[name].dims:
                raise ValueError(f"similarity: layer {name!r} has dims {ds[name].dims}; expected (sample, unit)")
            arrays[name] = ds[name].transpose("sample", ...)
        samples = ds["sample"].values if "sample" in ds.coords else None
        readers = {name: _ChunkReader(arrays[name], ds[name].encoding.get("preferred_chunks", {}).get("sample"))
                   for name in names}
        return cls(names, [arrays[name].shape[1] for name in names], ds.sizes["sample"],
                   lambda name, start, stop: readers[name](start, stop), samples)

    @classmethod
    def _of_mapping(cls, acts: Mapping[str, Array]) -> _Layers:
        matrices = {}
        for name, x in acts.items():
            x = x.detach().cpu().to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if x.ndim == 0:
                raise ValueError(f"similarity: layer {name!r} must have a sample dimension")
            matrices[name] = x.reshape(len(x), -1)
        lengths = {len(x) for x in matrices.values()}
        if len(lengths) > 1:
            raise ValueError(f"similarity: layers have different numbers of samples ({sorted(lengths)})")
        names = list(matrices)
        n = lengths.pop() if lengths else 0
        return cls(names, [matrices[name].shape[1] for name in names], n,
                   lambda name, start, stop: matrices[name][start:stop])

    def read(self, index: int, start: int, stop: int, out: np.ndarray, shift: np.ndarray) -> None:
        """Samples ``start:stop`` of layer ``index`` minus ``shift``, into its columns of ``out``.

        Converts to float64 and subtracts in one pass over the block.
        """
        columns = self.slices[index]
        np.subtract(self._fetch(self.names[index], start, stop), shift[columns], out=out[:, columns])

    def layer(self, index: int) -> np.ndarray:
        """One whole layer as a float64 ``(n, d)`` matrix."""
        x = np.asarray(self._fetch(self.names[index], 0, self.n), dtype=np.float64)
        _check_finite([np.isfinite(x).all()], [self.names[index]])
        return x

    def check_finite(self, sums: np.ndarray) -> None:
        """Refuse layers with non-finite values, told by their (then non-finite) column sums."""
        _check_finite([np.isfinite(sums[columns]).all() for columns in self.slices], self.names)


class _ChunkReader:
    """Rows of one lazily opened ``(sample, unit)`` array, read in whole storage chunks.

    The stream asks for consecutive blocks of samples that need not line up with
    the store's chunks (narrow layers are stored in long chunks); keeping the last
    span read means a chunk is decoded once, not once per block that touches it.
    Memory: one span, at most a block plus a chunk.
    """

    def __init__(self, array: xr.DataArray, rows: int | None) -> None:
        self.array, self.rows = array, rows or len(array)
        self.start, self.values = 0, array[:0].values

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if start == 0 and stop >= len(self.array):  # a whole layer (RBF kernels): nothing to keep
            return self.array.values
        if not (self.start <= start and stop <= self.start + len(self.values)):
            self.start = start - start % self.rows
            self.values = self.array[self.start : -(-stop // self.rows) * self.rows].values
        return self.values[start - self.start : stop - self.start]


def _check_finite(finite: Sequence[bool] | np.ndarray, names: Sequence[str]) -> None:
    bad = [name for name, ok in zip(names, np.atleast_1d(finite)) if not np.all(ok)]
    if bad:
        raise ValueError(f"similarity: layers {bad} have non-finite values")


def _check_same_samples(a: _Layers, b: _Layers) -> None:
    if a.n != b.n:
        raise ValueError(f"similarity: sources have different numbers of samples ({a.n} and {b.n})")
    if a.n < 2:
        raise ValueError(f"similarity: need at least 2 samples (got {a.n})")
    if a.samples is not None and b.samples is not None and not np.array_equal(a.samples, b.samples):
        raise ValueError("similarity: sources were recorded on different probe sets (their samples differ)")


class _Stream:
    """Consecutive blocks of ``chunk`` samples of all layers of both sources, in float64.

    Every block is shifted by the column means of the first block: the measures are
    invariant to offsets, and accumulating shifted data keeps the algebraic centring
    at the end (``S - s s^T / n``) from subtracting numbers of the size of the
    offset. ``shift_a`` and ``shift_b`` are set once the first block is read.

    Reading dominates the time of the cheaper measures, so layers are read in
    parallel threads (Zarr decompression and numpy conversion release the GIL), one
    block ahead of the consumers, into the other of two buffers. Consumers must not
    keep a block past their turn: its buffer is reused.
    """

    def __init__(self, a: _Layers, b: _Layers, chunk: int) -> None:
        self.a, self.b, self.chunk = a, b, chunk
        self.sources = (a,) if b is a else (a, b)
        self.shifts = [np.zeros(source.width) for source in self.sources]

    @property
    def shift_a(self) -> np.ndarray:
        return self.shifts[0]

    @property
    def shift_b(self) -> np.ndarray:
        return self.shifts[-1]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = self.a.n
        size = min(self.chunk, n)
        buffers = [[np.empty((size, source.width)) for source in self.sources] for _ in range(2)]
        starts = list(range(0, n, self.chunk))
        with ThreadPoolExecutor(_READERS) as pool:
            pending = self._submit(pool, 0, buffers[0])
            for k, start in enumerate(starts):
                for future in pending:
                    future.result()
                blocks = [buffer[: min(start + self.chunk, n) - start] for buffer in buffers[k % 2]]
                if k == 0:
                    # the shift is the first block's own mean, so it is removed after reading
                    self.shifts = [block.mean(axis=0) for block in blocks]
                    for block, shift in zip(blocks, self.shifts):
                        block -= shift
                if k + 1 < len(starts):
                    pending = self._submit(pool, starts[k + 1], buffers[(k + 1) % 2])
                yield blocks[0], blocks[-1]

    def _submit(self, pool: ThreadPoolExecutor, start: int, buffers: list[np.ndarray]) -> list[Future]:
        stop = min(start + self.chunk, self.a.n)
        return [
            pool.submit(source.read, index, start, stop, buffer[: stop - start], shift)
            for source, buffer, shift in zip(self.sources, buffers, self.shifts)
            for index in range(len(source.names))
        ]


# --- covariance measures: linear CKA, SVCCA, PWCCA, Procrustes ------------------------------------


@dataclass(frozen=True)
class _Options:
    batch: int
    bandwidth: float
    variance: float
    cca_dims: CcaDims


class _LayerMoments:
    """Centred second moments ``Xc^T Xc`` of one layer and what the measures derive from them."""

    def __init__(self, name: str, cov: np.ndarray, n: int, raw_sq: float) -> None:
        self.name, self.cov, self.n = name, cov, n
        self.trace = float(np.trace(cov))
        if _is_constant(self.trace, raw_sq, n):
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


class _Moments:
    """Streamed column sums and cross-products of all layers of two sources.

    Accumulates ``X_a^T X_b`` of the concatenated layers of both sources (one GEMM
    per block) and each layer's own ``X^T X``, in float64, on shifted data (see
    :class:`_Stream`). Memory is ``8 (D_a D_b + sum d^2)`` bytes, independent of the
    number of samples; within one source, ``X^T X`` alone holds everything.
    """

    def __init__(self, stream: _Stream) -> None:
        self.stream, self.same = stream, stream.b is stream.a
        a, b = stream.a, stream.b
        self.n = 0
        self.sum_a, self.sum_b = np.zeros(a.width), np.zeros(b.width)
        self.cross = np.zeros((a.width, b.width))
        self.own_a = [] if self.same else [np.zeros((w, w)) for w in a.widths]
        self.own_b = [] if self.same else [np.zeros((w, w)) for w in b.widths]

    @staticmethod
    def nbytes(a: _Layers, b: _Layers) -> int:
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


def _linear_cka_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: _Options) -> float:
    return float(np.linalg.norm(cross) ** 2 / (a.frobenius * b.frobenius))


def _procrustes_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: _Options) -> float:
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


def _svcca_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: _Options) -> float:
    rho, _, _ = _canonical(*(layer.cca_directions("svcca", options.variance, options.cca_dims) for layer in (a, b)),
                           cross)
    return float(rho.mean())


def _pwcca_from(a: _LayerMoments, b: _LayerMoments, cross: np.ndarray, options: _Options) -> float:
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


_FROM_COVARIANCES: dict[str, Callable[[_LayerMoments, _LayerMoments, np.ndarray, _Options], float]] = {
    "linear_cka": _linear_cka_from,
    "svcca": _svcca_from,
    "pwcca": _pwcca_from,
    "procrustes": _procrustes_from,
}


def _covariance_matrices(moments: _Moments, measures: list[str], options: _Options) -> dict[str, np.ndarray]:
    layers_a = moments.layers("a")
    layers_b = layers_a if moments.same else moments.layers("b")
    values = {measure: np.empty((len(layers_a), len(layers_b))) for measure in measures}
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            cross = moments.cross_covariance(i, j)
            for measure in measures:
                values[measure][i, j] = _FROM_COVARIANCES[measure](a, b, cross, options)
    return values


# --- debiased CKA: unbiased HSIC averaged over minibatches -------------------------------------------


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


def _segments(layers: _Layers) -> torch.Tensor:
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


def _prefers_features(a: _Layers, b: _Layers, batch: int) -> bool:
    """Whether ``<K, L>`` is cheaper from the features than from the Grams (see :class:`_MinibatchHsic`).

    Per minibatch, the features cost ``m D_a D_b``; the Grams ``m^2`` per unit (at
    least :data:`_GRAM_MIN_WIDTH` per layer) of each source, plus ``m^2`` per pair.
    """
    grams = [a] if b is a else [a, b]
    gram_cost = sum(max(w, _GRAM_MIN_WIDTH) for layers in grams for w in layers.widths)
    return a.width * b.width <= _FEATURE_SPEED * batch * (gram_cost + len(a.names) * len(b.names))


class _MinibatchHsic:
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

    def __init__(self, stream: _Stream, batch: int) -> None:
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
    def _own_from_features(x: torch.Tensor, layers: _Layers) -> torch.Tensor:
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
    def _grams(x: torch.Tensor, layers: _Layers) -> torch.Tensor:
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
            _check_finite(np.isfinite(own), layers.names)
            if np.any(own <= 0):
                bad = [name for name, h in zip(layers.names, own) if h <= 0]
                raise ValueError(
                    f"debiased_cka: the unbiased HSIC of layers {bad} with themselves is not positive "
                    "(constant layers, or minibatches too small)"
                )
        return cross / np.sqrt(np.outer(own_a, own_b))


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


def _rbf_matrix(a: _Layers, b: _Layers, bandwidth: float) -> np.ndarray:
    """RBF CKA of every pair: inner products of unit-norm centred kernels.

    Holds one n x n float64 kernel per layer of both sources at once (and one layer's
    activations at a time): memory grows as n^2, so keep the probe set to a few
    thousand samples for this measure.
    """

    def kernels(layers: _Layers) -> np.ndarray:
        return np.stack([_unit_centred_gram(_rbf_gram(layers.layer(i), bandwidth)).ravel()
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
    a = _Layers.of(store_a)
    b = a if store_b is None or store_b is store_a else _Layers.of(store_b)
    _check_same_samples(a, b)
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
        arrays[measure] = _matrix(values[measure], a.names, b.names, measure)
        arrays[measure].attrs.update(attrs.get(measure, {}))
    return xr.Dataset(arrays, attrs={"samples": a.n})


def _check_options(measures: Sequence[str], chunk: int, batch: int, bandwidth: float, variance: float,
                   cca_dims: CcaDims) -> _Options:
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown or not measures:
        raise ValueError(f"similarity: unknown measures {unknown}; choose from {MEASURES}")
    if chunk < 1 or batch < 4:
        raise ValueError(f"similarity: need chunk >= 1 and batch >= 4 (got chunk={chunk}, batch={batch})")
    if not (bandwidth > 0 and 0 < variance <= 1):
        raise ValueError(f"similarity: need bandwidth > 0 and 0 < variance <= 1 (got {bandwidth}, {variance})")
    if cca_dims != "refuse" and (isinstance(cca_dims, bool) or not isinstance(cca_dims, int) or cca_dims < 1):
        raise ValueError(f"similarity: cca_dims must be 'refuse' or a positive int (got {cca_dims!r})")
    return _Options(batch, bandwidth, variance, cca_dims)


def _streamed_matrices(a: _Layers, b: _Layers, measures: Sequence[str], chunk: int, options: _Options,
                       max_bytes: int) -> dict[str, np.ndarray]:
    """The streamed measures, from one pass over the samples of both sources."""
    covariance = [measure for measure in measures if measure in _FROM_COVARIANCES]
    debiased = "debiased_cka" in measures
    if not covariance and not debiased:
        return {}
    if covariance and _Moments.nbytes(a, b) > max_bytes:
        raise ValueError(
            f"similarity: {covariance} would accumulate {_Moments.nbytes(a, b) / 2**30:.1f} GiB of cross-products "
            f"for layers of {a.widths} and {b.widths} units (max_bytes={max_bytes}); use debiased_cka, "
            "cka_matrix on in-memory activations, or a larger max_bytes"
        )
    if debiased:
        chunk = max(options.batch, chunk - chunk % options.batch)
    stream = _Stream(a, b, chunk)
    moments = _Moments(stream) if covariance else None
    hsic = _MinibatchHsic(stream, options.batch) if debiased else None
    accumulators = [accumulator for accumulator in (moments, hsic) if accumulator is not None]
    # Non-finite inputs are refused from the accumulated sums at the end (no extra pass
    # over every block); the inf - inf on the way there is not worth a warning.
    with np.errstate(invalid="ignore"):
        for xa, xb in stream:
            for accumulator in accumulators:
                accumulator.add(xa, xb)
    values = _covariance_matrices(moments, covariance, options) if moments else {}
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
