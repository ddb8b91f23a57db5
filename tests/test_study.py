"""Tests for the plan of a study: run ids, parents, specs and summaries."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Callable

import pytest

from workflow import axes
from workflow.study import STAGES, Study, number_label

Config = dict[str, Any]


@pytest.fixture
def study(default_config: Config) -> Study:
    return Study(default_config)


def _changed(config: Config, change: Callable[[Config], None]) -> Study:
    config = copy.deepcopy(config)
    change(config)
    return Study(config)


def _stage_runs(study: Study, stage: str) -> list[str]:
    return [r for r in study.training_runs() if r.startswith(stage + "/")]


def _id_segments(parts: dict[str, Any]) -> set[str]:
    """The folder names a run id is made of, rebuilt from its parsed parts."""
    out = {parts["stage"]}
    if "source" in parts:
        out.add(parts["source"])
    if "method" in parts:
        out.add(parts["method"])
    if "teacher" in parts:
        out.add(parts["teacher"])
    if "fraction" in parts:
        out.add("f" + number_label(parts["fraction"]))
    if "temperature" in parts:
        out.add(f"T{number_label(parts['temperature'])}-a{number_label(parts['alpha'])}")
    if "rewind" in parts:
        out.add(f"k{parts['rewind']}")
    if "seed" in parts:
        out.add(f"s{parts['seed']}")
    if "level" in parts:
        out.add(f"level{parts['level']}")
    return out


# --- run ids ------------------------------------------------------------------------------


def test_default_study_has_the_expected_runs_per_stage(study: Study) -> None:
    counts = {stage: len(_stage_runs(study, stage)) for stage in STAGES}
    # 2 sources x 2 seeds pretrained; (2 sources x 2 methods + scratch) x 2 seeds fine-tuned
    assert counts == {"pretrain": 4, "finetune": 10, "prune_data": 12, "distill": 12, "prune_network": 14}


def test_run_ids_are_unique_and_readable(study: Study) -> None:
    runs = study.training_runs()
    assert len(set(runs)) == len(runs)
    assert "pretrain/mnist1d/s0" in runs and "pretrain/synthetic/s1" in runs
    assert "finetune/synthetic/linear_probe/s1" in runs
    assert "finetune/scratch/s1" in runs and "finetune/mnist1d/scratch/s1" not in runs
    assert "prune_data/el2n-hard/f0.25/s1" in runs
    assert "distill/trained/random/f0.75/T4-a0.5/s0" in runs
    assert "prune_network/dense/s1" in runs
    assert "prune_network/imp/k20/s1/level3" in runs
    assert "prune_network/random/k20/s0/level1" in runs


def test_parse_round_trips_every_run_id(study: Study) -> None:
    for run in study.training_runs():
        parts = Study.parse(run)
        assert _id_segments(parts) == set(run.split("/")), run


def test_parse_reads_each_part(study: Study) -> None:
    assert Study.parse("prune_data/el2n-hard/f0.25/s1") == {
        "stage": "prune_data", "method": "el2n-hard", "fraction": 0.25, "seed": 1,
    }
    assert Study.parse("prune_network/imp/k20/s0/level2") == {
        "stage": "prune_network", "method": "imp", "rewind": 20, "seed": 0, "level": 2,
    }
    assert Study.parse("prune_network/dense/s1") == {"stage": "prune_network", "method": "dense", "seed": 1}
    with pytest.raises(ValueError, match=r"prune_network/method/seed or prune_network/method/rewind/seed/level"):
        Study.parse("prune_network/imp/s0/level2")
    assert Study.parse("finetune/scratch/s3") == {"stage": "finetune", "method": "scratch", "seed": 3}
    assert Study.parse("finetune/synthetic/lora/s3") == {
        "stage": "finetune", "source": "synthetic", "method": "lora", "seed": 3,
    }
    assert Study.parse("ensemble/mnist1d/starsse/s0/m2") == {
        "stage": "ensemble", "source": "mnist1d", "kind": "starsse", "seed": 0, "member": 2,
    }
    with pytest.raises(ValueError, match=r"pretrain/source/seed"):
        Study.parse("pretrain/s0")


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.1, 0.05, 0.001, 0.3333, 1e-05, 0.1234567, 1 / 3])
def test_number_labels_parse_back_to_the_fraction(fraction: float) -> None:
    assert Study.parse(f"prune_data/random/f{number_label(fraction)}/s0")["fraction"] == fraction


def test_number_labels_are_short_and_positional() -> None:
    assert [number_label(f) for f in (1.0, 0.5, 0.25, 1e-05)] == ["1", "0.5", "0.25", "0.00001"]


def test_distinct_fractions_get_distinct_run_ids(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c["prune_data"].update(fractions=[0.1234567, 0.1234568]))
    runs = study.subset_runs("prune_data")
    assert len(set(runs)) == len(runs)


def test_a_small_fraction_makes_a_valid_spec(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c["prune_data"].update(fractions=[0.00001]))
    assert study.spec(study.subset_runs("prune_data")[0])["fraction"] == 0.00001


# --- parents ------------------------------------------------------------------------------


def test_parents(study: Study) -> None:
    for run in study.training_runs():
        parts = Study.parse(run)
        parent = study.parent(run)
        if parts["stage"] == "finetune" and parts["method"] != "scratch":
            assert parent == f"pretrain/{parts['source']}/s{parts['seed']}"
        elif parts["stage"] == "prune_network" and parts["method"] != "dense":
            assert parent is not None and parent.startswith("prune_network/"), run
        else:
            assert parent is None, run
    assert study.parent("finetune/synthetic/full/s1") == "pretrain/synthetic/s1"
    assert study.parent("finetune/scratch/s1") is None
    assert study.parent("prune_network/imp/k20/s0/level1") == "prune_network/dense/s0"
    assert study.parent("prune_network/imp/k20/s0/level2") == "prune_network/imp/k20/s0/level1"
    for control in ("reinit", "random", "scratch"):  # the IMP mask of the same level
        assert study.parent(f"prune_network/{control}/k20/s1/level2") == "prune_network/imp/k20/s1/level2"
    assert study.parent("prune_network/oneshot/k20/s1/level2") == "prune_network/dense/s1"


def test_every_parent_is_a_run_of_the_study_trained_before_its_child(study: Study) -> None:
    runs = study.training_runs()
    for run in runs:
        parent = study.parent(run)
        if parent is not None:
            assert runs.index(parent) < runs.index(run)


def test_similarity_compares_each_pretrained_model_with_its_finetuned_children(study: Study) -> None:
    children = [f"finetune/{src}/{m}/s{s}" for m in ("full", "linear_probe") for src in ("mnist1d", "synthetic")
                for s in (0, 1)]
    pairs = study.similarity_pairs()
    for child in children:
        path = f"results/analyze/similarity/finetune/{child}/analysis.zarr"
        assert study.similarity_path("finetune", child) == path
        assert pairs[path] == (study.parent(child), child)
    assert [p for p in pairs if "/similarity/finetune/" in p] == [study.similarity_path("finetune", c)
                                                                   for c in children]
    entries = dict((p, c) for c, p in study.summaries()["similarity"])
    assert entries[study.similarity_path("finetune", "finetune/synthetic/full/s1")] == {
        "model": "finetune/synthetic/full", "stage": "finetune", "source": "synthetic", "finetuning": "full", "seed": 1}


def _edge(study: Study, edge: str) -> dict[str, tuple[str, str]]:
    """The similarity stores of one kind of edge -> their two runs."""
    return {p: runs for p, runs in study.similarity_pairs().items() if f"/similarity/{edge}/" in p}


def test_similarity_compares_the_dense_model_with_every_pruned_run_of_its_seed(study: Study) -> None:
    pairs = _edge(study, "prune")
    assert sorted(b for _, b in pairs.values()) == sorted(study.network_pruning_runs())
    assert all(a == f"prune_network/dense/s{Study.parse(b)['seed']}" for a, b in pairs.values())
    run = "prune_network/random/k20/s1/level2"
    path = study.similarity_path("prune", run)
    assert path == f"results/analyze/similarity/prune/{run}/analysis.zarr"
    assert pairs[path] == ("prune_network/dense/s1", run)
    entries = dict((p, c) for c, p in study.summaries()["similarity_prune"])
    assert entries[path] == {"pruning": "random", "rewind": 20, "level": 2, "seed": 1}


def test_similarity_compares_the_trained_teacher_with_its_students_only(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c["distill"].update(teachers=["trained", "untrained"]))
    pairs = _edge(study, "distill")
    students = [r for r in study.subset_runs("distill") if "/trained/" in r]
    assert len(students) == 12 and len(study.subset_runs("distill")) == 24
    assert sorted(pairs.values()) == sorted(("finetune/scratch/s0", r) for r in students)
    run = "distill/trained/el2n-hard/f0.25/T4-a0.5/s1"
    entries = dict((p, c) for c, p in study.summaries()["similarity_distill"])
    assert entries[study.similarity_path("distill", run)] == {
        "selection": "el2n-hard", "scoring": "el2n", "keep": "hard", "offset": 0.0,
        "fraction": 0.25, "teacher": "trained", "temperature": 4.0, "alpha": 0.5, "seed": 1}
    # Untrained teachers are drawn inside each student's job: no model to compare with.
    untrained = _changed(default_config, lambda c: c["distill"].update(teachers=["untrained"]))
    assert not _edge(untrained, "distill") and "similarity_distill" not in untrained.summaries()


def test_similarity_compares_each_run_with_its_next_seed_twin_and_with_itself(study: Study) -> None:
    seeds = _edge(study, "seeds")
    assert sorted(seeds.values()) == sorted(study.seed_twins())
    path = study.similarity_path("seeds", "finetune/scratch/s1")  # named after the second seed's run
    assert seeds[path] == ("finetune/scratch/s0", "finetune/scratch/s1")
    assert len(seeds) == len(study.pretrain_runs() + study.finetune_runs()) // 2
    within = _edge(study, "within")
    models = study.pretrain_runs() + study.finetune_runs()
    assert list(within.values()) == [(r, r) for r in models]
    summaries = study.summaries()
    assert {"model": "finetune/scratch", "stage": "finetune", "source": "none", "finetuning": "scratch"} in [
        c for c, _ in summaries["similarity_seeds"]]
    entries = dict((p, c) for c, p in summaries["similarity_within"])
    assert entries[study.similarity_path("within", "pretrain/synthetic/s1")] == {
        "model": "pretrain/synthetic", "stage": "pretrain", "source": "synthetic", "finetuning": "none", "seed": 1}


def test_activations_are_recorded_for_both_ends_of_every_edge(study: Study) -> None:
    needed = {run for pair in study.similarity_pairs().values() for run in pair}
    assert set(study.activation_runs()) == needed
    assert len(study.activation_runs()) == len(needed)  # each once
    # every model but the prune_data runs (which no edge reaches) and untrained teachers
    assert needed == set(study.training_runs()) - set(study.subset_runs("prune_data"))


@pytest.mark.parametrize("edges", [[], ["within"], ["prune", "seeds"]])
def test_similarity_edges_choose_the_stores(default_config: Config, edges: list[str]) -> None:
    study = _changed(default_config, lambda c: c["analyze"]["similarity"].update(edges=edges))
    kinds = {p.split("/similarity/")[1].split("/")[0] for p in study.similarity_pairs()}
    assert kinds == set(edges)
    names = {"finetune": "similarity", "prune": "similarity_prune", "seeds": "similarity_seeds",
             "within": "similarity_within"}
    assert {n for n in study.summaries() if n.startswith("similarity")} == {names[e] for e in edges}
    if "within" in edges:  # a model against itself needs only its own activations
        assert study.activation_runs() == study.pretrain_runs() + study.finetune_runs()
    # which stores exist is not what is in one: the jobs' settings stay the same
    assert study.analysis_settings("similarity") == Study(default_config).analysis_settings("similarity")
    assert "edges" not in study.analysis_settings("similarity")


def test_similarity_edges_need_their_stages(default_config: Config) -> None:
    def one_seed_no_pruning(c: Config) -> None:
        for stage in ("prune_network", "distill"):
            del c[stage]
        c["pretrain"]["seeds"] = c["finetune"]["seeds"] = [0]

    study = _changed(default_config, one_seed_no_pruning)
    kinds = {p.split("/similarity/")[1].split("/")[0] for p in study.similarity_pairs()}
    assert kinds == {"finetune", "within"}  # no pruned runs, no students, no second seed
    assert not study.seed_twins() and not study.relative_pairs()

    def no_pretraining(c: Config) -> None:
        for stage in ("pretrain", "finetune", "prune_data", "distill"):
            del c[stage]
        del c["data"]["sources"]

    study = _changed(default_config, no_pretraining)
    assert set(study.summaries()) == {"network_pruning", "similarity_prune", "connectivity"}


def test_tasks(study: Study) -> None:
    assert study.task("pretrain/synthetic/s0") == "sources/synthetic"
    assert study.task_dataset("sources/synthetic") == study.config["data"]["sources"]["synthetic"]
    assert study.task_dataset("target") == study.config["data"]["target"]
    with pytest.raises(ValueError, match="allowed: target, sources/mnist1d, sources/synthetic"):
        study.task_dataset("sources/imagenet")
    assert {study.task(r) for r in study.training_runs() if not r.startswith("pretrain/")} == {"target"}


# --- specs --------------------------------------------------------------------------------


def _specs(study: Study) -> dict[str, str]:
    return {run: Study.dumps(study.spec(run)) for run in study.training_runs()}


def _changed_runs(default_config: Config, change: Callable[[Config], None]) -> set[str]:
    before = _specs(Study(default_config))
    after = _specs(_changed(default_config, change))
    return {run for run in before if after.get(run) != before[run]}  # changed, or gone


def test_offsets_are_a_sweep_axis_of_the_score_based_methods_that_retrains_nothing_finished(
    default_config: Config,
) -> None:
    study = _changed(default_config, lambda c: c["prune_data"].update(offsets=[0, 0.1]))
    assert study.data_pruning_methods() == ["el2n-hard", "el2n-hard-o0.1", "random"]  # random has no offset
    run = "prune_data/el2n-hard-o0.1/f0.25/s1"
    assert run in study.training_runs() and f"distill/trained/el2n-hard-o0.1/f0.25/T4-a0.5/s1" in study.training_runs()
    assert Study.parse(run)["method"] == "el2n-hard-o0.1"
    assert study.spec(run)["offset"] == 0.1 and study.spec(run)["keep"] == "hard"
    assert study.pack_of(run) == study.pack_of("prune_data/el2n-hard/f0.25/s1")  # one subset size: one pack
    # the runs of offset 0 keep their specs: adding an offset trains only the new runs
    before, after = _specs(Study(default_config)), _specs(study)
    assert all(after[run] == spec for run, spec in before.items())
    coords = dict((p, c) for c, p in study.summaries()["data_pruning"])[study.path(run, "metrics.zarr")]
    assert coords == {"selection": "el2n-hard-o0.1", "scoring": "el2n", "keep": "hard", "offset": 0.1,
                      "fraction": 0.25, "seed": 1}


def test_random_features_train_from_no_parent_and_retrain_nothing_finished(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c["finetune"].update(random_features=["bn_only", "linear_probe"]))
    new = set(study.training_runs()) - set(Study(default_config).training_runs())
    assert new == {f"finetune/none/{m}/s{s}" for m in ("bn_only", "linear_probe") for s in (0, 1)}
    run = "finetune/none/bn_only/s1"
    assert study.parent(run) is None
    assert Study.parse(run) == {"stage": "finetune", "source": "none", "method": "bn_only", "seed": 1}
    before, after = _specs(Study(default_config)), _specs(study)
    assert all(after[r] == spec for r, spec in before.items())
    coords = dict((p, c) for c, p in study.summaries()["finetune"])[study.path(run, "metrics.zarr")]
    assert coords == {"model": "finetune/none/bn_only", "stage": "finetune", "source": "none",
                      "finetuning": "bn_only", "seed": 1}


def test_finetune_lr_changes_finetune_specs_only(default_config: Config) -> None:
    changed = _changed_runs(default_config, lambda c: c["finetune"]["train"].update(lr=0.1))
    # distill specs carry their teacher's spec (a finetune run)
    assert changed == set(_stage_runs(Study(default_config), "finetune")) | set(
        _stage_runs(Study(default_config), "distill")
    )


def test_a_finetune_spec_has_the_stage_training_settings_over_the_global_ones(study: Study) -> None:
    spec = study.spec("finetune/mnist1d/full/s1")
    assert spec["train"] == {**study.config["train"], "epochs": 30, "batch_size": 50, "lr": 0.003}
    assert spec["seed"] == 1 and spec["method"] == "full" and spec["parent"] == "pretrain/mnist1d/s1"
    assert spec["data"] == study.config["data"]["target"]
    assert study.spec("pretrain/synthetic/s1")["data"] == study.config["data"]["sources"]["synthetic"]


def test_global_train_settings_change_every_stage_without_its_own_value(default_config: Config) -> None:
    changed = _changed_runs(default_config, lambda c: c["train"].update(weight_decay=1e-4))
    assert changed == set(Study(default_config).training_runs())


@pytest.mark.parametrize(
    ("change", "folders"),
    [
        (lambda c: c["analyze"].update(probe_size=100), set()),
        (lambda c: c.update(threads=2, device="cpu"), set()),
        (lambda c: c["distill"].update(teacher="finetune/mnist1d/full/s0"), {"distill"}),
        (lambda c: c["prune_network"].update(rewind_steps=[5]), {"prune_network"}),
        (lambda c: c["pretrain"]["train"].update(epochs=3), {"pretrain"}),
        (lambda c: c["data"]["sources"]["mnist1d"]["args"].update(seed=3), {"pretrain/mnist1d"}),
    ],
    ids=["probe_size", "threads-device", "teacher", "rewind_step", "pretrain-epochs", "source-data"],
)
def test_a_setting_changes_the_specs_of_the_runs_it_affects_and_no_others(
    default_config: Config, change: Callable[[Config], None], folders: set[str]
) -> None:
    # the runs under each folder named (a stage, or a stage and source), and no others
    runs = Study(default_config).training_runs()
    assert _changed_runs(default_config, change) == {r for r in runs if r.startswith(tuple(f"{f}/" for f in folders))}


def test_kd_settings_are_sweep_axes_in_the_run_ids(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c["distill"].update(temperature=[2.0, 4.0], alpha=[0.1, 0.9]))
    runs = study.subset_runs("distill")
    assert len(runs) == 2 * 3 * 2 * 2 * 2  # methods x fractions x T x alpha x seeds
    assert "distill/trained/el2n-hard/f0.5/T2-a0.9/s1" in runs
    assert Study.parse("distill/trained/el2n-hard/f0.5/T2-a0.9/s1")["alpha"] == 0.9


def test_el2n_settings_change_only_the_runs_on_el2n_subsets(default_config: Config) -> None:
    changed = _changed_runs(default_config, lambda c: c["prune_data"]["el2n"].update(inits=3))
    assert changed and all(Study.parse(r)["method"] == "el2n-hard" for r in changed)
    assert {Study.parse(r)["stage"] for r in changed} == {"prune_data", "distill"}


def test_specs_are_json_and_dumps_is_stable(default_config: Config) -> None:
    a, b = Study(default_config), Study(copy.deepcopy(default_config))
    for run in a.training_runs():
        spec = a.spec(run)
        text = Study.dumps(spec)
        assert json.loads(text) == spec
        assert text == Study.dumps(b.spec(run))
        assert text == Study.dumps(dict(reversed(list(spec.items()))))  # key order does not matter
    for score in ("el2n", "random"):
        assert json.loads(Study.dumps(a.score_spec(score))) == a.score_spec(score)


def test_spec_says_how_a_run_is_made(study: Study) -> None:
    distill = study.spec("distill/trained/el2n-hard/f0.5/T4-a0.5/s1")
    assert (distill["teacher"], distill["teacher_run"]) == ("trained", "finetune/scratch/s0")
    assert distill["teacher_spec"] == study.spec("finetune/scratch/s0")
    assert (distill["temperature"], distill["alpha"]) == (4.0, 0.5)
    untrained = study.spec("distill/untrained/el2n-hard/f0.5/T4-a0.5/s1")
    assert untrained["teacher"] == "untrained" and "teacher_run" not in untrained
    assert untrained["teacher_seed"] != untrained["seed"]  # the student never starts at its teacher
    assert (distill["fraction"], distill["keep"], distill["score"]["score"]) == (0.5, "hard", "el2n")
    random = study.spec("prune_data/random/f0.25/s0")
    # its own seed's random draw: not the other seeds, nor the store (adding a seed retrains no random run)
    assert random["score"] == {"stage": "scores", "score": "random", "data": study.config["data"]["target"]}
    assert "scores" not in study.training_job("prune_data/random/f0.25/s0").inputs
    level = study.spec("prune_network/imp/k20/s0/level2")
    assert (level["level"], level["fraction"], level["scope"], level["rewind"]) == (2, 0.2, "global", 20)
    assert "init_seed" not in level  # rewound, not re-initialised
    assert study.spec("prune_network/dense/s0")["rewind_steps"] == [20]


def test_ensembles_and_wiseft_are_planned_from_the_finetune_section(default_config: Config) -> None:
    def add(c: Config) -> None:
        c["finetune"].update(wiseft={"alphas": [0, 0.5, 1]}, ensemble={"members": 3, "cycle": {"lr": 0.01}})

    study = _changed(default_config, add)
    sources = ("mnist1d", "synthetic")
    kinds = ("seeds", "sse", "starsse")
    assert study.ensemble_runs() == [f"ensemble/{src}/{k}/s{s}/m{m}" for src in sources for k in kinds
                                     for s in (0, 1) for m in (1, 2)]
    assert all(r in study.training_runs() for r in study.ensemble_runs())
    assert study.parent("ensemble/synthetic/seeds/s1/m2") == "pretrain/synthetic/s1"
    assert study.parent("ensemble/synthetic/starsse/s1/m2") == "finetune/synthetic/full/s1"
    assert study.parent("ensemble/synthetic/sse/s1/m1") == "finetune/synthetic/full/s1"
    assert study.parent("ensemble/synthetic/sse/s1/m2") == "ensemble/synthetic/sse/s1/m1"
    assert study.spec("ensemble/mnist1d/sse/s1/m2")["train"] == study.spec("ensemble/mnist1d/starsse/s1/m2")["train"]
    seeds, star = study.spec("ensemble/mnist1d/seeds/s1/m2"), study.spec("ensemble/mnist1d/starsse/s1/m2")
    assert seeds["train"] == study.train_config("finetune")
    assert star["train"] == {**study.train_config("finetune"), "lr": 0.01}
    train_seeds = {study.spec(r)["train_seed"] for r in study.ensemble_runs()}
    # distinct per member and seed (the same across sources: sources are compared member by member),
    # and never a member 0's seed
    assert len(train_seeds) == 4 and not train_seeds & {0, 1}
    assert set(study.wiseft_pairs().values()) == {
        (f"finetune/{src}/linear_probe/s{s}", f"finetune/{src}/full/s{s}") for src in sources for s in (0, 1)
    }
    summaries = study.summaries()
    assert [c for c, _ in summaries["wiseft"]] == [
        {"model": f"finetune/{src}/full", "stage": "finetune", "source": src, "finetuning": "full", "seed": s}
        for src in sources for s in (0, 1)
    ]
    assert len(summaries["ensemble"]) == 12
    assert "ensemble" not in Study(default_config).summaries()  # only when asked for
    # with analyze.connectivity, full fine-tuning is joined to an independent sibling
    assert study.connectivity_pairs()[_connectivity_path(study, "siblings", "synthetic", 1)] == (
        "finetune/synthetic/full/s1", "ensemble/synthetic/seeds/s1/m1")


def test_relative_representations_compare_each_run_of_the_first_seed_with_its_twin(study: Study) -> None:
    pairs = study.relative_pairs()
    assert pairs[study.relative_path("finetune/synthetic/full/s0", 1)] == (
        "finetune/synthetic/full/s0", "finetune/synthetic/full/s1")
    assert pairs[study.relative_path("pretrain/mnist1d/s0", 1)] == ("pretrain/mnist1d/s0", "pretrain/mnist1d/s1")
    assert len(pairs) == len(study.pretrain_runs() + study.finetune_runs()) // 2  # two seeds everywhere
    labels = [c["model"] for c, _ in study.summaries()["relative"]]
    assert "finetune/scratch" in labels and "pretrain/mnist1d" in labels


def _connectivity_path(study: Study, ends: str, source: str, seed: int) -> str:
    path = study.connectivity_path({"ends": ends, "source": source, "seed": seed})
    assert path == f"results/analyze/connectivity/{ends}/{source}/s{seed}/analysis.zarr"
    return path


def test_connectivity_joins_the_probe_to_full_and_the_dense_model_to_its_last_ticket(study: Study) -> None:
    pairs = study.connectivity_pairs()
    assert pairs[_connectivity_path(study, "probe_full", "mnist1d", 0)] == (
        "finetune/mnist1d/linear_probe/s0", "finetune/mnist1d/full/s0")
    assert pairs[_connectivity_path(study, "ticket_k20", "none", 1)] == (
        "prune_network/dense/s1", "prune_network/imp/k20/s1/level3")
    assert all(run in study.training_runs() for runs in pairs.values() for run in runs)


# --- paths and summaries ----------------------------------------------------------------------


def test_paths_live_under_the_results_root(default_config: Config) -> None:
    study = _changed(default_config, lambda c: c.update(results="out/study/"))
    assert study.path("pretrain/mnist1d/s0", "model.pt") == "out/study/pretrain/mnist1d/s0/model.pt"
    assert study.path("pretrain/mnist1d/s0") == "out/study/pretrain/mnist1d/s0"
    assert study.data_path("target") == "out/study/data/target.npz"
    assert study.data_path("sources/synthetic") == "out/study/data/sources/synthetic.npz"
    assert study.summary_path("finetune") == "out/study/summary/finetune.zarr"
    assert study.plot_path("cka", "pdf") == "out/study/plots/cka.pdf"


def test_summary_coordinates_are_complete_and_unique(study: Study) -> None:
    config = study.config
    sources, tuned = list(config["data"]["sources"]), ["full", "linear_probe"]

    def models(pretrained: bool, seeds: bool) -> set[tuple]:
        """The model axis: (label, stage, source, finetuning) of every analysed family, with its seeds."""
        out = {(f"finetune/{src}/{m}", "finetune", src, m) for src in sources for m in tuned}
        out |= {("finetune/scratch", "finetune", "none", "scratch")}
        if pretrained:
            out |= {(f"pretrain/{src}", "pretrain", src, "none") for src in sources}
        if not seeds:
            return out
        seeds_of = {"finetune": config["finetune"]["seeds"], "pretrain": config["pretrain"]["seeds"]}
        return {(*m, s) for m in out for s in seeds_of[m[1]]}

    expected = {
        "pretrain": set(itertools.product(sources, config["pretrain"]["seeds"])),
        "finetune": models(pretrained=False, seeds=True),
        "data_pruning": set(itertools.product(
            study.data_pruning_methods(), config["prune_data"]["fractions"], config["prune_data"]["seeds"],
        )),
        "distill": set(itertools.product(
            study.data_pruning_methods(), config["prune_data"]["fractions"], config["distill"]["teachers"],
            config["distill"]["temperature"], config["distill"]["alpha"], config["prune_data"]["seeds"],
        )),
        "scores": {(s,) for s in config["prune_data"]["scores"] if s != "rs2"},
        "network_pruning": set(itertools.product(
            config["prune_network"]["methods"], config["prune_network"]["rewind_steps"],
            range(config["prune_network"]["levels"] + 1), config["prune_network"]["seeds"],
        )),
        "similarity": {m for m in models(pretrained=False, seeds=True) if m[3] != "scratch"},
        "similarity_prune": set(itertools.product(
            config["prune_network"]["methods"], config["prune_network"]["rewind_steps"],
            range(1, config["prune_network"]["levels"] + 1), config["prune_network"]["seeds"],
        )),
        "similarity_distill": set(itertools.product(
            study.data_pruning_methods(), config["prune_data"]["fractions"], ["trained"],
            config["distill"]["temperature"], config["distill"]["alpha"], config["prune_data"]["seeds"],
        )),
        "similarity_seeds": models(pretrained=True, seeds=False),
        "similarity_within": models(pretrained=True, seeds=True),
        "spectra": models(pretrained=True, seeds=True),
        "relative": models(pretrained=True, seeds=False),
        "connectivity": {(f"probe_full/{src}", "probe_full", src, s) for src in sources
                         for s in config["finetune"]["seeds"]}
        | {("ticket_k20/none", "ticket_k20", "none", s) for s in config["prune_network"]["seeds"]},
    }
    summaries = study.summaries()
    assert set(summaries) == set(expected)
    for name, entries in summaries.items():
        # the coordinates along a subset's selection (scoring, keep, offset) follow from its label
        along = axes.STACKED["selection"] if name in ("data_pruning", "distill", "similarity_distill") else ()
        coords = [tuple(v for k, v in c.items() if k not in along) for c, _ in entries]
        assert len(coords) == len(set(coords)), name
        assert set(coords) == expected[name], name
        assert len({tuple(c) for c, _ in entries}) == 1, f"{name}: every entry has the same dims"
        paths = [p for _, p in entries]
        if name != "network_pruning":  # there, the dense run is level 0 of every method
            assert len(paths) == len(set(paths)), name
    assert len(summaries["data_pruning"]) == 2 * 3 * 2
    assert len(summaries["distill"]) == 2 * 3 * 1 * 1 * 1 * 2


def test_summaries_gather_the_metrics_of_the_runs(study: Study) -> None:
    entries = dict((tuple(c.values()), p) for c, p in study.summaries()["data_pruning"])
    assert entries[("el2n-hard", "el2n", "hard", 0.0, 0.75, 0)] == "results/prune_data/el2n-hard/f0.75/s0/metrics.zarr"
    kd = dict((tuple(c.values()), p) for c, p in study.summaries()["distill"])
    assert kd[("random", "random", "none", 0.0, 0.25, "trained", 4.0, 0.5, 1)] == (
        "results/distill/trained/random/f0.25/T4-a0.5/s1/metrics.zarr")
