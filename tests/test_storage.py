"""Tests for storage: atomic writes, Zarr round trips, provenance, model files, figures."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.figure import Figure

import workflow
from workflow import storage


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {
            "score": (("init", "sample"), rng.random((2, 5))),
            "label": ("sample", np.arange(5, dtype=np.int64)),
            "kept": ("sample", np.array([True, False, True, True, False])),
        },
        coords={"init": [0, 1], "sample": np.arange(5)},
        attrs={"description": "test", "layers": ["conv1", "head"]},
    )


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- Zarr ----------------------------------------------------------------------------


def test_write_then_open_round_trips_values_coords_and_attrs(tmp_path: Path) -> None:
    ds = _dataset()
    storage.write_dataset(ds, tmp_path / "a.zarr", {"seed": 3, "runs": ["x", "y"]})
    opened = storage.open_dataset(tmp_path / "a.zarr")
    expected = ds.assign_attrs(seed=3, runs=["x", "y"])
    xr.testing.assert_identical(opened, expected)
    assert ds.attrs == {"description": "test", "layers": ["conv1", "head"]}  # input untouched


def test_round_trip_of_string_coordinates(tmp_path: Path) -> None:
    cka = xr.DataArray(np.eye(2), dims=("layer_a", "layer_b"),
                       coords={"layer_a": ["conv1", "head"], "layer_b": ["conv1", "head"]}, name="cka")
    storage.write_dataset(cka.to_dataset(), tmp_path / "cka.zarr")
    opened = storage.open_dataset(tmp_path / "cka.zarr")
    assert opened["layer_a"].values.tolist() == ["conv1", "head"]
    np.testing.assert_array_equal(opened["cka"].values, np.eye(2))


def test_plain_open_zarr_opens_a_store_without_warnings(tmp_path: Path) -> None:
    storage.write_dataset(_dataset(), tmp_path / "a.zarr", storage.provenance({"lr": 0.1}, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(tmp_path / "a.zarr")
        ds.load()
    assert set(ds.data_vars) == {"score", "label", "kept"}


def test_writing_string_coordinates_emits_no_warnings(tmp_path: Path) -> None:
    # numpy '<U' text has no Zarr v3 specification (zarr warns that other readers may
    # not open it); method and layer names must be written in a specified dtype
    ds = xr.Dataset({"acc": ("method", [0.5, 0.6])}, coords={"method": ["full", "scratch"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage.write_dataset(ds, tmp_path / "a.zarr")
    assert storage.open_dataset(tmp_path / "a.zarr")["method"].values.tolist() == ["full", "scratch"]


def test_write_dataset_replaces_an_existing_store(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    storage.write_dataset(_dataset(), path)
    storage.write_dataset(xr.Dataset({"other": ("x", [1.0, 2.0])}), path)
    assert set(storage.open_dataset(path).data_vars) == {"other"}
    assert _names(tmp_path) == ["a.zarr"]


def test_open_dataset_without_loading_reads_the_same_values(tmp_path: Path) -> None:
    storage.write_dataset(_dataset(), tmp_path / "a.zarr")
    lazy = storage.open_dataset(tmp_path / "a.zarr", load=False)
    np.testing.assert_array_equal(lazy["score"].values, _dataset()["score"].values)


# --- atomic writes -------------------------------------------------------------------


def test_atomic_path_leaves_nothing_behind_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        with storage.atomic_path(tmp_path / "a.zarr") as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text("{}")
            raise RuntimeError("killed")
    assert _names(tmp_path) == []


def test_atomic_path_leaves_an_existing_store_as_it_was_when_the_body_raises(tmp_path: Path) -> None:
    storage.write_dataset(_dataset(), tmp_path / "a.zarr")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(tmp_path / "a.zarr") as tmp:
            tmp.mkdir()
            raise RuntimeError("killed")
    assert _names(tmp_path) == ["a.zarr"]
    xr.testing.assert_identical(storage.open_dataset(tmp_path / "a.zarr"), _dataset())


def test_failed_write_dataset_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = xr.Dataset({"x": ("a", [object()])})  # not encodable
    with pytest.raises(Exception):
        storage.write_dataset(bad, tmp_path / "a.zarr")
    assert _names(tmp_path) == []


def test_atomic_path_replaces_an_existing_directory_on_success(tmp_path: Path) -> None:
    final = tmp_path / "store"
    final.mkdir()
    (final / "old").write_text("old")
    with storage.atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and not tmp.exists()
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert _names(final) == ["new"]
    assert _names(tmp_path) == ["store"]


# A writer killed with SIGKILL the moment its store is complete, before the rename.
_KILLED_WRITER = """
import os, signal, sys
import numpy as np, xarray as xr
from workflow import storage
replace = os.replace  # zarr renames its own files too: kill only at the store's rename
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL) if str(dst) == sys.argv[1] else replace(src, dst)
storage.write_dataset(xr.Dataset({"x": ("a", np.arange(1000.0))}), sys.argv[1])
"""


def test_a_writer_killed_before_the_rename_leaves_no_store_and_the_next_write_clears_its_remains(
    tmp_path: Path,
) -> None:
    store = tmp_path / "a.zarr"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(store)], cwd=Path(workflow.__file__).parents[1])
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists()
    (remains,) = tmp_path.iterdir()  # the complete temporary: hidden, never at the store's name
    assert remains.name.startswith(".a.zarr.tmp-") and (remains / "zarr.json").exists()
    (tmp_path / ".b.zarr.tmp-00000000").mkdir()  # another output's temporary is not touched
    storage.write_dataset(_dataset(), store)
    assert _names(tmp_path) == [".b.zarr.tmp-00000000", "a.zarr"]
    xr.testing.assert_identical(storage.open_dataset(store), _dataset())


def test_atomic_path_makes_missing_parent_folders(tmp_path: Path) -> None:
    with storage.atomic_path(tmp_path / "a" / "b" / "f.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "a" / "b" / "f.txt").read_text() == "x"


# --- provenance -----------------------------------------------------------------------


def test_provenance_carries_version_time_seed_parent_device_and_config_as_json() -> None:
    spec = {"train": {"lr": 0.1, "epochs": 2}, "seed": 1, "model": {"name": "cnn1d"}}
    attrs = storage.provenance(spec, parent="pretrain/s1", seed=1, device="cpu")
    assert attrs["package_version"] == workflow.__version__
    created = dt.datetime.fromisoformat(attrs["created"])
    assert created.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(minutes=5)
    assert isinstance(attrs["config"], str) and json.loads(attrs["config"]) == spec
    assert attrs["seed"] == 1 and attrs["parent"] == "pretrain/s1" and attrs["device"] == "cpu"


def test_provenance_omits_what_is_not_given() -> None:
    attrs = storage.provenance(None)
    assert {"config", "parent", "seed", "device"}.isdisjoint(attrs)
    assert {"package_version", "created"} <= set(attrs)


def test_provenance_records_the_commit_the_tree_and_the_versions_that_made_it() -> None:
    import importlib.metadata
    import subprocess

    attrs = storage.provenance(None)
    repo = Path(storage.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the package is a git checkout (it is, in CI's clone)
        assert attrs["git_commit"] == head.stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
        assert attrs["git_dirty"] is bool(status.stdout.strip())
    assert set(attrs["versions"]) == {"dlsci", "torch", "xarray", "zarr", "numpy", "snakemake"}
    assert attrs["versions"]["torch"] == importlib.metadata.version("torch") == torch.__version__.split("+")[0]
    assert attrs["versions"]["xarray"] == xr.__version__


def test_provenance_survives_a_zarr_round_trip(tmp_path: Path) -> None:
    spec = {"lr": 0.1, "methods": ["full", "scratch"]}
    storage.write_dataset(_dataset(), tmp_path / "a.zarr", storage.provenance(spec, seed=np.int64(2)))
    attrs = storage.open_dataset(tmp_path / "a.zarr").attrs
    assert json.loads(attrs["config"]) == spec
    assert attrs["seed"] == 2


# --- torch, JSON and figures -------------------------------------------------------------


def test_save_torch_then_load_torch_round_trips(tmp_path: Path) -> None:
    obj = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "masks": None, "spec": {"run": "pretrain/s0"}}
    storage.save_torch(obj, tmp_path / "model.pt")
    loaded = storage.load_torch(tmp_path / "model.pt")
    assert torch.equal(loaded["state_dict"]["w"], obj["state_dict"]["w"])
    assert loaded["masks"] is None and loaded["spec"] == obj["spec"]
    assert _names(tmp_path) == ["model.pt"]


def test_write_json_is_sorted_and_readable(tmp_path: Path) -> None:
    storage.write_json({"b": 1, "a": [1, 2]}, tmp_path / "x.json")
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    assert text.index('"a"') < text.index('"b"')


@pytest.mark.parametrize(("suffix", "magic"), [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_save_figure_writes_the_format_of_the_suffix(tmp_path: Path, suffix: str, magic: bytes) -> None:
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = storage.save_figure(fig, tmp_path / f"plot.{suffix}")
    assert path == tmp_path / f"plot.{suffix}"
    assert path.read_bytes().startswith(magic)
    assert _names(tmp_path) == [f"plot.{suffix}"]
