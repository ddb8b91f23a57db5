"""The layers of an activation store (or of a mapping of arrays), read in blocks of
samples, and the stream of blocks of two sources that every streamed measure
accumulates over."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from workflow import storage
from workflow.analysis.cka import Array

Source = str | os.PathLike | xr.Dataset | Mapping[str, Array]
_READERS = min(8, os.cpu_count() or 1)


class Layers:
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
    def of(cls, source: Source) -> Layers:
        if isinstance(source, (str, os.PathLike)):
            source = storage.open_dataset(source, load=False)
        if isinstance(source, xr.Dataset):
            return cls._of_dataset(source)
        return cls._of_mapping(source)

    @classmethod
    def _of_dataset(cls, ds: xr.Dataset) -> Layers:
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
    def _of_mapping(cls, acts: Mapping[str, Array]) -> Layers:
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
        check_finite([np.isfinite(x).all()], [self.names[index]])
        return x

    def check_finite(self, sums: np.ndarray) -> None:
        """Refuse layers with non-finite values, told by their (then non-finite) column sums."""
        check_finite([np.isfinite(sums[columns]).all() for columns in self.slices], self.names)


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


def check_finite(finite: Sequence[bool] | np.ndarray, names: Sequence[str]) -> None:
    bad = [name for name, ok in zip(names, np.atleast_1d(finite)) if not np.all(ok)]
    if bad:
        raise ValueError(f"similarity: layers {bad} have non-finite values")


def check_same_samples(a: Layers, b: Layers) -> None:
    if a.n != b.n:
        raise ValueError(f"similarity: sources have different numbers of samples ({a.n} and {b.n})")
    if a.n < 2:
        raise ValueError(f"similarity: need at least 2 samples (got {a.n})")
    if a.samples is not None and b.samples is not None and not np.array_equal(a.samples, b.samples):
        raise ValueError("similarity: sources were recorded on different probe sets (their samples differ)")


class Stream:
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

    def __init__(self, a: Layers, b: Layers, chunk: int) -> None:
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
