"""Tests for the stage entry points, run in-process on the tiny study and the tiny task.

A module-wide :class:`Pipeline` trains each run of the tiny study at most once (its
parent, scores or teacher first), as the workflow would; tests then read its files.
Both tasks of the study are the tiny task file (240 train, 60 test examples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from workflow import jobs, storage
from workflow.analysis import stages as analysis
from workflow.finetune import FINETUNE
from workflow.models import build_model, load_model, seeded_model
from workflow.prune_data import random_scores
from workflow.prune_network import apply_masks
from workflow.study import Study
from workflow.runtime import evaluate, seed_everything

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N_TRAIN = 240
REWIND_STEPS = (0, 1)  # the tiny study's network pruning, here with two levels and two rewind steps


class Pipeline:
    """The tiny study's runs, trained on demand with their dependencies first."""

    def __init__(self, config: dict[str, Any], task_path: Path) -> None:
        self.study = Study(config)
        self.task_path = task_path

    def folder(self, run: str) -> Path:
        return Path(self.study.path(run))

    def scores(self, score: str) -> Path:
        out = Path(self.study.path(f"prune_data/scores/{score}", "scores.zarr"))
        if not out.exists():
            spec = self.study.score_spec(score)
            model = self.run(spec["embedding"]) / "model.pt" if score == "prototypes" else None
            jobs.compute_scores(spec, out, data_path=self.task_path, model_path=model,
                                  device="cpu", progress=False)
        return out

    def run(self, run: str) -> Path:
        out = self.folder(run)
        if (out / "model.pt").exists():
            return out
        spec = self.study.spec(run)
        inputs: dict[str, Any] = {}
        if spec["parent"]:
            inputs["parent"] = self.run(spec["parent"]) / "model.pt"
        if "score" in spec and spec["score"]["score"] != "rs2":
            inputs["scores"] = self.scores(spec["score"]["score"])
        if "teacher_run" in spec:
            inputs["teacher"] = self.run(spec["teacher_run"]) / "model.pt"
        jobs.train_run(spec, out, data_path=self.task_path, device="cpu", progress=False, **inputs)
        return out


