"""Tests for workflow.plots: every figure renders to PNG and PDF from synthetic summaries."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import xarray as xr

from workflow import plots, storage

# String coordinates (method, layer names) are stored as a Zarr dtype without a v3
# spec yet; zarr warns about that on every write, which is noise here.
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

PREVIEW_DIR = Path("/tmp/dlsci_plot_previews")


def _curves(
    rng: np.random.Generator, shape: tuple[int, ...], n_epochs: int
) -> dict[str, np.ndarray]:
    """Decreasing losses and rising accuracies with noise, last axis = epoch."""
    epoch = np.arange(n_epochs)
    progress = 1.0 - np.exp(-epoch / 3.0)
    noise = lambda: 0.03 * rng.standard_normal(shape + (n_epochs,))  # noqa: E731
    acc = np.clip(0.1 + 0.8 * progress + noise(), 0.0, 1.0)
    return {
        "train_loss": 2.3 * (1 - progress) + 0.1 + np.abs(noise()),
        "train_acc": acc,
        "test_loss": 2.3 * (1 - 0.9 * progress) + 0.2 + np.abs(noise()),
        "test_acc": np.clip(acc - 0.05, 0.0, 1.0),
    }


def _metrics_dataset(coords: dict[str, object], n_epochs: int, seed: int = 0) -> xr.Dataset:
    """A tidy summary over ``coords`` + epoch; the second seed stops early (NaN tail)."""
    rng = np.random.default_rng(seed)
    dims = (*coords, "epoch")
    shape = tuple(len(v) for v in coords.values())  # type: ignore[arg-type]
    data = _curves(rng, shape, n_epochs)
    seed_axis = list(coords).index("seed")
    for values in data.values():
        if shape[seed_axis] > 1:
            idx = [slice(None)] * len(dims)
            idx[seed_axis], idx[-1] = 1, slice(n_epochs - 2, None)
            values[tuple(idx)] = np.nan
    return xr.Dataset(
        {name: (dims, values) for name, values in data.items()},
        coords={**coords, "epoch": np.arange(n_epochs)},
    )


def _pretrain(n_seeds: int) -> xr.Dataset:
    return _metrics_dataset({"seed": np.arange(n_seeds)}, n_epochs=8)


def _finetune(n_seeds: int) -> xr.Dataset:
    ds = _metrics_dataset(
        {"method": ["full", "linear_probe", "scratch"], "seed": np.arange(n_seeds)},
        n_epochs=6,
        seed=1,
    )
    # Methods that differ visibly, so the colours can be checked by eye.
    offset = xr.DataArray([0.08, -0.12, 0.0], dims="method", coords={"method": ds["method"]})
    ds["train_acc"] = (ds["train_acc"] + offset).clip(0.0, 1.0)
    ds["test_acc"] = (ds["test_acc"] + offset).clip(0.0, 1.0)
    ds["train_loss"] = ds["train_loss"] * (1 - offset)
    ds["test_loss"] = ds["test_loss"] * (1 - offset)
    # A hole in the middle of one run (a missing evaluation).
    ds["test_acc"][0, 0, 2] = np.nan
    return ds


def _data_pruning(n_seeds: int) -> xr.Dataset:
    fractions = np.array([0.25, 0.5, 0.75])
    ds = _metrics_dataset(
        {
            "method": ["el2n-hard", "random"],
            "fraction": fractions,
            "kd": np.array([False, True]),
            "seed": np.arange(n_seeds),
        },
        n_epochs=5,
        seed=2,
    )
    # Less data -> more error, KD helps a bit: gives the log-log plot a slope.
    less_data = xr.DataArray(0.25 * (1 - fractions), coords={"fraction": fractions})
    with_kd = xr.DataArray([0.0, 0.03], dims="kd", coords={"kd": ds["kd"]})
    ds["test_acc"] = (ds["test_acc"] - less_data + with_kd).clip(0.0, 1.0)
    # A combination that was not run.
    ds["test_acc"].loc[{"method": "random", "kd": True}] = np.nan
    return ds


def _network_pruning(n_seeds: int) -> xr.Dataset:
    levels = np.arange(8)
    ds = _metrics_dataset(
        {"method": ["imp"], "level": levels, "seed": np.arange(n_seeds)}, n_epochs=5, seed=3
    )
    drop = np.where(levels > 5, 0.1 * (levels - 5), 0.0)[None, :, None, None]
    ds["test_acc"] = ds["test_acc"] - drop
    return ds.assign_coords(density=("level", 0.8**levels))


def _cka(n_seeds: int) -> xr.Dataset:
    layers = ["conv1", "conv2", "conv3", "head"]
    rng = np.random.default_rng(4)
    n = len(layers)
    base = np.exp(-np.abs(np.subtract.outer(np.arange(n), np.arange(n))))
    methods = ["full", "linear_probe"]
    values = np.clip(base + 0.05 * rng.standard_normal((len(methods), n_seeds, n, n)), 0, 1)
    values[0, :, -1, -1] = 0.4  # full fine-tuning changes the head the most
    values[1, 0, 0, 1] = np.nan  # a hole
    return xr.Dataset(
        {"cka": (("method", "seed", "layer_a", "layer_b"), values)},
        coords={
            "method": methods,
            "seed": np.arange(n_seeds),
            "layer_a": layers,
            "layer_b": layers,
        },
    )


BUILDERS = {
    "pretrain": _pretrain,
    "finetune": _finetune,
    "data_pruning": _data_pruning,
    "network_pruning": _network_pruning,
    "cka": _cka,
}


@pytest.fixture(scope="module", params=[2, 1], ids=["two_seeds", "single_seed"])
def n_seeds(request: pytest.FixtureRequest) -> int:
    """Seeds per synthetic summary: the usual case and the single-seed one."""
    return request.param


@pytest.fixture(scope="module")
def summary_paths(n_seeds: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind of summary written as a Zarr store, with ``n_seeds`` seeds.

    Module-scoped: the stores are only read, and writing them dominates test time.
    """
    root = tmp_path_factory.mktemp("summary")
    return {
        name: storage.write_dataset(build(n_seeds), root / f"{name}.zarr")
        for name, build in BUILDERS.items()
    }


