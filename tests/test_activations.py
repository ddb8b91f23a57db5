"""Recording activations with forward hooks, and storing them as chunked Zarr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from workflow.analysis.activations import activations_dataset, layer_matrix, pool_positions, record_activations
from workflow.models import CNN1d
from workflow.storage import open_dataset, write_dataset

N, LENGTH, CLASSES, CHANNELS = 50, 40, 10, 4
SHAPES = {"conv1": (N, CHANNELS, 40), "conv2": (N, CHANNELS, 20), "conv3": (N, CHANNELS, 10), "head": (N, CLASSES)}


@pytest.fixture
def model() -> CNN1d:
    torch.manual_seed(0)
    model = CNN1d(in_length=LENGTH, num_classes=CLASSES, channels=CHANNELS)
    # A few train-mode passes so BatchNorm's running statistics are not the defaults,
    # which would hide a recording made in train mode instead of eval mode.
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, LENGTH) * 3 + 1)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(N, LENGTH, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def acts(model: CNN1d, x: torch.Tensor) -> dict[str, np.ndarray]:
    return record_activations(model, x)


def _hooks_removed(model: torch.nn.Module) -> bool:
    return all(not module._forward_hooks for module in model.modules())


def test_records_every_layer_unflattened(acts):
    assert list(acts) == ["conv1", "conv2", "conv3", "head"]
    for layer, values in acts.items():
        assert values.shape == SHAPES[layer]
        assert values.dtype == np.float32


def test_records_a_chosen_subset(model, x):
    assert list(record_activations(model, x, layers=["conv2"])) == ["conv2"]


def test_head_activations_are_the_eval_mode_outputs(model, x, acts):
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(acts["head"], expected, rtol=1e-6, atol=1e-6)


def test_batching_does_not_change_results(model, x):
    small, whole = record_activations(model, x, batch_size=7), record_activations(model, x, batch_size=1000)
    for layer in whole:
        np.testing.assert_allclose(small[layer], whole[layer], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_hooks_removed_and_mode_restored(model, x, training):
    model.train(training)
    record_activations(model, x)
    assert _hooks_removed(model)
    assert all(module.training == training for module in model.modules())


def test_hooks_removed_and_mode_restored_on_error(model):
    model.train()
    wrong_length = torch.randn(5, LENGTH + 8)  # the conv layers run, the head fails
    with pytest.raises(RuntimeError):
        record_activations(model, wrong_length)
    assert _hooks_removed(model)
    assert all(module.training for module in model.modules())


def test_unknown_layer_raises(model, x):
    with pytest.raises(KeyError, match="nope"):
        record_activations(model, x, layers=["conv1", "nope"])


def test_dataset_dims_and_coords(acts):
    sample = np.arange(100, 100 + N)
    ds = activations_dataset(acts, sample)
    assert ds.attrs["layers"] == ["conv1", "conv2", "conv3", "head"]
    np.testing.assert_array_equal(ds["sample"].values, sample)
    for layer, values in acts.items():
        unit = f"{layer}_unit"
        assert ds[layer].dims == ("sample", unit)
        assert ds[layer].dtype == np.float32
        assert ds.sizes[unit] == values[0].size
    # conv maps: channel-major units with channel and position coordinates, no index
    channel, position = ds["conv2_channel"].values, ds["conv2_position"].values
    assert ds["conv2_channel"].dims == ds["conv2_position"].dims == ("conv2_unit",)
    assert "conv2_unit" not in ds.indexes
    np.testing.assert_array_equal(ds["conv2"].values, acts["conv2"][:, channel, position])
    np.testing.assert_array_equal(channel[:21], [0] * 20 + [1])
    # dense outputs: a plain unit index
    np.testing.assert_array_equal(ds.indexes["head_unit"], np.arange(CLASSES))
    np.testing.assert_array_equal(ds["head"].values, acts["head"])


def test_layer_matrix_is_float64_sample_by_unit(acts):
    ds = activations_dataset(acts, np.arange(N))
    matrix = layer_matrix(ds, "conv3")
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, acts["conv3"].reshape(N, -1))


def test_dataset_round_trips_through_zarr_chunked_along_sample(acts, tmp_path):
    ds = activations_dataset(acts, np.arange(N), chunk=16)
    path = write_dataset(ds, tmp_path / "activations.zarr")
    xr.testing.assert_identical(open_dataset(path), ds)
    lazy = xr.open_zarr(path)
    for layer in acts:
        assert lazy[layer].dtype == np.float32
        assert lazy[layer].encoding["chunks"] == (16, ds.sizes[f"{layer}_unit"])
        assert lazy[layer].encoding["preferred_chunks"]["sample"] == 16


def test_chunk_larger_than_the_samples_is_one_chunk(acts, tmp_path):
    path = write_dataset(activations_dataset(acts, np.arange(N)), tmp_path / "activations.zarr")
    assert xr.open_zarr(path)["head"].encoding["chunks"] == (N, CLASSES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_model_device_and_returns_numpy(model, x, acts):
    on_gpu = record_activations(model.cuda(), x)  # x stays on the CPU
    for layer in acts:
        np.testing.assert_allclose(on_gpu[layer], acts[layer], rtol=1e-4, atol=1e-4)


def test_image_maps_flatten_channel_major_with_channel_and_position_coordinates() -> None:
    values = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (n, C, H, W)
    ds = activations_dataset({"stage1": values}, np.arange(2))
    assert ds["stage1"].dims == ("sample", "stage1_unit") and ds.sizes["stage1_unit"] == 60
    np.testing.assert_array_equal(ds["stage1"].values, values.reshape(2, -1))
    assert ds["stage1_channel"].values.tolist() == [c for c in range(3) for _ in range(20)]
    assert ds["stage1_position"].values.tolist() == list(range(20)) * 3


def test_pooling_averages_conv_maps_over_positions_and_leaves_flat_outputs(acts) -> None:
    pooled = pool_positions(acts)
    for name, x in acts.items():
        if x.ndim >= 3:
            assert pooled[name].shape == x.shape[:2]
            np.testing.assert_allclose(pooled[name], x.reshape(len(x), x.shape[1], -1).mean(axis=2), rtol=1e-6)
        else:
            assert pooled[name] is x
    images = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (n, channels, h, w)
    np.testing.assert_allclose(pool_positions({"c": images})["c"], images.mean(axis=(2, 3)))
