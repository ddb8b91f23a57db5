"""Tests for workflow.report: the tables of the similarity summaries along the lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from workflow import storage
from workflow.report import report

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

LAYERS = ["conv1", "conv2", "head"]


def _layers(values: np.ndarray, coords: dict[str, list]) -> xr.DataArray:
    """``values`` (coords..., layer_a, layer_b) as a summary variable."""
    return xr.DataArray(values, dims=(*coords, "layer_a", "layer_b"),
                        coords={**coords, "layer_a": LAYERS, "layer_b": LAYERS})


def test_lineage_tables_average_matched_layers_and_within_tables_the_others(tmp_path: Path) -> None:
    matrix = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.2], [0.1, 0.1, 0.3]])  # diagonal mean 0.6
    within = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])  # off-diagonal mean 0.3667
    summaries = {
        "similarity_prune": _layers(np.stack([matrix, matrix - 0.1])[None, None, :, None],
                                    {"method": ["imp"], "rewind": [20], "level": [1, 2], "seed": [0]}),
        "similarity_seeds": _layers(matrix[None, None], {"source": ["mnist1d"], "model": ["pretrained"]}),
        "similarity_within": _layers(within[None, None, None], {"source": ["none"], "model": ["scratch"],
                                                                "seed": [0]}),
    }
    for name, da in summaries.items():
        storage.write_dataset(xr.Dataset({"linear_cka": da, "procrustes": 1 - da}),
                              tmp_path / "summary" / f"{name}.zarr")
    text = report(tmp_path)
    prune = text.split("similarity, dense vs pruned, mean over matched layers: linear_cka\n")[1].split("\n\n")[0]
    assert [line.split()[-3] for line in prune.splitlines()[2:]] == ["0.6", "0.5"]  # seed 0 of levels 1, 2
    seeds = text.split("similarity, first vs second seed, mean over matched layers: linear_cka\n")[1]
    assert seeds.splitlines()[2].split()[-1] == "0.6"
    within_table = text.split("similarity within each model, mean over pairs of different layers: linear_cka\n")[1]
    assert within_table.splitlines()[2].split()[-3] == f"{(0.5 + 0.2 + 0.4) / 3:.3f}"
    assert "procrustes" not in text  # the lineage tables show linear CKA alone


def test_the_report_says_once_which_code_made_the_stores(tmp_path: Path) -> None:
    ds = xr.Dataset({"test_acc": (("seed", "epoch"), [[0.5, 0.6]])}, coords={"seed": [0], "epoch": [1, 2]})
    for run in ("pretrain/a/s0", "pretrain/a/s1"):
        storage.write_dataset(ds.isel(seed=0), tmp_path / run / "metrics.zarr", storage.provenance(None))
    storage.write_dataset(ds.expand_dims(source=["a"]), tmp_path / "summary" / "pretrain.zarr", storage.provenance(None))
    storage.write_dataset(ds, tmp_path / "old.zarr", {"package": "dlsci"})  # made before commits were recorded
    storage.write_dataset(ds, tmp_path / "other" / "summary" / "pretrain.zarr", {})  # another study, inside
    text = report(tmp_path)
    code = storage.code_version()
    lines = text.split("provenance: the code that made the stores\n")[1].splitlines()
    assert lines[0].startswith(f"  3 stores: commit {code['git_commit'][:12]}")
    assert f"torch {code['versions']['torch']}" in lines[0] and "snakemake" in lines[0]
    assert lines[1] == "  1 store: not recorded (made before provenance recorded its code)"
    assert text.count("provenance:") == 1


def test_stitching_is_printed_beside_what_it_is_read_against(tmp_path: Path) -> None:
    space = ["absolute", "relative"]
    ds = xr.Dataset(
        {"stitched_acc": (("model", "space"), [[0.141, 0.729]]),
         "classifier_acc_a": (("model", "space"), [[0.817, 0.922]]),
         "model_acc_a": ("model", [0.94]), "model_acc_b": ("model", [0.93]),
         "similarity": (("model", "space", "measure"), [[[0.3], [0.9]]])},
        coords={"model": ["finetune/mnist1d/full"], "space": space, "measure": ["linear_cka"]})
    storage.write_dataset(ds, tmp_path / "summary" / "relative.zarr")
    text = report(tmp_path)
    table = text.split("zero-shot stitching")[1].split("\n\n")[0]
    assert "ridge classifier" in table and "not the model's own head" in table
    row = table.splitlines()[-1].split()
    assert row[0] == "finetune/mnist1d/full" and row[1:] == ["72.9", "92.2", "14.1", "81.7", "94.0"]


def test_distillation_is_reported_at_the_t_and_alpha_chosen_on_validation(tmp_path: Path) -> None:
    # test accuracy prefers alpha 0.9; validation prefers 0.5: the report must take 0.5
    test = np.array([[0.70, 0.80], [0.72, 0.82]])  # (seed, alpha)
    val = np.array([[0.75, 0.60], [0.77, 0.62]])
    dims = ("selection", "fraction", "teacher", "temperature", "alpha", "seed", "epoch")
    shape = (1, 1, 1, 1, 2, 2, 1)
    ds = xr.Dataset(
        {"test_acc": (dims, test.T.reshape(shape)), "val_acc": (dims, val.T.reshape(shape))},
        coords={"selection": ["random"], "fraction": [0.1], "teacher": ["trained"], "temperature": [4.0],
                "alpha": [0.5, 0.9], "seed": [0, 1], "epoch": [20]})
    storage.write_dataset(ds, tmp_path / "summary" / "distill.zarr")
    text = report(tmp_path)
    table = text.split("data pruning with distillation, at the T and alpha chosen on validation")[1]
    row = table.splitlines()[3].split()
    assert row[-4:] == ["70.0", "72.0", "71.0", "1.4"]  # seeds 0 and 1 at alpha 0.5, their mean and std
    choices = table.split("T and alpha chosen on validation:\n")[1].splitlines()
    assert choices[2].split()[-2:] == ["4.0", "0.5"]


def test_random_teachers_are_probed_beside_their_students(tmp_path: Path) -> None:
    ds = xr.Dataset({"probe_test_acc": (("noise", "seed"), [[0.6, 0.62]]),
                     "teacher_probe_test_acc": (("noise", "seed"), [[0.5, 0.52]])},
                    coords={"noise": [0.0], "seed": [0, 1]})
    storage.write_dataset(ds, tmp_path / "summary" / "random_teacher.zarr")
    table = report(tmp_path).split("random teachers")[1]
    lines = table.splitlines()
    assert lines[0].endswith("test accuracy (%)")
    assert lines[3].split()[:2] == ["student", "0.0"] and lines[3].split()[-2] == "61.0"
    assert lines[4].split()[:2] == ["teacher", "0.0"] and lines[4].split()[-2] == "51.0"


def test_a_zoo_reports_its_grids_and_how_each_initial_score_ranks_the_trained_models(tmp_path: Path) -> None:
    dims = ("width", "size", "lr", "seed")
    coords = {"width": [4, 8], "size": [100, 200], "lr": [0.01, 0.1], "seed": [0, 1], "layer": ["conv1"]}
    accuracy = np.arange(16, dtype=float).reshape(2, 2, 2, 2) / 20
    ds = xr.Dataset(
        {"test_acc": ((*dims, "epoch"), accuracy[..., None]),
         "hessian_trace": (dims, np.ones((2, 2, 2, 2))), "hessian_top_eigenvalue": (dims, np.ones((2, 2, 2, 2))),
         "init_hidden_covariance": ((*dims, "layer"), accuracy[..., None]),  # ranks the models exactly
         "init_ntk_condition_number": (dims, -accuracy),  # exactly backwards
         "init_ntk_alignment": (dims, np.zeros((2, 2, 2, 2)) + np.arange(2))},
        coords={**coords, "epoch": [5]})
    storage.write_dataset(ds, tmp_path / "summary" / "zoo.zarr")
    text = report(tmp_path)
    grid = text.split("zoo: final test accuracy (%), mean over 2 seeds")[1].splitlines()
    assert grid[3].split() == ["4", "100", "2.5", "12.5"]  # seeds 0 and 1 of (4, 100, lr 0.01): 0 and 5 %
    table = text.split("against final test accuracy, over all 16 models")[1].splitlines()
    rows = {line.rsplit(None, 3)[0].strip(): [float(v) for v in line.split()[-3:]] for line in table[3:6]}
    assert rows["hidden covariance, conv1"] == [1.0, 1.0, 1.0]  # over all models, and within every cell
    assert rows["NTK condition number"] == [-1.0, -1.0, -1.0]
    # the class-manifold dimension of the models measured, beside their accuracy
    mdims = ("width", "size", "lr", "seed", "class_label")
    dimension = np.stack([30 + 2 * accuracy[:, :, 1:], 30 + 2 * accuracy[:, :, 1:]], axis=-1)  # lr 0.1, 2 classes
    manifold = xr.Dataset({"class_manifold_dimension": (mdims, dimension),
                           "success_rate": ((*mdims, "subspace_dim"), np.ones((*dimension.shape, 2))),
                           "input_dim": (dims, np.full(dimension.shape[:-1], 40))},
                          coords={**{k: coords[k] for k in dims}, "lr": [0.1], "class_label": [0, 1],
                                  "subspace_dim": [1, 2]},
                          attrs={"manifold": {"threshold": 0.9, "trials": 8}})
    storage.write_dataset(manifold, tmp_path / "summary" / "manifold.zarr")
    text = report(tmp_path)
    head, grid = text.split("zoo: class-manifold dimension (")[1].split("\n", 1)
    assert head.startswith("input dimension 40 minus the smallest subspace dimension, of [1, 2], reaching the class "
                           "at probability 0.9 in half of 8 trials")
    lines = grid.splitlines()
    assert lines[3].split() == ["4", "100", "30.2", "12.5"]  # 30 + 2 x the mean of 0.10 and 0.15; 10 and 15 %
    ranks = text.split("zoo: rank correlation of the class-manifold dimension")[1].splitlines()
    assert ranks[2].split()[-2:] == ["1.000", "1.000"]  # with accuracy: the same order
    # with size: each width and lr has 2 sizes x 2 seeds, in order; the tied sizes cap tau-b and rho
    assert ranks[3].split()[-2:] == ["0.816", "0.894"]