def test_final_value_takes_last_non_nan_epoch() -> None:
    da = xr.DataArray(
        [
            [1.0, 2.0, 3.0, np.nan],  # stopped early
            [4.0, np.nan, 6.0, 7.0],  # hole in the middle
            [np.nan] * 4,  # never run
            [8.0, np.nan, np.nan, np.nan],  # only the evaluation before training
        ],
        dims=("seed", "epoch"),
        coords={"seed": [0, 1, 2, 3], "epoch": [0, 1, 2, 3]},
    )
    out = plots.final_value(da)
    assert out.dims == ("seed",)
    np.testing.assert_array_equal(out.values, [3.0, 7.0, np.nan, 8.0])
    assert "epoch" not in out.coords


def test_final_value_keeps_other_dims() -> None:
    ds = _data_pruning(2)
    out = plots.final_value(ds["test_acc"])
    assert out.dims == ("method", "fraction", "kd", "seed")
    # Seed 1 stops two epochs early, so its final value is epoch n-3.
    expected = ds["test_acc"].isel(seed=1, epoch=-3).sel({"method": "el2n-hard"})
    np.testing.assert_allclose(out.isel(seed=1).sel({"method": "el2n-hard"}), expected)


@pytest.mark.parametrize("figure", sorted(plots.FIGURES))
def test_render_writes_png_and_pdf(
    figure: str, n_seeds: int, summary_paths: dict[str, Path], tmp_path: Path
) -> None:
    png, pdf = tmp_path / "fig" / f"{figure}.png", tmp_path / "fig" / f"{figure}.pdf"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN holes must not leak RuntimeWarnings
        plots.render(figure, summary_paths, [png, pdf])
    for path in (png, pdf):
        assert path.is_file() and path.stat().st_size > 0
    image = mpimg.imread(png)
    height, width = image.shape[:2]
    assert 300 < height < 4000 and 300 < width < 4000
    assert image.std() > 0  # not a blank canvas
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert not list((tmp_path / "fig").glob(".*"))  # no leftover temporaries
    # Keep a copy for a human look at how the figure reads.
    PREVIEW_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, PREVIEW_DIR / f"{figure}_{n_seeds}seed.png")


def test_figures_table_matches_signatures() -> None:
    assert set(plots.FIGURES) == {"training_curves", "data_pruning", "network_pruning", "cka"}
    for func, needs in plots.FIGURES.values():
        fig = func(*(BUILDERS[name](2) for name in needs))
        assert fig.axes


def test_network_pruning_plots_final_means_and_skips_missing_level() -> None:
    ds = _network_pruning(2)
    ds["test_acc"][0, -1] = np.nan  # the sparsest level never finished
    ax = plots.network_pruning(ds).axes[0]
    line = ax.containers[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), 100 * 0.8 ** np.arange(7))
    expected = 100 * plots.final_value(ds["test_acc"]).isel(method=0).mean("seed")[:7]
    np.testing.assert_allclose(line.get_ydata(), expected)


def test_network_pruning_accepts_density_as_collected_variable() -> None:
    """Per-run stores carry density as a scalar, so collecting gives (method, level, seed)."""
    ds = _network_pruning(2)
    density = ds["density"].broadcast_like(ds["test_acc"].isel(epoch=0, drop=True)).copy()
    density[0, -1, 1] = np.nan  # one run missing
    ds = ds.drop_vars("density").assign(density=density)
    line = plots.network_pruning(ds).axes[0].containers[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), 100 * 0.8 ** np.arange(8))


def test_data_pruning_single_method_skips_combinations_not_run() -> None:
    ds = _data_pruning(2).sel({"method": ["random"]})  # random + KD is all NaN
    ax = plots.data_pruning(ds).axes[0]
    assert ax.get_legend_handles_labels()[1] == ["random"]
    expected = 100 * (1 - plots.final_value(ds["test_acc"]).sel({"kd": False}).mean("seed"))
    np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), expected.squeeze())


def test_all_nan_summary_says_no_data() -> None:
    ds = _data_pruning(2)
    ds["test_acc"][:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.data_pruning(ds)
        fig.canvas.draw()
    assert any(t.get_text() == "no data" for t in fig.axes[0].texts)


def test_unknown_figure_names_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        plots.render("nope", {}, [tmp_path / "x.png"])
    for name in plots.FIGURES:
        assert name in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_missing_summary_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finetune"):
        plots.render(
            "training_curves", {"pretrain": tmp_path / "p.zarr"}, [tmp_path / "x.png"]
        )