@pytest.fixture(scope="module")
def pipeline(read_config, task_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    config = read_config("tiny")
    config["results"] = str(tmp_path_factory.mktemp("results"))
    config["prune_network"].update(levels=2, rewind_steps=list(REWIND_STEPS))
    config["prune_network"]["methods"] += ["erk"]
    config["finetune"]["methods"] += ["bn_only", "lora", "eva"]
    config["finetune"]["lora"] = {"rank": 2, "alpha": 4, "eva_batches": 2}
    config["finetune"]["wiseft"] = {"alphas": [0.0, 0.5, 1.0]}
    config["finetune"]["ensemble"] = {"members": 3, "cycle": {"epochs": 1}}
    return Pipeline(config, task_path)


def _metrics(folder: Path) -> xr.Dataset:
    return storage.open_dataset(folder / "metrics.zarr")


def _saved(folder: Path) -> dict[str, Any]:
    return storage.load_torch(folder / "model.pt")


# --- training runs ----------------------------------------------------------------------------


def test_pretrain_writes_metrics_with_provenance(pipeline: Pipeline) -> None:
    metrics = _metrics(pipeline.run("pretrain/mnist1d/s0"))
    assert metrics["epoch"].values.tolist() == [0, 1, 2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(metrics.data_vars)
    assert json.loads(metrics.attrs["config"]) == pipeline.study.spec("pretrain/mnist1d/s0")
    assert metrics.attrs["seed"] == 0 and metrics.attrs["device"] == "cpu"
    assert metrics.attrs["steps"] == 2 * 5  # 2 epochs of 240 examples in batches of 50
    assert "parent" not in metrics.attrs


def test_load_model_rebuilds_the_trained_model(pipeline: Pipeline, task) -> None:
    folder = pipeline.run("pretrain/mnist1d/s0")
    model, saved = jobs.load_model(folder / "model.pt")
    assert not model.training
    assert saved["spec"] == pipeline.study.spec("pretrain/mnist1d/s0")
    loss, acc = evaluate(model, task.x_test, task.y_test)
    metrics = _metrics(folder)
    assert loss == pytest.approx(float(metrics.test_loss[-1]), rel=1e-6)
    assert acc == float(metrics.test_acc[-1])


def test_a_rerun_of_a_run_gives_the_same_model_and_metrics(pipeline: Pipeline, tmp_path: Path) -> None:
    first = pipeline.run("pretrain/mnist1d/s0")
    jobs.train_run(pipeline.study.spec("pretrain/mnist1d/s0"), tmp_path, data_path=pipeline.task_path,
                     device="cpu", progress=False)
    a, b = _saved(first)["state_dict"], _saved(tmp_path)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    xr.testing.assert_equal(_metrics(first), _metrics(tmp_path))


def test_finetune_full_starts_from_the_pretrained_body_with_a_fresh_head(pipeline: Pipeline, task) -> None:
    folder = pipeline.run("finetune/mnist1d/full/s0")
    spec = pipeline.study.spec("finetune/mnist1d/full/s0")
    assert _metrics(folder).attrs["parent"] == "pretrain/mnist1d/s0"
    seed_everything(0)
    start = build_model(dict(spec["model"]), 40, 10)
    FINETUNE["full"](start, _saved(pipeline.run("pretrain/mnist1d/s0"))["state_dict"])
    loss, _ = evaluate(start, task.x_test, task.y_test)
    assert float(_metrics(folder).test_loss[0]) == pytest.approx(loss, rel=1e-6)


def test_linear_probe_keeps_the_pretrained_body_exactly(pipeline: Pipeline) -> None:
    parent = _saved(pipeline.run("pretrain/mnist1d/s0"))["state_dict"]
    probe = _saved(pipeline.run("finetune/mnist1d/linear_probe/s0"))["state_dict"]
    for name, value in probe.items():
        if name.startswith("head."):
            assert not torch.equal(value, parent[name])
        else:
            assert torch.equal(value, parent[name]), f"{name} changed (BatchNorm statistics included)"


@pytest.mark.parametrize("method", ["lora", "eva"])
def test_lora_runs_save_a_plain_model_with_the_update_merged(pipeline: Pipeline, task, method: str) -> None:
    folder = pipeline.run(f"finetune/mnist1d/{method}/s0")
    saved = _saved(folder)
    parent = _saved(pipeline.run("pretrain/mnist1d/s0"))["state_dict"]
    assert set(saved["state_dict"]) == set(parent)
    changed = [k for k in parent if not k.startswith("head.") and not torch.equal(saved["state_dict"][k], parent[k])]
    # the merged updates changed the conv weights; BatchNorm stayed frozen, statistics included
    assert changed and all(k.startswith("conv") and k.endswith(".0.weight") for k in changed)
    model = build_model(dict(saved["spec"]["model"]), 40, 10)
    model.load_state_dict(saved["state_dict"])
    loss, acc = evaluate(model, task.x_test, task.y_test)
    assert float(_metrics(folder).test_loss[-1]) == pytest.approx(loss, rel=1e-5)


def test_trainable_parameters_are_counted_per_method(pipeline: Pipeline) -> None:
    count = {m: int(_metrics(pipeline.run(f"finetune/mnist1d/{m}/s0"))["trainable_params"])
             for m in ("full", "linear_probe", "bn_only", "lora", "eva")}
    model = build_model(dict(pipeline.study.config["model"]), 40, 10)
    assert count["full"] == sum(p.numel() for p in model.parameters())
    assert count["linear_probe"] == sum(p.numel() for p in model.head.parameters())
    assert count["bn_only"] < min(count["lora"], count["eva"]) <= max(count["lora"], count["eva"]) < count["full"]
    assert count["linear_probe"] < count["lora"]


def test_wiseft_reproduces_the_linear_probe_and_the_fine_tuned_model_at_its_ends(pipeline: Pipeline, tmp_path: Path) -> None:
    pairs = pipeline.study.wiseft_pairs()
    assert {ft for _, ft in pairs.values()} == {f"finetune/{src}/{m}/s0" for src in ("mnist1d", "synthetic") for m in ("full", "bn_only", "lora", "eva")}
    start, end = pairs[pipeline.study.wiseft_path("mnist1d", "lora", 0)]
    jobs.wiseft(pipeline.run(start) / "model.pt", pipeline.run(end) / "model.pt", [0.0, 0.5, 1.0],
                  tmp_path / "wiseft.zarr", data_path=pipeline.task_path, device="cpu")
    ds = storage.open_dataset(tmp_path / "wiseft.zarr")
    for alpha, run in ((0.0, start), (1.0, end)):
        final = _metrics(pipeline.folder(run)).isel(epoch=-1)
        assert float(ds.test_acc.sel(alpha=alpha)) == float(final.test_acc)
        assert float(ds.test_loss.sel(alpha=alpha)) == pytest.approx(float(final.test_loss), rel=1e-6)


def test_wiseft_measures_the_validation_set_and_the_report_chooses_alpha_on_it(
    pipeline: Pipeline, task_spec: dict, tmp_path: Path
) -> None:
    from workflow.datasets import make_data
    from workflow.report import report

    start, end = pipeline.study.wiseft_pairs()[pipeline.study.wiseft_path("mnist1d", "full", 0)]
    with_val = make_data({**task_spec, "val_size": 60}, tmp_path / "val.npz")
    out = tmp_path / "wiseft.zarr"
    jobs.wiseft(pipeline.run(start) / "model.pt", pipeline.run(end) / "model.pt", [0.0, 0.5, 1.0], out,
                data_path=with_val, device="cpu")
    ds = storage.open_dataset(out)
    assert ds["val_acc"].dims == ("alpha",) and ds["val_loss"].dims == ("alpha",)
    summary = ds.expand_dims(model=["finetune/mnist1d/full"], seed=[0])
    storage.write_dataset(summary, tmp_path / "study" / "summary" / "wiseft.zarr")
    text = report(tmp_path / "study")
    chosen = float(ds["alpha"][int(ds["val_acc"].argmax("alpha"))])
    assert f"alpha chosen: finetune/mnist1d/full: {chosen:g}" in text
    table = text.split("WiSE-FT at the alpha chosen on validation")[1].split("\n\n")[0]
    assert f"{100 * float(ds['test_acc'].sel(alpha=chosen)):.1f}" in table


def test_ensemble_members_start_from_the_pretrained_or_the_fine_tuned_model(pipeline: Pipeline, task) -> None:
    full = _saved(pipeline.run("finetune/mnist1d/full/s0"))
    pretrained = _saved(pipeline.run("pretrain/mnist1d/s0"))["state_dict"]
    seeds = pipeline.run("ensemble/mnist1d/seeds/s0/m1")
    star = pipeline.run("ensemble/mnist1d/starsse/s0/m1")
    assert _metrics(seeds).attrs["parent"] == "pretrain/mnist1d/s0"
    assert _metrics(star).attrs["parent"] == "finetune/mnist1d/full/s0"
    # a StarSSE cycle starts at the fine-tuned model, head included: its epoch 0 is full's last epoch
    assert float(_metrics(star).test_acc[0]) == float(_metrics(pipeline.folder("finetune/mnist1d/full/s0")).test_acc[-1])
    assert _metrics(star).sizes["epoch"] == 2  # one epoch: the cycle's own setting
    # snapshot cycles in sequence: each starts where the one before ended
    first, second = pipeline.run("ensemble/mnist1d/sse/s0/m1"), pipeline.run("ensemble/mnist1d/sse/s0/m2")
    assert _metrics(first).attrs["parent"] == "finetune/mnist1d/full/s0"
    assert _metrics(second).attrs["parent"] == "ensemble/mnist1d/sse/s0/m1"
    assert float(_metrics(second).test_acc[0]) == float(_metrics(first).test_acc[-1])
    # another fine-tuning run: the pretrained body, a head and data order of its own
    spec = pipeline.study.spec("ensemble/mnist1d/seeds/s0/m1")
    start = seeded_model(spec["model"], 40, 10, spec["train_seed"])
    FINETUNE["full"](start, pretrained)
    loss, _ = evaluate(start, task.x_test, task.y_test)
    assert float(_metrics(seeds).test_loss[0]) == pytest.approx(loss, rel=1e-6)
    assert not torch.equal(_saved(seeds)["state_dict"]["head.weight"], full["state_dict"]["head.weight"])


def test_an_ensemble_store_has_every_member_the_ensemble_and_the_soup(pipeline: Pipeline, tmp_path: Path) -> None:
    members = pipeline.study.ensembles()[pipeline.study.ensemble_path("mnist1d", "seeds", 0)]
    assert members == ["finetune/mnist1d/full/s0", "ensemble/mnist1d/seeds/s0/m1", "ensemble/mnist1d/seeds/s0/m2"]
    paths = [pipeline.run(m) / "model.pt" for m in members]
    jobs.ensemble(paths, tmp_path / "ensemble.zarr", data_path=pipeline.task_path, device="cpu")
    ds = storage.open_dataset(tmp_path / "ensemble.zarr")
    finals = [float(_metrics(pipeline.folder(m)).test_acc[-1]) for m in members]
    assert ds["member_acc"].values.tolist() == finals
    assert 0 <= float(ds["ensemble_acc"]) <= 1 and 0 <= float(ds["soup_acc"]) <= 1
    # an ensemble of one model is that model
    jobs.ensemble(paths[:1], tmp_path / "one.zarr", data_path=pipeline.task_path, device="cpu")
    one = storage.open_dataset(tmp_path / "one.zarr")
    assert float(one["ensemble_acc"]) == float(one["soup_acc"]) == finals[0]


def test_a_greedy_soup_is_built_on_the_validation_set_and_reported_on_the_test_set(
    pipeline: Pipeline, task_spec: dict, tmp_path: Path
) -> None:
    from workflow.averaging import uniform_soup
    from workflow.data import load_data
    from workflow.datasets import make_data
    from workflow.models import load_model
    from workflow.runtime import evaluate

    members = pipeline.study.ensembles()[pipeline.study.ensemble_path("mnist1d", "seeds", 0)]
    paths = [pipeline.run(m) / "model.pt" for m in members]
    with_val = make_data({**task_spec, "val_size": 60}, tmp_path / "val.npz")
    jobs.ensemble(paths, tmp_path / "ensemble.zarr", data_path=with_val, device="cpu")
    ds = storage.open_dataset(tmp_path / "ensemble.zarr")
    assert float(ds["greedy_soup_val_acc"]) >= float(ds["member_val_acc"].max())
    assert bool(ds["greedy_soup_member"][int(ds["member_val_acc"].argmax(*ds["member_val_acc"].dims))])  # it starts at the best member
    data = load_data(with_val)
    loaded = [load_model(p) for p in paths]
    kept = [saved["state_dict"] for i, (_, saved) in enumerate(loaded) if bool(ds["greedy_soup_member"][i])]
    model = loaded[0][0]
    model.load_state_dict(uniform_soup(kept))
    with torch.no_grad():
        assert float(ds["greedy_soup_acc"]) == evaluate(model, data.x_test, data.y_test)[1]
    # without a validation set there is no greedy soup: nothing to choose it on
    jobs.ensemble(paths, tmp_path / "plain.zarr", data_path=pipeline.task_path, device="cpu")
    assert "greedy_soup_acc" not in storage.open_dataset(tmp_path / "plain.zarr")


# --- data pruning -----------------------------------------------------------------------------


def test_el2n_scores_are_over_init_and_sample(pipeline: Pipeline, task) -> None:
    scores = storage.open_dataset(pipeline.scores("el2n"))
    assert scores["score"].dims == ("init", "sample")
    assert scores["init"].values.tolist() == [0, 1]  # el2n.inits: 2
    assert scores["sample"].values.tolist() == list(range(N_TRAIN))
    values = scores["score"].values
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= np.sqrt(2)).all()
    assert not np.array_equal(values[0], values[1])  # independent initialisations
    np.testing.assert_array_equal(scores["label"].values, task.y_train.numpy())


def test_random_scores_are_one_draw_per_training_seed(pipeline: Pipeline) -> None:
    scores = storage.open_dataset(pipeline.scores("random"))
    assert scores["score"].dims == ("init", "sample")
    assert scores["init"].values.tolist() == [0]  # prune_data.seeds: [0]
    np.testing.assert_array_equal(scores["score"].sel(init=0).values, random_scores(N_TRAIN, 0))


def test_an_unknown_score_is_refused(task_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown score 'nonsense'; allowed: el2n, forgetting, grand"):
        jobs.compute_scores({"score": "nonsense"}, tmp_path / "s.zarr", data_path=task_path, device="cpu")


def test_grand_scores_are_per_example_gradient_norms_at_initialisation(pipeline: Pipeline) -> None:
    scores = storage.open_dataset(pipeline.scores("grand"))
    assert scores["score"].dims == ("init", "sample")
    assert scores["init"].values.tolist() == [0, 1]  # grand.inits: 2
    values = scores["score"].values
    assert np.isfinite(values).all() and (values > 0).all()
    assert not np.array_equal(values[0], values[1])
    assert "at epoch 0" in scores["score"].attrs["description"]


def test_forgetting_scores_count_events_and_mark_never_learned_as_infinite(pipeline: Pipeline) -> None:
    scores = storage.open_dataset(pipeline.scores("forgetting"))
    assert scores["score"].dims == ("init", "sample")
    values = scores["score"].values
    finite = values[np.isfinite(values)]
    # 2 epochs: each example is presented twice, so it is forgotten at most once
    assert set(np.unique(finite)) <= {0.0, 1.0}
    assert np.isinf(values).any() or len(finite) == values.size


def test_prototype_scores_are_distances_in_the_embedding_of_the_named_run(pipeline: Pipeline) -> None:
    scores = storage.open_dataset(pipeline.scores("prototypes"))
    assert scores["score"].dims == ("init", "sample")
    values = scores["score"].values
    # distances between unit vectors lie in [0, 2]
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 2).all()
    assert "pretrain/mnist1d/s0" in scores["score"].attrs["description"]


def test_rs2_trains_on_a_fresh_subset_of_round_f_n_examples_each_epoch(pipeline: Pipeline) -> None:
    folder = pipeline.run("prune_data/rs2/f0.5/s0")
    saved, metrics = _saved(folder), _metrics(folder)
    assert saved["kept"] is None  # no fixed subset
    assert int(metrics["kept_size"]) == round(0.5 * N_TRAIN)
    assert metrics.attrs["steps"] == 2 * -(-round(0.5 * N_TRAIN) // 50)  # the budget of a static subset


@pytest.mark.parametrize("method", ["el2n-hard", "random"])
@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_prune_data_trains_on_exactly_round_f_n_examples(
    pipeline: Pipeline, tmp_path: Path, method: str, fraction: float
) -> None:
    spec = {**pipeline.study.spec(f"prune_data/{method}/f0.5/s0"), "fraction": fraction}
    scores_path = pipeline.scores(spec["score"]["score"])
    jobs.train_run(spec, tmp_path, data_path=pipeline.task_path, scores=scores_path,
                     device="cpu", progress=False)
    kept = _saved(tmp_path)["kept"].numpy()
    assert len(kept) == round(fraction * N_TRAIN)
    assert len(np.unique(kept)) == len(kept) and kept.min() >= 0 and kept.max() < N_TRAIN
    assert int(_metrics(tmp_path)["kept_size"]) == len(kept)
    assert _metrics(tmp_path).attrs["steps"] == 2 * -(-len(kept) // 50)  # trained on the subset only
    if method == "el2n-hard":  # the hardest examples by the mean score over initialisations
        mean = storage.open_dataset(scores_path)["score"].mean("init").values
        dropped = np.setdiff1d(np.arange(N_TRAIN), kept)
        assert mean[kept].min() >= mean[dropped].max()


def test_an_offset_run_trains_on_the_window_after_the_hardest_examples(pipeline: Pipeline, tmp_path: Path) -> None:
    from workflow.prune_data import select

    spec = {**pipeline.study.spec("prune_data/el2n-hard/f0.5/s0"), "method": "el2n-hard-o0.25", "offset": 0.25,
            "fraction": 0.25}
    scores_path = pipeline.scores("el2n")
    jobs.train_run(spec, tmp_path, data_path=pipeline.task_path, scores=scores_path, device="cpu", progress=False)
    kept = _saved(tmp_path)["kept"].numpy()
    mean = storage.open_dataset(scores_path)["score"].mean("init").values
    np.testing.assert_array_equal(kept, select(mean, 0.25, "hard", offset=0.25))
    skipped = select(mean, 0.25, "hard")  # the hardest quarter, left out
    assert not set(kept) & set(skipped) and mean[kept].max() <= mean[skipped].min()


# --- network pruning --------------------------------------------------------------------------


def _weights(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: saved["state_dict"][name] for name in saved["masks"]}


def _kept(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(m.count_nonzero()) for name, m in masks.items()}


def _start_metrics(model_spec: dict[str, Any], state: dict[str, torch.Tensor], masks, task) -> tuple[float, float]:
    """Test loss and accuracy of the given starting weights, masked: epoch 0 of a run."""
    start = build_model(dict(model_spec), 40, 10)
    start.load_state_dict(state)
    apply_masks(start, masks)
    return evaluate(start, task.x_test, task.y_test)


def test_the_dense_run_keeps_a_snapshot_at_every_rewind_step(pipeline: Pipeline) -> None:
    folder = pipeline.run("prune_network/dense/s0")
    saved = _saved(folder)
    assert float(_metrics(folder)["density"]) == 1.0
    assert saved["masks"] is None
    assert sorted(saved["rewind"]) == list(REWIND_STEPS)
    seed_everything(0)
    init = build_model(dict(saved["spec"]["model"]), 40, 10).state_dict()
    assert all(torch.equal(saved["rewind"][0][k], v) for k, v in init.items())  # step 0: the initialisation
    for step in REWIND_STEPS:
        assert saved["rewind"][step].keys() == saved["state_dict"].keys()
        assert not all(torch.equal(saved["rewind"][step][k], saved["state_dict"][k]) for k in saved["state_dict"])


@pytest.mark.parametrize("level", [1, 2])
def test_imp_prunes_a_fifth_of_the_remaining_weights_per_level_and_keeps_them_zero(pipeline: Pipeline, level: int) -> None:
    folder = pipeline.run(f"prune_network/imp/k1/s0/level{level}")
    saved = _saved(folder)
    previous = _saved(pipeline.run(saved["spec"]["parent"]))
    total = sum(m.numel() for m in saved["masks"].values())
    before = total if previous["masks"] is None else sum(_kept(previous["masks"]).values())
    kept = sum(_kept(saved["masks"]).values())
    assert kept == before - round(0.2 * before)  # exactly, not about
    if previous["masks"] is not None:
        assert all(torch.all(previous["masks"][n] | ~m) for n, m in saved["masks"].items())  # pruned stays pruned
    for name, mask in saved["masks"].items():
        assert torch.all(_weights(saved)[name][~mask] == 0), name
        assert torch.any(_weights(saved)[name][mask] != 0), name
    assert float(_metrics(folder)["density"]) == kept / total


@pytest.mark.parametrize("rewind", REWIND_STEPS)
def test_imp_starts_from_the_masked_weights_of_its_rewind_step(pipeline: Pipeline, task, rewind: int) -> None:
    dense = _saved(pipeline.run("prune_network/dense/s0"))
    for level in (1, 2):
        folder = pipeline.run(f"prune_network/imp/k{rewind}/s0/level{level}")
        saved = _saved(folder)
        assert all(torch.equal(saved["rewind"][rewind][k], v) for k, v in dense["rewind"][rewind].items())
        loss, acc = _start_metrics(saved["spec"]["model"], dense["rewind"][rewind], saved["masks"], task)
        assert float(_metrics(folder).test_loss[0]) == pytest.approx(loss, rel=1e-6)
        assert float(_metrics(folder).test_acc[0]) == acc


def test_reinit_and_scratch_train_the_imp_mask_from_fresh_weights(pipeline: Pipeline, task) -> None:
    imp = _saved(pipeline.run("prune_network/imp/k1/s0/level2"))
    dense = _saved(pipeline.run("prune_network/dense/s0"))
    for method in ("reinit", "scratch"):
        folder = pipeline.run(f"prune_network/{method}/k1/s0/level2")
        saved = _saved(folder)
        assert all(torch.equal(saved["masks"][n], m) for n, m in imp["masks"].items())
        for name, mask in saved["masks"].items():
            assert torch.all(_weights(saved)[name][~mask] == 0), name
        fresh = seeded_model(saved["spec"]["model"], 40, 10, saved["spec"]["init_seed"]).state_dict()
        assert not any(torch.equal(fresh[n], dense["rewind"][0][n]) for n in saved["masks"])
        loss, _ = _start_metrics(saved["spec"]["model"], fresh, saved["masks"], task)
        assert float(_metrics(folder).test_loss[0]) == pytest.approx(loss, rel=1e-6)
    reinit = _metrics(pipeline.folder("prune_network/reinit/k1/s0/level2"))
    scratch = _metrics(pipeline.folder("prune_network/scratch/k1/s0/level2"))
    density = float(scratch["density"])
    # FLOPs-matched: about 1/density times the epochs (exactly, per layer's positions)
    assert reinit.sizes["epoch"] - 1 == 2
    assert 2 < scratch.sizes["epoch"] - 1 <= round(2 / density) + 1


def test_random_masks_keep_the_imp_layer_densities_at_other_places(pipeline: Pipeline, task) -> None:
    imp = _saved(pipeline.run("prune_network/imp/k1/s0/level2"))
    folder = pipeline.run("prune_network/random/k1/s0/level2")
    saved = _saved(folder)
    assert _kept(saved["masks"]) == _kept(imp["masks"])
    assert not all(torch.equal(saved["masks"][n], m) for n, m in imp["masks"].items())
    dense = _saved(pipeline.run("prune_network/dense/s0"))
    loss, _ = _start_metrics(saved["spec"]["model"], dense["rewind"][1], saved["masks"], task)
    assert float(_metrics(folder).test_loss[0]) == pytest.approx(loss, rel=1e-6)


def test_erk_trains_at_erk_layer_densities_with_the_imp_global_density(pipeline: Pipeline, task) -> None:
    from workflow.prune_network import erk_counts

    imp = _saved(pipeline.run("prune_network/imp/k1/s0/level2"))
    folder = pipeline.run("prune_network/erk/k1/s0/level2")
    saved = _saved(folder)
    shapes = {name: tuple(m.shape) for name, m in imp["masks"].items()}
    assert _kept(saved["masks"]) == erk_counts(shapes, sum(_kept(imp["masks"]).values()))
    assert float(_metrics(folder)["density"]) == float(_metrics(pipeline.folder("prune_network/imp/k1/s0/level2"))["density"])
    dense = _saved(pipeline.run("prune_network/dense/s0"))
    loss, _ = _start_metrics(saved["spec"]["model"], dense["rewind"][1], saved["masks"], task)
    assert float(_metrics(folder).test_loss[0]) == pytest.approx(loss, rel=1e-6)


def test_oneshot_prunes_the_trained_dense_model_to_the_imp_weight_count_at_once(pipeline: Pipeline) -> None:
    imp = _saved(pipeline.run("prune_network/imp/k1/s0/level2"))
    dense = _saved(pipeline.run("prune_network/dense/s0"))
    saved = _saved(pipeline.run("prune_network/oneshot/k1/s0/level2"))
    assert sum(_kept(saved["masks"]).values()) == sum(_kept(imp["masks"]).values())
    # the kept weights are the largest of the trained dense model
    magnitudes = torch.cat([dense["state_dict"][n].abs().flatten() for n in saved["masks"]])
    kept = torch.cat([m.flatten() for m in saved["masks"].values()])
    assert magnitudes[kept].min() >= magnitudes[~kept].max()


# --- distillation -----------------------------------------------------------------------------


def test_distill_trains_on_the_prune_data_subset_with_the_teacher(pipeline: Pipeline) -> None:
    run = "distill/trained/el2n-hard/f0.5/T4-a0.5/s0"
    assert pipeline.study.spec(run)["teacher_run"] == "finetune/scratch/s0"
    student = _saved(pipeline.run(run))
    plain = _saved(pipeline.run("prune_data/el2n-hard/f0.5/s0"))
    assert torch.equal(student["kept"], plain["kept"])
    # same seed, same subset, same start: only the teacher's part of the loss differs
    xr.testing.assert_equal(_metrics(pipeline.folder(run)).isel(epoch=0),
                            _metrics(pipeline.folder("prune_data/el2n-hard/f0.5/s0")).isel(epoch=0))
    assert not torch.equal(student["state_dict"]["head.weight"], plain["state_dict"]["head.weight"])


def test_an_untrained_teacher_needs_no_teacher_file_and_teaches_differently(pipeline: Pipeline) -> None:
    untrained = _saved(pipeline.run("distill/untrained/el2n-hard/f0.5/T4-a0.5/s0"))
    trained = _saved(pipeline.run("distill/trained/el2n-hard/f0.5/T4-a0.5/s0"))
    assert torch.equal(untrained["kept"], trained["kept"])
    assert not torch.equal(untrained["state_dict"]["head.weight"], trained["state_dict"]["head.weight"])


# --- analysis ---------------------------------------------------------------------------------


SIMILARITY = {"measures": ["linear_cka", "debiased_cka", "procrustes"], "chunk": 16, "batch": 16,
              "cca_dims": "refuse"}


def test_record_then_compare_a_model_with_itself_gives_identity_on_the_diagonal(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    model = pipeline.run("pretrain/mnist1d/s0") / "model.pt"
    analysis.record(model, pipeline.task_path, tmp_path / "acts.zarr", probe_size=50, device="cpu")
    acts = storage.open_dataset(tmp_path / "acts.zarr")
    assert acts["sample"].values.tolist() == list(range(50))
    assert list(acts.attrs["layers"]) == ["conv1", "conv2", "conv3", "head"]
    assert acts.attrs["seed"] == 0
    analysis.compare(tmp_path / "acts.zarr", tmp_path / "acts.zarr", tmp_path / "sim.zarr",
                     model_a="pretrain/mnist1d/s0", model_b="pretrain/mnist1d/s0", settings=SIMILARITY)
    ds = storage.open_dataset(tmp_path / "sim.zarr")
    assert json.loads(ds.attrs["config"]) == SIMILARITY
    for measure, same in (("linear_cka", 1.0), ("debiased_cka", 1.0), ("procrustes", 0.0)):
        values = ds[measure]
        assert values.dims == ("layer_a", "layer_b") and values.shape == (4, 4)
        np.testing.assert_allclose(np.diag(values.values), same, atol=1e-10)
        np.testing.assert_allclose(values.values, values.values.T, atol=1e-10)


def test_similarity_of_one_model_needs_its_activations_once(pipeline: Pipeline, tmp_path: Path) -> None:
    from workflow.cli import main

    model = pipeline.run("finetune/mnist1d/full/s0") / "model.pt"
    analysis.record(model, pipeline.task_path, tmp_path / "acts.zarr", probe_size=50, device="cpu")
    twice, once = tmp_path / "twice.zarr", tmp_path / "once.zarr"
    analysis.compare(tmp_path / "acts.zarr", tmp_path / "acts.zarr", twice, model_a="m", model_b="m",
                     settings=SIMILARITY)
    # the command the workflow runs for a model against itself: no --b, no --name-b
    assert main(["similarity", "--a", str(tmp_path / "acts.zarr"), "--name-a", "m",
                 "--settings", json.dumps(SIMILARITY), "--out", str(once)]) == 0
    a, b = storage.open_dataset(twice), storage.open_dataset(once)
    assert (b.attrs["model_a"], b.attrs["model_b"]) == ("m", "m")
    for measure in SIMILARITY["measures"]:
        np.testing.assert_allclose(b[measure].values, a[measure].values, rtol=1e-12, atol=1e-12)
        assert b[measure].dims == ("layer_a", "layer_b")
        assert list(b["layer_b"].values) == list(b["layer_a"].values)


def test_compare_refuses_activations_of_different_probe_sets(pipeline: Pipeline, tmp_path: Path) -> None:
    model = pipeline.run("pretrain/mnist1d/s0") / "model.pt"
    analysis.record(model, pipeline.task_path, tmp_path / "a.zarr", probe_size=50, device="cpu")
    analysis.record(model, pipeline.task_path, tmp_path / "b.zarr", probe_size=40, device="cpu")
    with pytest.raises(ValueError, match="different numbers of samples"):
        analysis.compare(tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "sim.zarr", model_a="a", model_b="b",
                         settings=SIMILARITY)
    assert not (tmp_path / "sim.zarr").exists()


def test_spectra_of_a_model_store_ntk_hessian_and_weight_ranks(pipeline: Pipeline, tmp_path: Path) -> None:
    settings = {"probe_size": 50, "ntk_examples": 10, "ntk_method": "jacobian", "hessian_examples": 1000,
                "hessian_k": 3, "hessian_method": "lanczos", "hutchinson_probes": 4}
    analysis.spectra(pipeline.run("finetune/mnist1d/full/s0") / "model.pt", pipeline.task_path, tmp_path / "s.zarr",
                     settings=settings, device="cpu")
    ds = storage.open_dataset(tmp_path / "s.zarr")
    assert ds["ntk_eigenvalues"].dims == ("eig",) and ds.sizes["eig"] == 10
    assert (np.diff(ds["ntk_eigenvalues"].values) <= 0).all()  # descending
    assert ds["hessian_eigenvalues"].dims == ("hessian_eig",) and ds.sizes["hessian_eig"] == 3
    assert ds.attrs["hessian_examples"] == N_TRAIN  # all there are, when fewer than asked
    # weights by their state-dict keys (as network pruning names them); layers as the activation stores do
    assert set(ds["param"].values) == {"conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "head.weight"}
    assert ds["layer"].values.tolist() == ["conv1", "conv2", "conv3", "head"]
    assert (ds["representation_entropy"] >= 1).all()
    assert (ds["representation_entropy"] <= ds["representation_max_rank"]).all()
    assert float(ds["ntk_condition_number"]) >= 1 and np.isfinite(float(ds["hessian_trace"]))


def test_connectivity_of_a_model_with_itself_has_no_barrier(pipeline: Pipeline, tmp_path: Path) -> None:
    model = pipeline.run("finetune/mnist1d/full/s0") / "model.pt"
    analysis.connectivity(model, model, pipeline.task_path, tmp_path / "c.zarr", names=("a", "a"),
                          settings={"alphas": 3, "bn_batches": 1}, device="cpu")
    ds = storage.open_dataset(tmp_path / "c.zarr")
    assert ds["alpha"].values.tolist() == [0.0, 0.5, 1.0]
    assert float(ds["test_error_barrier"]) == 0.0 and bool(ds["stable"])


def test_aligned_connectivity_undoes_a_permutation_of_the_units(pipeline: Pipeline, tmp_path: Path) -> None:
    from workflow.analysis.alignment import permute_units, unit_blocks

    model = pipeline.run("finetune/mnist1d/full/s0") / "model.pt"
    saved = storage.load_torch(model)
    net, _ = load_model(model)
    rng = np.random.default_rng(0)
    perms = {name: rng.permutation(getattr(net, name)[1].num_features) for name in unit_blocks(net)}
    storage.save_torch({**saved, "state_dict": permute_units(net, perms).state_dict()}, tmp_path / "shuffled.pt")
    analysis.connectivity(model, tmp_path / "shuffled.pt", pipeline.task_path, tmp_path / "c.zarr", names=("a", "b"),
                          settings={"alphas": 3, "bn_batches": 1, "align": True}, device="cpu")
    ds = storage.open_dataset(tmp_path / "c.zarr")
    assert float(ds["test_error_barrier"]) > 0.05  # the order of the units alone makes a barrier
    assert float(ds["aligned_test_error_barrier"]) == 0.0
    np.testing.assert_allclose(ds["aligned_test_error"], ds["aligned_test_error"][0])
    assert ds["aligned_unit_correlation"]["layer"].values.tolist() == ["conv1", "conv2", "conv3"]
    assert (ds["aligned_unit_correlation"] > 0.5).all()


def test_manifold_stores_every_class_and_subspace_dimension(pipeline: Pipeline, tmp_path: Path) -> None:
    model = pipeline.run("finetune/mnist1d/full/s0") / "model.pt"
    settings = {"dims": [1, 40], "trials": 2, "steps": 20, "lr": 0.3, "threshold": 0.5, "seed": 0}
    analysis.manifold(model, pipeline.task_path, tmp_path / "m.zarr", settings=settings, device="cpu")
    ds = storage.open_dataset(tmp_path / "m.zarr")
    assert ds["success_rate"].dims == ("class_label", "subspace_dim")
    assert ds["class_label"].values.tolist() == list(range(10)) and ds["subspace_dim"].values.tolist() == [1, 40]
    assert int(ds["input_dim"]) == 40
    # the whole input space holds every class the model ever predicts confidently
    rates, dimension = ds["success_rate"], ds["class_manifold_dimension"]
    reached_at_1 = rates.sel(subspace_dim=1) >= 0.5
    np.testing.assert_array_equal(dimension.where(reached_at_1), xr.full_like(dimension, 39).where(reached_at_1))
    reached_at_40 = ~reached_at_1 & (rates.sel(subspace_dim=40) >= 0.5)
    assert (dimension.where(reached_at_40).fillna(0) == 0).all()
    assert json.loads(ds.attrs["analysis_config"]) == settings


def test_record_keeps_the_chosen_layers_pooled_or_flattened(pipeline: Pipeline, tmp_path: Path) -> None:
    model = pipeline.run("pretrain/mnist1d/s0") / "model.pt"
    analysis.record(model, pipeline.task_path, tmp_path / "flat.zarr", probe_size=20, layers=["conv2", "head"],
                    device="cpu")
    analysis.record(model, pipeline.task_path, tmp_path / "pool.zarr", probe_size=20, layers=["conv2", "head"],
                    conv="pool", device="cpu")
    flat, pool = storage.open_dataset(tmp_path / "flat.zarr"), storage.open_dataset(tmp_path / "pool.zarr")
    assert list(flat.attrs["layers"]) == list(pool.attrs["layers"]) == ["conv2", "head"]
    channels = int(flat["conv2_channel"].max()) + 1
    assert pool.sizes["conv2_unit"] == channels < flat.sizes["conv2_unit"]
    by_channel = flat["conv2"].values.reshape(20, channels, -1).mean(axis=2)
    np.testing.assert_allclose(pool["conv2"].values, by_channel, rtol=1e-5)
    np.testing.assert_array_equal(pool["head"].values, flat["head"].values)


def test_relative_representations_of_two_seeds_and_stitching(pipeline: Pipeline, tmp_path: Path) -> None:
    a, b = (pipeline.run(f"pretrain/mnist1d/s{s}") / "model.pt" for s in (0, 1))
    analysis.relative(a, b, pipeline.task_path, tmp_path / "r.zarr", names=("s0", "s1"),
                      settings={"anchors": 20, "seed": 0}, device="cpu")
    ds = storage.open_dataset(tmp_path / "r.zarr")
    assert ds["similarity"].dims == ("space", "measure") and set(ds["space"].values) == {"absolute", "relative"}
    assert ds.sizes["anchor_index"] == 20 and len(set(ds["anchor"].values.tolist())) == 20
    assert ((ds["stitched_acc"] >= 0) & (ds["stitched_acc"] <= 1)).all()
    from workflow.data import load_data
    from workflow.models import load_model

    data = load_data(pipeline.task_path)
    for path, name in ((a, "model_acc_a"), (b, "model_acc_b")):  # each model's own head, on the test set
        with torch.no_grad():
            assert float(ds[name]) == evaluate(load_model(path)[0], data.x_test, data.y_test)[1]
    # a model against itself: identical spaces, and the classifier stitches at its accuracy on the model
    analysis.relative(a, a, pipeline.task_path, tmp_path / "self.zarr", names=("s0", "s0"),
                      settings={"anchors": 20, "seed": 0}, device="cpu")
    same = storage.open_dataset(tmp_path / "self.zarr")
    np.testing.assert_allclose(same["similarity"].values, 1.0, rtol=1e-9)
    np.testing.assert_array_equal(same["stitched_acc"].values, same["classifier_acc_a"].values)
    assert float(same["model_acc_a"]) == float(same["model_acc_b"]) == float(ds["model_acc_a"])


def test_record_refuses_a_probe_set_larger_than_the_test_set(pipeline: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probe_size=61 exceeds the 60 test examples"):
        analysis.record(pipeline.run("pretrain/mnist1d/s0") / "model.pt", pipeline.task_path, tmp_path / "a.zarr",
                      probe_size=61, device="cpu")


def test_collect_merges_metrics_stores_over_the_sweep_axes(pipeline: Pipeline, tmp_path: Path) -> None:
    entries = [({"seed": s}, pipeline.run(f"pretrain/mnist1d/s{s}") / "metrics.zarr") for s in (1, 0)]
    jobs.collect(entries, tmp_path / "pretrain.zarr")
    summary = storage.open_dataset(tmp_path / "pretrain.zarr")
    assert summary["test_acc"].dims == ("seed", "epoch")
    assert summary["seed"].values.tolist() == [0, 1]  # sorted
    for coords, path in entries:
        np.testing.assert_array_equal(summary["test_acc"].sel(coords).values, storage.open_dataset(path)["test_acc"].values)
    assert summary.attrs["runs"] == [str(p) for _, p in entries]


def test_collect_of_the_study_finetune_summary_stacks_source_and_method_into_model(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    from workflow.summaries import crossed

    for run in pipeline.study.finetune_runs():
        pipeline.run(run)
    jobs.collect(pipeline.study.summaries()["finetune"], tmp_path / "finetune.zarr")
    summary = storage.open_dataset(tmp_path / "finetune.zarr")
    assert summary["test_acc"].dims == ("model", "seed", "epoch")
    # every model is a run of the study without its seed folder: no empty source x method cell
    expected = sorted({run.rsplit("/", 1)[0] for run in pipeline.study.finetune_runs()})
    assert summary["model"].values.tolist() == expected
    assert bool(summary["test_acc"].notnull().all())
    assert summary["source"].dims == summary["finetuning"].dims == ("model",)
    assert summary.sel(model="finetune/scratch")["source"].item() == "none"
    # the grid a figure draws: scratch and the random-feature methods under "none", every
    # other method under each real source
    ft = pipeline.study.config["finetune"]
    assert ft["random_features"] == ["bn_only"]  # the tiny study's
    grid = crossed(summary)
    assert grid["test_acc"].dims[:2] == ("source", "finetuning")
    assert grid["finetuning"].values.tolist() == sorted(ft["methods"])
    ran = grid["test_acc"].notnull().all(["seed", "epoch"])
    random = grid["finetuning"].isin(["scratch", *ft["random_features"]])
    pretrained = grid["finetuning"] != "scratch"
    assert (ran == xr.where(grid["source"] == "none", random, pretrained)).all()
    for model in expected:
        one = summary.sel(model=model)
        np.testing.assert_array_equal(grid["test_acc"].sel(source=one["source"].item(),
                                                          finetuning=one["finetuning"].item()).values,
                                      one["test_acc"].values)
    # the vocabulary's attributes; counts as integers
    assert summary["test_acc"].attrs["units"] == "fraction (0 to 1)" and summary["test_acc"].attrs["long_name"]
    assert summary["trainable_params"].dtype == np.int64


def test_collect_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to collect"):
        jobs.collect([], tmp_path / "x.zarr")


def test_parse_entries_reads_collect_entries_from_json() -> None:
    text = json.dumps([[{"method": "full", "seed": 0}, "a/metrics.zarr"], [{"method": "full", "seed": 1}, "b"]])
    assert jobs.parse_entries(text) == [({"method": "full", "seed": 0}, "a/metrics.zarr"),
                                          ({"method": "full", "seed": 1}, "b")]


def test_an_analysis_batch_writes_every_store_as_the_single_analysis_does(pipeline: Pipeline, tmp_path: Path) -> None:
    a, b = "pretrain/mnist1d/s0", "finetune/mnist1d/full/s0"
    models = {run: str(pipeline.run(run) / "model.pt") for run in (a, b)}
    settings = {
        "activations": {"probe_size": 40, "layers": None, "conv": "flatten"},
        "similarity": SIMILARITY,
        "relative": {"anchors": 20, "seed": 0},
        "connectivity": {"alphas": 3, "bn_batches": 1},
        "spectra": {"probe_size": 40, "ntk_examples": 8, "ntk_method": "jacobian", "hessian_examples": 100,
                    "hessian_k": 2, "hessian_method": "lanczos", "hutchinson_probes": 2},
    }
    batch, single = tmp_path / "batch", tmp_path / "single"
    acts = {run: f"{batch}/{run}/activations.zarr" for run in (a, b)}
    tasks = [
        *({"kind": "activations", "out": acts[r], "inputs": {"model": models[r]}, "runs": [r]} for r in (a, b)),
        {"kind": "similarity", "out": f"{batch}/sim.zarr", "inputs": {"a": acts[a], "b": acts[b]}, "runs": [a, b]},
        {"kind": "similarity", "out": f"{batch}/within.zarr", "inputs": {"a": acts[b]}, "runs": [b, b]},
        {"kind": "relative", "out": f"{batch}/rel.zarr", "inputs": {"a": models[a], "b": models[b]}, "runs": [a, b]},
        {"kind": "connectivity", "out": f"{batch}/con.zarr", "inputs": {"a": models[a], "b": models[b]},
         "runs": [a, b]},
        {"kind": "spectra", "out": f"{batch}/spec.zarr", "inputs": {"model": models[b]}, "runs": [b]},
    ]
    analysis.run_batch({"batch": "test", "data": str(pipeline.task_path), "settings": settings, "tasks": tasks},
                       device="cpu", progress=False)

    data, s = pipeline.task_path, settings
    for run in (a, b):
        analysis.record(models[run], data, single / f"{run}.zarr", probe_size=40, device="cpu")
    analysis.compare(single / f"{a}.zarr", single / f"{b}.zarr", single / "sim.zarr", model_a=a, model_b=b,
                     settings=SIMILARITY)
    analysis.compare(single / f"{b}.zarr", None, single / "within.zarr", model_a=b, model_b=b, settings=SIMILARITY)
    analysis.relative(models[a], models[b], data, single / "rel.zarr", names=(a, b), settings=s["relative"],
                      device="cpu")
    analysis.connectivity(models[a], models[b], data, single / "con.zarr", names=(a, b),
                          settings=s["connectivity"], device="cpu")
    analysis.spectra(models[b], data, single / "spec.zarr", settings=s["spectra"], device="cpu")

    pairs = [(acts[r], single / f"{r}.zarr") for r in (a, b)]
    pairs += [(f"{batch}/{name}.zarr", single / f"{name}.zarr") for name in ("sim", "within", "rel", "con", "spec")]
    for got, expected in pairs:
        g, e = storage.open_dataset(got), storage.open_dataset(expected)
        xr.testing.assert_identical(g.drop_attrs(), e.drop_attrs())  # bitwise: the same numbers
        assert g.attrs.pop("key")  # the batch records its cache key (workflow.cache) ...
        assert {k: v for k, v in g.attrs.items() if k != "created"} == {  # ... and is otherwise the single analysis
            k: v for k, v in e.attrs.items() if k != "created"}, got
    # run again: every store is stored for its key, and left as it is
    before = {p: p.stat().st_mtime_ns for p in batch.rglob("zarr.json")}
    analysis.run_batch({"batch": "test", "data": str(pipeline.task_path), "settings": settings, "tasks": tasks},
                       device="cpu", progress=False)
    assert {p: p.stat().st_mtime_ns for p in batch.rglob("zarr.json")} == before


def test_an_analysis_batch_refuses_an_unknown_kind_of_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kinds of task \\['cca'\\]; allowed: activations"):
        analysis.run_batch({"batch": "b", "data": "x.npz", "settings": {}, "tasks": [{"kind": "cca"}]})
