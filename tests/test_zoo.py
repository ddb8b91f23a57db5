"""Tests for the model zoo stage: its runs cover the grid, each spec sets the width, the
training-set size and the learning rate, one pack trains every temperature and seed of a
cell, a run trains on the first N examples, and its Hessian is measured after training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workflow.config import ConfigError, load_config
from workflow.stages import TrainingSetup
from workflow.stages.zoo import Zoo
from workflow.study import Study
from workflow.train import TrainConfig

ZOO = {"widths": [4, 8], "sizes": [100, 200], "lrs": [0.01, 0.1, 0.3], "seeds": [0, 1]}


@pytest.fixture
def study(read_config) -> Study:
    config = read_config("zoo")
    config["zoo"] = {**config["zoo"], **ZOO}
    return Study(config)


def test_the_zoo_covers_its_grid_with_readable_run_ids(study: Study) -> None:
    runs = [r for r in study.training_runs() if r.startswith("zoo/")]
    assert len(runs) == 2 * 2 * 3 * 2 and len(set(runs)) == len(runs)
    assert "zoo/w8/n200/lr0.3/s1" in runs
    assert Study.parse("zoo/w8/n200/lr0.3/s1") == {"stage": "zoo", "width": 8, "size": 200, "lr": 0.3, "seed": 1}


def test_a_zoo_spec_sets_the_width_size_and_learning_rate(study: Study) -> None:
    spec = study.spec("zoo/w8/n200/lr0.3/s1")
    assert spec["model"] == {**study.config["model"], "channels": 8}
    assert spec["train"]["lr"] == 0.3 and spec["size"] == 200
    assert study.parent("zoo/w8/n200/lr0.3/s1") is None


def test_one_pack_trains_every_temperature_and_seed_of_a_cell(study: Study) -> None:
    cell = {study.pack_of(f"zoo/w4/n100/lr{lr}/s{s}").id for lr in (0.01, 0.1, 0.3) for s in (0, 1)}
    assert len(cell) == 1
    assert study.pack_of("zoo/w4/n100/lr0.1/s0").id != study.pack_of("zoo/w8/n100/lr0.1/s0").id
    assert study.pack_of("zoo/w4/n100/lr0.1/s0").id != study.pack_of("zoo/w4/n200/lr0.1/s0").id


def test_the_summary_has_the_zoo_axes_and_the_seed(study: Study) -> None:
    coords = [c for c, _ in study.summaries()["zoo"]]
    assert {tuple(sorted(c)) for c in coords} == {("lr", "seed", "size", "width")}
    assert len(coords) == 24


def test_every_two_seeds_of_a_cell_are_compared_by_barrier_and_similarity(study: Study) -> None:
    pairs = study.connectivity_pairs()
    zoo_pairs = {path: pair for path, pair in pairs.items() if "/seed_pairs/" in path}
    assert len(zoo_pairs) == 12  # 12 cells, one pair of their 2 seeds
    assert ("zoo/w4/n100/lr0.1/s0", "zoo/w4/n100/lr0.1/s1") in zoo_pairs.values()
    similarity = {path: pair for path, pair in study.similarity_pairs().items() if "/seed_pairs/" in path}
    assert set(similarity.values()) == set(zoo_pairs.values())
    coords = [c for c, _ in study.summaries()["connectivity_seed_pairs"]]
    assert {"width": 4, "size": 100, "lr": 0.1, "seed": 0, "other_seed": 1} in coords
    assert study.summaries()["zoo"] and study.summary_attrs("zoo") == {"phases": study.config["zoo"]["phases"]}


def test_four_seeds_make_six_pairs_a_cell(read_config) -> None:
    config = read_config("zoo")
    config["zoo"] = {**config["zoo"], "widths": [4], "sizes": [100], "lrs": [0.1], "seeds": [0, 1, 2, 3]}
    pairs = [pair for _, pair in Study(config).summaries()["connectivity_seed_pairs"]]
    assert len(pairs) == 6


def test_the_manifold_is_measured_on_the_models_it_selects_in_their_packs_own_jobs(study: Study) -> None:
    study.config["analyze"]["manifold"].update(widths=[8], seeds=[1])  # lrs [0.1] from the study
    runs = study.manifold_runs()
    assert runs == ["zoo/w8/n100/lr0.1/s1", "zoo/w8/n200/lr0.1/s1"]
    batches = [b for b in study.analysis_batches() if b.job == "manifold"]
    assert [[t.runs for t in b.tasks] for b in batches] == [[(runs[0],)], [(runs[1],)]]
    assert {b.pack for b in batches} == {study.pack_of(run).id for run in runs}
    entries = study.summaries()["manifold"]
    assert entries[0] == ({"width": 8, "size": 100, "lr": 0.1, "seed": 1}, study.manifold_path(runs[0]))
    # which models are measured decides which stores exist, not what is in one
    settings = study.analysis_settings("manifold")
    assert not {"widths", "sizes", "lrs", "seeds"} & set(settings) and settings["threshold"] == 0.9
    assert study.summary_attrs("manifold") == {"manifold": settings}
    row = next(r for r in study.run_index() if r["run"] == runs[0])
    assert study.manifold_path(runs[0]).removeprefix(study.root + "/") in row["other_stores"].split(";")


def test_a_manifold_selection_outside_the_zoo_is_refused(read_config) -> None:
    config = read_config("zoo")
    config["analyze"]["manifold"] = {"lrs": [0.1, 0.5], "seeds": [7]}
    with pytest.raises(ConfigError) as error:
        load_config(copy.deepcopy(config))
    assert "'analyze.manifold.lrs' has [0.5], which 'zoo.lrs' lacks" in str(error.value)
    assert "'analyze.manifold.seeds' has [7], which 'zoo.seeds' lacks; allowed: [0, 1, 2, 3]" in str(error.value)
    config = read_config("default")
    config["analyze"]["manifold"] = {}
    with pytest.raises(ConfigError, match="'analyze.manifold' needs a 'zoo' section"):
        load_config(copy.deepcopy(config))


def test_manifold_dimensions_beyond_the_input_are_refused_before_any_job(read_config) -> None:
    from workflow.datasets import input_size

    config = read_config("zoo")  # MNIST-1D: 40 numbers an example
    config["analyze"]["manifold"] = {"dims": [8, 40, 41, 64]}
    with pytest.raises(ConfigError, match=r"'analyze.manifold.dims' has \[41, 64\], more than the 40 numbers of "
                                          r"an input of 'mnist1d'.*allowed: 1 to 40"):
        load_config(copy.deepcopy(config))
    config["analyze"]["manifold"] = {"dims": [8, 40]}
    load_config(copy.deepcopy(config))
    # Each dataset's size, as the config tells it, is that of the examples it makes.
    assert input_size({"name": "mnist1d", "args": {"final_seq_length": 30}}) == 30
    assert input_size({"name": "synthetic", "args": {"shape": [3, 8, 8]}}) == 192
    assert input_size({"name": "digits", "args": {}}) == 64
    assert input_size({"name": "cifar10", "args": {}}) == 3 * 32 * 32
    assert input_size({"name": "image_folder", "args": {"root": "x", "size": [4, 5], "grayscale": True}}) == 20
    assert input_size({"name": "image_folder", "args": {"root": "x"}}) is None  # only its images tell


def test_sizes_beyond_the_training_set_are_refused(read_config) -> None:
    config = read_config("zoo")
    config["zoo"]["sizes"] = [250, 5000]
    with pytest.raises(ConfigError, match=r"'zoo.sizes' = 5000 exceeds the 3500 training examples"):
        load_config(copy.deepcopy(config))


def test_aligning_needs_a_model_of_chained_blocks_and_the_aligned_path_needs_aligning(read_config) -> None:
    config = read_config("zoo")
    config["analyze"]["connectivity"]["align"] = False
    with pytest.raises(ConfigError, match=r"'zoo.phases.path' = 'aligned' needs 'analyze.connectivity.align: true'"):
        load_config(copy.deepcopy(config))
    config = read_config("zoo")
    config["model"] = {"name": "resnet20", "width": 4, "depth": 8, "channels_in": 1}
    with pytest.raises(ConfigError, match=r"'analyze.connectivity.align' needs a model whose units can be aligned, "
                                          r"not 'resnet20'; allowed models: cnn1d, mlp"):
        load_config(copy.deepcopy(config))


def test_a_zoo_run_trains_on_the_first_examples_scores_its_initialisation_and_measures_its_hessian(task) -> None:
    from workflow.analysis.hessian import hessian_analysis
    from workflow.analysis.ntk import ntk_analysis
    from workflow.analysis.training_free import layer_scores
    from workflow.models import seeded_model

    stage = Zoo()
    spec = {"size": 120, "hessian": {"examples": 50, "probes": 3, "batch_size": 50}, "init_scores": {"examples": 32}}
    model = seeded_model({"name": "cnn1d", "channels": 4}, task.in_length, task.num_classes, 0)
    setup = TrainingSetup(model, task, TrainConfig(epochs=1, batch_size=40, lr=0.01), 0, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage.prepare(spec, setup, {})
    # the training-free scores read the initialisation on the first examples, and change nothing
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    hidden = setup.metrics["init_hidden_covariance"]
    assert hidden["layer"].values.tolist() == ["conv1", "conv2", "conv3"]
    assert float(hidden.sel(layer="conv2")) == pytest.approx(layer_scores(model, task.x_train[:32], ["conv2"])["conv2"])
    ntk = ntk_analysis(model, task.x_train[:32], task.y_train[:32], batch_size=32)
    assert float(setup.metrics["init_ntk_condition_number"]) == pytest.approx(float(ntk["condition_number"]))
    assert float(setup.metrics["init_ntk_alignment"]) == pytest.approx(float(ntk["alignment_centered"]))
    assert torch.equal(setup.data.x_train, task.x_train[:120])
    np.testing.assert_array_equal(setup.data.rows.numpy(), np.arange(120))
    stage.finish(spec, setup)
    found = hessian_analysis(model, task.x_train[:50], task.y_train[:50], k=1, num_probes=3, seed=0, batch_size=50)
    assert float(setup.metrics["hessian_trace"]) == pytest.approx(float(found["trace"]))
    assert float(setup.metrics["hessian_top_eigenvalue"]) == pytest.approx(float(found["eigenvalues"][0]))


def test_the_per_model_table_holds_every_metric_of_every_model(tmp_path) -> None:
    import pandas as pd
    import xarray as xr

    from workflow import storage
    from workflow.jobs import write_zoo_models

    dims, cells = ("width", "size", "lr", "seed"), (2, 1, 1, 3)
    coords = {"width": [4, 8], "size": [100], "lr": [0.1], "seed": [0, 1, 2]}
    acc = np.arange(6, dtype=float).reshape(cells) / 10
    zoo = xr.Dataset({"test_acc": ((*dims, "epoch"), np.stack([acc / 2, acc], -1)),
                      "val_acc": ((*dims, "epoch"), np.stack([acc, acc], -1)),
                      "hessian_trace": (dims, acc + 1), "hessian_top_eigenvalue": (dims, acc + 2),
                      "init_hidden_covariance": ((*dims, "layer"), np.stack([-acc, -2 * acc], -1))},
                     coords={**coords, "epoch": [0, 1], "layer": ["conv1", "conv2"]})
    # pairs (0, 1), (0, 2), (1, 2) of each cell; seed 0's mean barrier is that of its two pairs
    barrier = np.full((2, 1, 1, 2, 2), np.nan)
    barrier[..., 0, 0], barrier[..., 0, 1], barrier[..., 1, 1] = 0.1, 0.3, 0.5
    pairs = xr.Dataset({"test_error_barrier": ((*dims, "other_seed"), barrier),
                        "aligned_test_error_barrier": ((*dims, "other_seed"), barrier / 10)},
                       coords={**coords, "seed": [0, 1], "other_seed": [1, 2]})
    manifold = xr.Dataset({"class_manifold_dimension": ((*dims, "class_label"), [[[[[30.0, 32.0]]]]])},
                          coords={"width": [8], "size": [100], "lr": [0.1], "seed": [2], "class_label": [0, 1]})
    paths = {}
    for name, ds in {"zoo": zoo, "connectivity_seed_pairs": pairs, "manifold": manifold}.items():
        paths[name] = str(storage.write_dataset(ds, tmp_path / f"{name}.zarr"))
    write_zoo_models(paths, zarr=tmp_path / "models.zarr", csv=tmp_path / "models.csv")
    models = storage.open_dataset(tmp_path / "models.zarr")
    assert dict(models["test_acc"].sizes) == dict(zip(dims, cells))
    np.testing.assert_allclose(models["test_acc"].values, acc)  # final epoch
    np.testing.assert_allclose(models["barrier"].sel(width=4).values.ravel(), [0.2, 0.3, 0.4])  # (0.1+0.3)/2, ...
    np.testing.assert_allclose(models["aligned_barrier"].sel(width=4).values.ravel(), [0.02, 0.03, 0.04])
    dimension = models["class_manifold_dimension"]
    assert float(dimension.sel(width=8, seed=2).squeeze()) == 31.0 and int(dimension.notnull().sum()) == 1
    assert models["barrier"].attrs["units"] == "fraction (0 to 1)"
    table = pd.read_csv(tmp_path / "models.csv")
    assert len(table) == 6 and table.loc[0, "model_path"] == "zoo/w4/n100/lr0.1/s0/model.pt"
    assert {"init_hidden_covariance_conv1", "init_hidden_covariance_conv2", "val_acc", "hessian_trace"} <= set(table)
    assert "cka" not in table  # no similarity summary here


def test_the_collect_job_writes_the_per_model_table_with_a_zoo(study: Study, read_config) -> None:
    described = study.summaries_description()
    assert described["zoo_models"]["out"] == study.zoo_models_paths()
    assert set(described["zoo_models"]["summaries"]) == {"zoo", "connectivity_seed_pairs", "similarity_seed_pairs",
                                                         "manifold"}
    assert "zoo_models" not in Study(read_config("default")).summaries_description()
