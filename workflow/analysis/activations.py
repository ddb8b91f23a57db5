"""Record a model's layer outputs on probe examples and store them as xarray datasets."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from workflow.runtime import eval_mode, model_device


def record_activations(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str] | None = None,
    batch_size: int = 512,
) -> dict[str, np.ndarray]:
    """Outputs of the named modules of ``model`` on ``x``, as float32 arrays.

    ``layers`` defaults to ``model.layers``. The model runs in eval mode, without
    gradients, in batches of ``batch_size`` on the device of its parameters. Each
    array has shape ``(len(x), ...)``, unflattened. Hooks are removed and every
    module's train/eval mode is restored afterwards, also on error.
    """
    layers = list(model.layers if layers is None else layers)
    if len(x) == 0:
        raise ValueError("record_activations: x has no samples")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise KeyError(f"record_activations: no modules named {missing} in {type(model).__name__}")

    recorded: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"record_activations: {name!r} outputs {type(output).__name__}, not a tensor")
            recorded[name].append(output.detach().to("cpu", torch.float32).numpy())

        return hook

    device = model_device(model)
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: np.concatenate(batches) for name, batches in recorded.items()}


def pool_positions(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convolutional maps ``(n, channels, *positions)`` averaged over their positions to ``(n, channels)``.

    Other outputs pass unchanged. Pooling keeps a channel's mean response and drops
    where it occurred: the usual choice when maps are too wide to compare flattened.
    """
    return {name: x.mean(axis=tuple(range(2, x.ndim))) if x.ndim >= 3 else x for name, x in acts.items()}


def _layer_variable(layer: str, values: np.ndarray) -> tuple[xr.Variable, dict[str, xr.Variable]]:
    """One layer as a (sample, unit) variable and its coordinates along the unit dim."""
    unit = f"{layer}_unit"
    if values.ndim == 2:
        return xr.Variable(("sample", unit), values), {unit: xr.Variable(unit, np.arange(values.shape[1]))}
    if values.ndim >= 3:
        # (n, channels, *spatial): positions are the flattened spatial index
        n, channels = values.shape[:2]
        positions = int(np.prod(values.shape[2:]))
        # reshape of a C-ordered (n, channels, positions) array is channel-major
        coords = {
            f"{layer}_channel": xr.Variable(unit, np.repeat(np.arange(channels), positions)),
            f"{layer}_position": xr.Variable(unit, np.tile(np.arange(positions), channels)),
        }
        return xr.Variable(("sample", unit), values.reshape(n, -1)), coords
    raise ValueError(f"activations_dataset: {layer!r} has {values.ndim} dims; expected 2 or more")


# Zarr chunks of about this many bytes: below it, per-chunk overhead dominates reads
# (narrow layers in chunks of 256 samples stream three times slower).
CHUNK_BYTES = 2**20


def activations_dataset(acts: dict[str, np.ndarray], sample: np.ndarray, chunk: int | None = None) -> xr.Dataset:
    """Activations as a dataset: one float32 ``(sample, {layer}_unit)`` variable per layer.

    Conv maps ``(n, channels, positions)`` are flattened channel-major, with
    ``{layer}_channel`` and ``{layer}_position`` coordinates along the unit dim;
    ``sample`` holds the indices of the probe examples in their dataset. On disk
    the variables are chunked along ``sample`` so analyses can stream: by ``chunk``
    samples, or by default by as many samples as fill about :data:`CHUNK_BYTES`
    (at least 256).
    """
    sample = np.asarray(sample)
    variables: dict[str, xr.Variable] = {}
    coords: dict[str, xr.Variable] = {"sample": xr.Variable("sample", sample)}
    for layer, values in acts.items():
        values = np.asarray(values, dtype=np.float32)
        if len(values) != len(sample):
            raise ValueError(f"activations_dataset: {layer!r} has {len(values)} samples, sample has {len(sample)}")
        variable, layer_coords = _layer_variable(layer, values)
        # Zarr chunking through the encoding rather than ds.chunk(): the latter needs
        # dask, which is not a dependency; to_zarr honours encoding chunks for
        # in-memory arrays, and xr.open_zarr reads them back as preferred chunks.
        rows = chunk or max(256, CHUNK_BYTES // (4 * variable.shape[1]))
        variable.encoding["chunks"] = (max(1, min(rows, len(sample))), variable.shape[1])
        variables[layer] = variable
        coords.update(layer_coords)
    return xr.Dataset(variables, coords=coords, attrs={"layers": list(acts)})


def layer_matrix(ds: xr.Dataset, layer: str) -> np.ndarray:
    """The ``(sample, unit)`` matrix of one layer, as float64."""
    return ds[layer].transpose("sample", f"{layer}_unit").values.astype(np.float64)
